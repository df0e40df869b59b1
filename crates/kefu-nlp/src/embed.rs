//! Sentence embeddings with all-MiniLM-L6-v2 (BERT, 6 layers, 384 dimensions) on the CPU:
//! mean pooling over the real tokens, then L2 normalisation, as the model was trained.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Name of the model's folder inside the models directory.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Longest input in tokens (including [CLS] and [SEP]); longer texts are truncated.
pub const MAX_TOKENS: usize = 128;
/// Texts per forward pass. Inputs are sorted by length first so padding stays small.
const BATCH_SIZE: usize = 64;

/// A loaded sentence encoder. Cheap to share: wrap it in an `Arc` and use it from any thread.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
}

impl Embedder {
    /// Loads the model from a directory holding `config.json`, `tokenizer.json` and
    /// `model.safetensors`.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let device = Device::Cpu;
        let config_path = model_dir.join("config.json");
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("parsing {}", config_path.display()))?;
        let hidden: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
        let dim = hidden
            .get("hidden_size")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| anyhow!("{} has no hidden_size", config_path.display()))?
            as usize;

        let tokenizer_path = model_dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("loading {}: {e}", tokenizer_path.display()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));

        let weights = model_dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(anyhow!("model weights not found at {}", weights.display()));
        }
        // SAFETY: the file is memory-mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .with_context(|| format!("mapping {}", weights.display()))?;
        let model = BertModel::load(vb, &config)
            .or_else(|_| {
                // Some exports prefix every tensor with "bert.".
                let vb = unsafe {
                    VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)
                }?;
                BertModel::load(vb.pp("bert"), &config)
            })
            .with_context(|| format!("loading BERT weights from {}", weights.display()))?;
        Ok(Self { model, tokenizer, device, dim })
    }

    /// Loads `models_dir/all-MiniLM-L6-v2`.
    pub fn from_models_dir(models_dir: &Path) -> Result<Self> {
        Self::load(&models_dir.join(MODEL_NAME))
    }

    /// Embedding size (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds texts: one L2-normalised vector per text, in input order. Empty input gives
    /// the embedding of an empty sentence ([CLS] [SEP]), so every text gets a vector.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Tokenise unpadded first to sort by length, then pad per batch.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        order.sort_by_key(|&i| lengths[i]);

        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let vectors = self.embed_batch(&batch)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let n = encodings.len();
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend(e.get_ids().iter().copied());
            mask.extend(e.get_attention_mask().iter().copied());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (n, len, dim)
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // (n, dim)
        let counts = mask_f.sum(1)?.clamp(1.0, f64::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        Ok(normalized.to_vec2::<f32>()?)
    }
}

/// Dot product of two vectors (the cosine similarity for normalised embeddings).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The encoder if its files are in `models_dir`; without them the callers fall back
/// to lexical features and say so once, loudly.
pub fn load_optional(models_dir: &Path) -> Option<std::sync::Arc<Embedder>> {
    match Embedder::from_models_dir(models_dir) {
        Ok(embedder) => Some(std::sync::Arc::new(embedder)),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "sentence embeddings unavailable (run `make models`); using lexical features only");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The models directory for tests: KEFU_MODELS_DIR or the workspace's `models/`.
    /// None (test skipped) only when it is missing and CI is unset; on CI it must exist.
    pub(crate) fn test_embedder() -> Option<Embedder> {
        let dir = std::env::var_os("KEFU_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"));
        let present = dir.join(MODEL_NAME).join("model.safetensors").is_file();
        if !present && std::env::var_os("CI").is_none() {
            eprintln!("skipping: no model at {} (run `make models`)", dir.display());
            return None;
        }
        Some(Embedder::from_models_dir(&dir).expect("loading the embedding model"))
    }

    #[test]
    fn similar_sentences_are_closer() {
        let Some(e) = test_embedder() else { return };
        assert_eq!(e.dim(), 384);
        let v = e
            .embed(&[
                "My card has not arrived yet",
                "I am still waiting for my new card to be delivered",
                "What is the exchange rate for euros?",
                "",
            ])
            .unwrap();
        assert_eq!(v.len(), 4);
        for x in &v {
            assert_eq!(x.len(), 384);
            let norm: f32 = dot(x, x).sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        }
        let close = dot(&v[0], &v[1]);
        let far = dot(&v[0], &v[2]);
        assert!(close > far + 0.2, "close {close} far {far}");
        // Batch results equal single results (padding must not leak into the pooling).
        let single = e.embed(&["What is the exchange rate for euros?"]).unwrap();
        assert!(dot(&single[0], &v[2]) > 0.999);
    }
}
