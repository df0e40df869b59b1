//! kefu-nlp: the language understanding of kefu.
//!
//! - [`text`]: language detection, normalisation, word segmentation (jieba for Chinese)
//! - [`embed`]: sentence embeddings with all-MiniLM-L6-v2 on the CPU (candle)
//! - [`intent`]: intent classification from a tenant's examples, calibrated, with out-of-scope

pub mod embed;
mod features;
pub mod intent;
mod linear;
pub mod text;
