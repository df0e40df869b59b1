//! Sentence embeddings on the CPU, English and Chinese: all-MiniLM-L6-v2 (BERT, 6 layers,
//! 384 dimensions) reads English, and kefu's own Chinese encoder (BERT, 2 layers, 192
//! dimensions over characters and English word pieces, trained by
//! `zh-encoder/train.py` (`make zh-model`) and compiled into the binary) reads Chinese and
//! mixed text.
//!
//! An embedding has one block per encoder, [English | Chinese]; a text fills the block of
//! its language ([`detect_language`]) and leaves the other at zero. Both blocks are mean
//! pooled and L2-normalised, so the whole vector has unit length, a dot product compares
//! texts of one language, and a linear model over the vector learns weights per language.
//!
//! The configuration and weights are read with candle (candle-transformers' BERT config,
//! safetensors); the forward pass is [`crate::bert`], tuned for short texts.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_transformers::models::bert::Config;
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{mean_pool, Bert};
use crate::text::{detect_language, Language};

mod batching;

pub use batching::BatchSettings;
use batching::Batcher;

/// Name of the English model's folder inside the models directory.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Longest input in tokens (including [CLS] and [SEP]); longer texts are truncated.
pub const MAX_TOKENS: usize = 128;

static CHINESE_CONFIG: &str = include_str!("../zh-encoder/config.json");
static CHINESE_TOKENIZER: &[u8] = include_bytes!("../zh-encoder/tokenizer.json");
static CHINESE_WEIGHTS: &[u8] = include_bytes!("../zh-encoder/model.safetensors");

/// One BERT encoder with its tokenizer and its batching queue.
struct Encoder {
    model: Arc<Bert>,
    /// Groups the texts of concurrent requests into one forward pass ([`Self::embed_batched`]).
    batcher: Batcher,
    tokenizer: Tokenizer,
}

impl Encoder {
    /// Loads a model from a directory holding `config.json`, `tokenizer.json` and
    /// `model.safetensors`.
    fn load(model_dir: &Path) -> Result<Self> {
        let config_path = model_dir.join("config.json");
        let config = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let tokenizer_path = model_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("loading {}: {e}", tokenizer_path.display()))?;
        let weights = model_dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(anyhow!("model weights not found at {}", weights.display()));
        }
        let model = Bert::load(&weights, &parse_config(&config, &config_path.display())?)
            .with_context(|| format!("loading BERT weights from {}", weights.display()))?;
        tracing::info!(model = %model_dir.display(), precision = model.precision(), "sentence encoder loaded");
        Self::new(model, tokenizer)
    }

    /// The Chinese encoder compiled into the binary.
    fn chinese() -> Result<Self> {
        let source = "the bundled Chinese encoder";
        let config = parse_config(CHINESE_CONFIG, &source)?;
        let tokenizer = Tokenizer::from_bytes(CHINESE_TOKENIZER)
            .map_err(|e| anyhow!("loading the tokenizer of {source}: {e}"))?;
        let model = Bert::from_safetensors(CHINESE_WEIGHTS, &config, source)?;
        Self::new(model, tokenizer)
    }

    /// Names the bundled Chinese encoder by its weights: "kefu-zh-" and the start of
    /// their SHA-256, so that every retrained model has a name of its own.
    fn chinese_name() -> String {
        use sha2::{Digest, Sha256};
        let digest = hex::encode(Sha256::digest(CHINESE_WEIGHTS));
        format!("kefu-zh-{}", &digest[..12])
    }

    fn new(model: Bert, mut tokenizer: Tokenizer) -> Result<Self> {
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("configuring truncation: {e}"))?;
        tokenizer.with_padding(None);
        let model = Arc::new(model);
        Ok(Self {
            batcher: Batcher::new(model.clone(), BatchSettings::from_env()?),
            model,
            tokenizer,
        })
    }

    fn dim(&self) -> usize {
        self.model.hidden_size()
    }

    async fn embed_batched(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.token_ids(text)?;
        self.batcher.embed(ids).await
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(match ids.as_slice() {
            [] => Vec::new(),
            [one] => embeddings(&self.model, &[one.as_slice()], true),
            _ => ids
                .par_chunks(BULK_BATCH)
                .flat_map_iter(|chunk| {
                    let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
                    embeddings(&self.model, &seqs, false)
                })
                .collect(),
        })
    }

    fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        // The Chinese encoder adds no [CLS]/[SEP]: a text without tokens (empty, or only
        // spaces) is read as one unknown token rather than as nothing to average.
        if ids.is_empty() {
            ids.extend(self.tokenizer.token_to_id("[UNK]"));
        }
        Ok(ids)
    }
}

