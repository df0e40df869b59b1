//! kefu-nlp: the language understanding of kefu.
//!
//! - [`text`]: language detection, normalisation, word segmentation (jieba for Chinese)
//! - [`embed`]: sentence embeddings on the CPU: all-MiniLM-L6-v2 for English, kefu's own
//!   encoder for Chinese (`zh-encoder/`, trained by `make zh-model`)
//! - [`intent`]: intent classification from a tenant's examples, calibrated, with out-of-scope
//! - [`sentiment`]: five-level sentiment (bundled model: sparse terms and the embedding)
//! - [`handoff`]: whether a customer needs a person, learned (beside the policy's cues)
//! - [`cues`]: cue phrases of a tenant's escalation policy, found on words and not after negations
//! - [`eval`]: training and evaluation entry points used by `kefu eval`
//!
//! Validation: `make eval` writes stratified splits to `data/eval/` (`eval/split.py`) and
//! runs the `kefu eval` commands over them.

mod artifact;
mod bert;
pub mod cues;
pub mod embed;
pub mod eval;
mod features;
pub mod handoff;
pub mod intent;
mod lexicon;
mod linear;
pub mod sentiment;
pub mod text;

#[cfg(test)]
mod tests {
    fn shareable<T: Send + Sync>() {}

    /// Services share one model between request handlers.
    #[test]
    fn models_are_send_and_sync() {
        shareable::<crate::embed::Embedder>();
        shareable::<crate::intent::IntentModel>();
        shareable::<crate::sentiment::SentimentModel>();
        shareable::<crate::handoff::HandOffModel>();
    }
}
