//! kefu-nlp: the language understanding of kefu.
//!
//! - [`text`]: language detection, normalisation, word segmentation (jieba for Chinese)
//! - [`embed`]: sentence embeddings with all-MiniLM-L6-v2 on the CPU (candle)

pub mod embed;
pub mod text;