fn parse_config(json: &str, source: &dyn std::fmt::Display) -> Result<Config> {
    serde_json::from_str(json).with_context(|| format!("parsing the configuration {source}"))
}

/// The sentence encoder of both languages. Cheap to share: wrap it in an `Arc` and use it
/// from any thread.
pub struct Embedder {
    english: Encoder,
    chinese: Encoder,
    /// Names both encoders, e.g. "all-MiniLM-L6-v2+kefu-zh-0123456789ab".
    model_id: String,
}

impl Embedder {
    /// Loads the English model from `english_dir` (`config.json`, `tokenizer.json`,
    /// `model.safetensors`) and the bundled Chinese encoder.
    pub fn load(english_dir: &Path) -> Result<Self> {
        let english = Encoder::load(english_dir)?;
        let chinese = Encoder::chinese()?;
        let english_id = english_dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or(MODEL_NAME);
        Ok(Self {
            english,
            chinese,
            model_id: format!("{english_id}+{}", Encoder::chinese_name()),
        })
    }

    /// Loads `models_dir/all-MiniLM-L6-v2` and the bundled Chinese encoder.
    pub fn from_models_dir(models_dir: &Path) -> Result<Self> {
        Self::load(&models_dir.join(MODEL_NAME))
    }

    /// Embedding size: the English block, then the Chinese one (384 + 192).
    pub fn dim(&self) -> usize {
        self.english.dim() + self.chinese.dim()
    }

    /// Names the encoders, e.g. "all-MiniLM-L6-v2+kefu-zh-0123456789ab" (the Chinese
    /// encoder by a hash of its weights). Another service's embedding can stand in for
    /// this encoder's when it names the same models.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// True when an embedding computed elsewhere (e.g. by the router for the same text)
    /// can stand in for this encoder's own: same model id, same dimension, unit length.
    pub fn accepts(&self, model: &str, values: &[f32]) -> bool {
        model == self.model_id
            && values.len() == self.dim()
            && (dot(values, values).sqrt() - 1.0).abs() < 1e-2
    }

    /// The embedding of `text`: the `supplied` one, `(model id, vector)`, when it
    /// [`accepts`](Self::accepts) it (e.g. the router's embedding of the same message),
    /// otherwise computed here. Blocks: for bulk and offline work.
    pub fn reuse_or_embed<'a>(
        &self,
        text: &str,
        supplied: Option<(&str, &'a [f32])>,
    ) -> Result<Cow<'a, [f32]>> {
        Ok(match self.reusable(supplied) {
            Some(values) => values.into(),
            None => self.embed(&[text])?.remove(0).into(),
        })
    }

    /// Like [`reuse_or_embed`](Self::reuse_or_embed) for a request being served: a text
    /// to embed joins the batch of concurrent requests ([`embed_batched`](Self::embed_batched)).
    pub async fn reuse_or_embed_batched<'a>(
        &self,
        text: &str,
        supplied: Option<(&str, &'a [f32])>,
    ) -> Result<Cow<'a, [f32]>> {
        Ok(match self.reusable(supplied) {
            Some(values) => values.into(),
            None => self.embed_batched(text).await?.into(),
        })
    }

    fn reusable<'a>(&self, supplied: Option<(&str, &'a [f32])>) -> Option<&'a [f32]> {
        let (model, values) = supplied?;
        if self.accepts(model, values) {
            tracing::debug!("using the supplied embedding");
            Some(values)
        } else {
            tracing::debug!(
                model,
                dim = values.len(),
                "supplied embedding is not this encoder's; embedding the text"
            );
            None
        }
    }

    /// The encoder of a text's language and where its block starts in the embedding.
    fn encoder_for(&self, text: &str) -> (&Encoder, usize) {
        match detect_language(text) {
            Language::Zh => (&self.chinese, self.english.dim()),
            Language::En => (&self.english, 0),
        }
    }

    /// `block` placed at `offset` in an otherwise zero embedding.
    fn place(&self, block: Vec<f32>, offset: usize) -> Vec<f32> {
        let mut v = vec![0.0; self.dim()];
        v[offset..offset + block.len()].copy_from_slice(&block);
        v
    }

    /// The embedding of one text of a request being served. The text waits (a bounded
    /// moment, see [`BatchSettings`]) to share a forward pass with the texts of other
    /// requests, on a pool of compute threads sized to the cores; the caller's thread is
    /// free meanwhile.
    pub async fn embed_batched(&self, text: &str) -> Result<Vec<f32>> {
        let (encoder, offset) = self.encoder_for(text);
        Ok(self.place(encoder.embed_batched(text).await?, offset))
    }

    /// Embeds texts: one L2-normalised vector per text, in input order. Every text gets a
    /// vector (an empty text is embedded as "[CLS] [SEP]" by the English model). Blocks:
    /// for bulk and offline work (indexing, evaluation). Texts are packed into forward
    /// passes of a few at a time, run in parallel; a single text shares its larger matrix
    /// products over the thread pool.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let routes: Vec<(&Encoder, usize)> = texts.iter().map(|t| self.encoder_for(t)).collect();
        let mut vectors = vec![Vec::new(); texts.len()];
        // one bulk pass per encoder (told apart by where their blocks start)
        for offset in [0, self.english.dim()] {
            let members: Vec<usize> = (0..texts.len())
                .filter(|&i| routes[i].1 == offset)
                .collect();
            let Some(&first) = members.first() else {
                continue;
            };
            let batch: Vec<&str> = members.iter().map(|&i| texts[i]).collect();
            let blocks = routes[first].0.embed(&batch)?;
            if blocks.len() != members.len() {
                bail!(
                    "an encoder returned {} vectors for {} texts",
                    blocks.len(),
                    members.len()
                );
            }
            for (i, block) in members.into_iter().zip(blocks) {
                vectors[i] = self.place(block, offset);
            }
        }
        Ok(vectors)
    }
}

/// Texts per forward pass in bulk embedding: enough to read each weight tile once for
/// many rows, few enough that every thread of the pool gets work.
const BULK_BATCH: usize = 8;

/// One forward pass over `seqs` packed together; their mean-pooled, L2-normalised
/// embeddings in order.
fn embeddings(model: &Bert, seqs: &[&[u32]], split: bool) -> Vec<Vec<f32>> {
    let hidden = model.forward(seqs, split);
    let dim = model.hidden_size();
    let mut start = 0;
    seqs.iter()
        .map(|seq| {
            let rows = model.rows_of(seq);
            let mut v = mean_pool(&hidden[start * dim..(start + rows) * dim], dim);
            start += rows;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            for x in v.iter_mut() {
                *x /= norm;
            }
            v
        })
        .collect()
}

/// Dot product of two vectors (the cosine similarity for normalised embeddings), over
/// the shorter one's length. Summed in sixteen independent lanes so that it vectorises
/// (a plain sum of floats is added in order, one after the other): dense retrieval takes
/// one per stored chunk.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (a[..len].chunks_exact(16), b[..len].chunks_exact(16));
    let tail: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut lanes = [0f32; 16];
    for (x, y) in a.zip(b) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The encoder if its files are in `models_dir`; without them the callers fall back
/// to lexical features and say so once, loudly. Used by the router, knowledge and
/// sentiment services; services in one process (`kefu up`) share one loaded copy.
pub fn load_optional(models_dir: &Path) -> Option<std::sync::Arc<Embedder>> {
    static LOADED: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Arc<Embedder>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, embedder)) = loaded.iter().find(|(dir, _)| dir == models_dir) {
        return Some(embedder.clone());
    }
    match Embedder::from_models_dir(models_dir) {
        Ok(embedder) => {
            let embedder = std::sync::Arc::new(embedder);
            loaded.push((models_dir.to_path_buf(), embedder.clone()));
            Some(embedder)
        }
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

    #[test]
    fn dot_sums_every_product() {
        // 16-lane blocks and a remainder; the longer vector is cut to the shorter
        let a: Vec<f32> = (0..50).map(|i| i as f32 * 0.5 - 7.0).collect();
        let b: Vec<f32> = (0..53).map(|i| 3.0 - i as f32 * 0.25).collect();
        let want: f64 = (0..50).map(|i| a[i] as f64 * b[i] as f64).sum();
        assert!(
            (dot(&a, &b) as f64 - want).abs() < 1e-3,
            "{} vs {want}",
            dot(&a, &b)
        );
        assert_eq!(dot(&[], &b), 0.0);
    }

    fn models_dir() -> PathBuf {
        std::env::var_os("KEFU_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"))
    }

    /// The embedder for tests, from KEFU_MODELS_DIR or the workspace's `models/`.
    /// None (test skipped) only when it is missing and CI is unset; on CI it must exist.
    pub(crate) fn test_embedder() -> Option<Embedder> {
        let dir = models_dir();
        let present = dir.join(MODEL_NAME).join("model.safetensors").is_file();
        if !present && std::env::var_os("CI").is_none() {
            eprintln!(
                "skipping: no model at {} (run `make models`)",
                dir.display()
            );
            return None;
        }
        Some(Embedder::from_models_dir(&dir).expect("loading the embedding model"))
    }

    #[test]
    fn similar_sentences_are_closer() {
        let Some(e) = test_embedder() else { return };
        assert_eq!(e.dim(), 384 + 192);
        let v = e
            .embed(&[
                "My card has not arrived yet",
                "I am still waiting for my new card to be delivered",
                "What is the exchange rate for euros?",
                "",
                "我的银行卡丢了怎么办",
                "银行卡丢失了应该怎么处理",
                "今天的外卖送得太慢了",
            ])
            .unwrap();
        assert_eq!(v.len(), 7);
        for x in &v {
            assert_eq!(x.len(), 384 + 192);
            let norm: f32 = dot(x, x).sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
        }
        // each text fills the block of its language and leaves the other at zero
        for (i, x) in v.iter().enumerate() {
            let (english, chinese) = x.split_at(384);
            let (own, other) = if i >= 4 {
                (chinese, english)
            } else {
                (english, chinese)
            };
            assert!(own.iter().any(|&y| y != 0.0), "text {i}");
            assert!(other.iter().all(|&y| y == 0.0), "text {i}");
        }
        let close = dot(&v[0], &v[1]);
        let far = dot(&v[0], &v[2]);
        assert!(close > far + 0.2, "close {close} far {far}");
        let close = dot(&v[4], &v[5]);
        let far = dot(&v[4], &v[6]);
        assert!(close > far + 0.2, "Chinese: close {close} far {far}");
        // Batch results equal single results.
        let single = e.embed(&["What is the exchange rate for euros?"]).unwrap();
        assert!(dot(&single[0], &v[2]) > 0.9999);
        let single = e.embed(&["银行卡丢失了应该怎么处理"]).unwrap();
        assert!(dot(&single[0], &v[5]) > 0.9999);
    }

    /// Texts packed into one forward pass get the embeddings they get alone, however
    /// the pool groups them.
    #[test]
    fn packed_and_batched_embeddings_equal_single_ones() {
        let Some(e) = test_embedder() else { return };
        let long = "my parcel has not arrived ".repeat(40);
        let texts = [
            "hi",
            "Where is my card?",
            "我的银行卡丢了怎么办",
            long.as_str(),
            "",
            "Can I change the delivery address after the order shipped?",
            "我的iPhone充不进电了",
        ];
        let alone: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| e.embed(&[t]).unwrap().remove(0))
            .collect();
        for encoder in [&e.english, &e.chinese] {
            let packed = embeddings(
                &encoder.model,
                &texts
                    .iter()
                    .map(|t| encoder.token_ids(t).unwrap())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>(),
                false,
            );
            for (text, p) in texts.iter().zip(&packed) {
                let a = encoder.embed(&[text]).unwrap().remove(0);
                assert!(
                    dot(&a, p) > 0.9999,
                    "{text:?}: packed cosine {}",
                    dot(&a, p)
                );
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let e = std::sync::Arc::new(e);
        let batched: Vec<Vec<f32>> = runtime.block_on(async {
            let calls = (0..48).map(|i| {
                let e = e.clone();
                let text = texts[i % texts.len()].to_owned();
                tokio::spawn(async move { e.embed_batched(&text).await.unwrap() })
            });
            let mut out = Vec::new();
            for call in calls.collect::<Vec<_>>() {
                out.push(call.await.unwrap());
            }
            out
        });
        for (i, b) in batched.iter().enumerate() {
            let a = &alone[i % texts.len()];
            assert!(dot(a, b) > 0.9999, "call {i}: batched cosine {}", dot(a, b));
        }
    }

    #[test]
    fn services_in_one_process_share_one_encoder() {
        if test_embedder().is_none() {
            return;
        }
        let a = load_optional(&models_dir()).expect("the model is installed");
        let b = load_optional(&models_dir()).expect("the model is installed");
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(load_optional(Path::new("/nonexistent/models")).is_none());
    }

    #[test]
    fn accepts_only_embeddings_of_the_same_model() {
        let Some(e) = test_embedder() else { return };
        let id = e.model_id().to_owned();
        assert!(id.starts_with(&format!("{MODEL_NAME}+kefu-zh-")), "{id}");
        let v = e.embed(&["Where is my parcel?"]).unwrap().remove(0);
        assert!(e.accepts(&id, &v));
        assert!(!e.accepts(MODEL_NAME, &v));
        assert!(!e.accepts("paraphrase-multilingual-MiniLM-L12-v2", &v));
        assert!(!e.accepts(&id, &v[..384]));
        assert!(!e.accepts(&id, &vec![0.0; 576]));
        assert!(!e.accepts(&id, &vec![f32::NAN; 576]));
    }

    /// The bundled Chinese encoder gives the embeddings its training script computed in
    /// PyTorch for the same texts (`zh-encoder/reference.json`): the export, the tokenizer
    /// and the forward pass agree.
    #[test]
    fn chinese_encoder_matches_its_training() {
        #[derive(serde::Deserialize)]
        struct Reference {
            text: String,
            embedding: Vec<f32>,
        }
        let references: Vec<Reference> =
            serde_json::from_str(include_str!("../zh-encoder/reference.json")).unwrap();
        let chinese = Encoder::chinese().unwrap();
        assert!(references.len() >= 5);
        assert_eq!(Encoder::chinese_name(), Encoder::chinese_name());
        assert_eq!(Encoder::chinese_name().len(), "kefu-zh-".len() + 12);
        for r in &references {
            let got = chinese.embed(&[&r.text]).unwrap().remove(0);
            let cos = dot(&got, &r.embedding);
            assert!(
                cos > 0.99,
                "{:?}: cosine {cos} ({})",
                r.text,
                chinese.model.precision()
            );
        }
    }

    /// The fast forward pass agrees with candle-transformers' reference BERT, for both
    /// encoders.
    #[test]
    fn matches_candle_reference_model() {
        use candle_core::{DType, Device, Tensor};
        use candle_nn::VarBuilder;
        use candle_transformers::models::bert::BertModel;
        let Some(e) = test_embedder() else { return };
        let dir = models_dir().join(MODEL_NAME);
        let english_config: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        // SAFETY: read-only mapping of a file nobody writes during the test.
        let english = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let chinese = VarBuilder::from_buffered_safetensors(
            CHINESE_WEIGHTS.to_vec(),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let chinese_config: Config = serde_json::from_str(CHINESE_CONFIG).unwrap();
        for (encoder, vb, config) in [
            (&e.english, english, english_config),
            (&e.chinese, chinese, chinese_config),
        ] {
            let reference = BertModel::load(vb, &config).unwrap();
            for text in [
                "I am still waiting on my card?",
                "我的银行卡丢了怎么办",
                "hi",
                &"long text ".repeat(80),
                &"很长的文字".repeat(40),
            ] {
                let ids = encoder
                    .tokenizer
                    .encode(text, true)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                let n = ids.len();
                let ids_t = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
                let hidden = reference
                    .forward(&ids_t, &ids_t.zeros_like().unwrap(), None)
                    .unwrap();
                let want: Vec<f32> = hidden
                    .mean(1)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let norm = dot(&want, &want).sqrt();
                let want: Vec<f32> = want.iter().map(|x| x / norm).collect();
                let got = encoder.embed(&[text]).unwrap().remove(0);
                let cos = dot(&want, &got);
                let min = match encoder.model.precision() {
                    "int8" => 0.99,
                    _ => 0.9999,
                };
                assert!(
                    cos > min,
                    "{text:?}: cosine {cos} ({})",
                    encoder.model.precision()
                );
            }
        }
    }
}
