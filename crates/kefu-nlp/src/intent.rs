//! Intent classification from a tenant's examples.
//!
//! One softmax (multinomial logistic regression) over two views of a message, trained
//! jointly: sparse TF-IDF (word 1-2-grams, character n-grams, Han character 1-3-grams)
//! and, when an [`Embedder`] is given, the frozen MiniLM sentence embedding. The
//! confidence is calibrated with a temperature fitted on a held-out fold; a message is
//! out of scope when the calibrated confidence is low, when no known term occurs in it, or
//! (with embeddings) when it is far from every training example.

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifact::{self, Artifact};
use crate::embed::{dot, Embedder};
use crate::features::{FeatureConfig, SparseRow, Vectorizer};
use crate::linear::{self, softmax, Data, Linear, TrainOptions};
use crate::text::{detect_language, Language};

mod nearest;
use nearest::ExampleEmbeddings;

/// Changes whenever training or the stored format changes, so cached models are rebuilt.
pub const MODEL_VERSION: &str = "kefu-intent-5";

/// Hyper-parameters of [`IntentModel::train_with_config`]. The defaults were chosen on a
/// held-out validation split of Banking77 (see `eval/split.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Word n-grams up to this length.
    pub word_ngrams: usize,
    /// Character n-gram lengths inside Latin words.
    pub char_min: usize,
    pub char_max: usize,
    /// Han character n-grams 1..=cjk_max.
    pub cjk_max: usize,
    /// Block weights: words, characters, sentence embedding.
    pub word_weight: f32,
    pub char_weight: f32,
    pub dense_weight: f32,
    /// Factor on the embedding weight for Chinese messages (the encoder is English-only,
    /// so its view of Chinese text is mostly noise).
    pub zh_dense_factor: f32,
    /// Inverse regularisation strength (as `C` of scikit-learn's LogisticRegression).
    pub c: f32,
    pub max_iter: usize,
    /// Share of the examples held out to fit the temperature and the thresholds.
    pub holdout: f32,
    /// Calibrated confidence below which a message is out of scope.
    pub min_confidence: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            word_ngrams: 2,
            char_min: 2,
            char_max: 5,
            cjk_max: 3,
            word_weight: 1.0,
            char_weight: 1.0,
            dense_weight: 1.5,
            zh_dense_factor: 0.3,
            c: 20.0,
            max_iter: 50,
            holdout: 0.2,
            min_confidence: 0.3,
        }
    }
}

/// The result of classifying one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentPrediction {
    /// Best intent (also set when `out_of_scope`, as the closest one).
    pub intent: String,
    /// Calibrated probability of `intent`, in [0, 1].
    pub confidence: f32,
    /// The next two intents with their probabilities, best first.
    pub alternatives: Vec<(String, f32)>,
    /// True when no intent fits the message.
    pub out_of_scope: bool,
}

/// A trained intent classifier. Immutable after training, so `Send + Sync`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntentModel {
    version: String,
    labels: Vec<String>,
    vectorizer: Vectorizer,
    linear: Linear,
    /// Weight applied to the embedding before the linear layer; 0 when trained without.
    dense_weight: f32,
    zh_dense_factor: f32,
    temperature: f32,
    min_confidence: f32,
    /// Cosine similarity to the nearest training example below which a message is out of scope.
    min_similarity: f32,
    /// The training embeddings, for the nearest-example check.
    example_embeddings: ExampleEmbeddings,
}

impl IntentModel {
    /// Stable hash of the examples (order-sensitive), the model version and the default
    /// configuration: equal fingerprints mean an equal trained model, so it can be cached.
    pub fn fingerprint(examples: &[(String, String)]) -> String {
        let mut h = Sha256::new();
        h.update(MODEL_VERSION.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(&TrainConfig::default()).unwrap_or_default());
        for (text, intent) in examples {
            h.update([0x1e]);
            h.update(text.as_bytes());
            h.update([0x1f]);
            h.update(intent.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Trains with the default configuration. With an embedder, the sentence embedding is
    /// used as a second view; classification then needs an embedder too.
    pub fn train(examples: &[(String, String)], embedder: Option<&Embedder>) -> Result<Self> {
        let embeddings = match embedder {
            Some(e) => {
                let start = Instant::now();
                let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
                let v = e.embed(&texts).context("embedding the training examples")?;
                tracing::info!(
                    examples = texts.len(),
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "intent training: embedded examples"
                );
                Some(v)
            }
            None => None,
        };
        Self::train_with_config(examples, embeddings.as_deref(), &TrainConfig::default())
    }

    /// Trains from examples and (optionally) their precomputed embeddings, one per example.
    pub fn train_with_config(
        examples: &[(String, String)],
        embeddings: Option<&[Vec<f32>]>,
        config: &TrainConfig,
    ) -> Result<Self> {
        let start = Instant::now();
        if examples.is_empty() {
            bail!("no training examples");
        }
        if let Some(e) = embeddings {
            if e.len() != examples.len() {
                bail!("{} embeddings for {} examples", e.len(), examples.len());
            }
        }
        let (labels, classes) = label_classes(examples)?;
        let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
        let vectorizer = Vectorizer::fit(&texts, feature_config(config, texts.len()));
        let dense_weight = if embeddings.is_some() {
            config.dense_weight
        } else {
            0.0
        };
        let set = TrainingSet {
            rows: {
                use rayon::prelude::*;
                texts.par_iter().map(|t| vectorizer.transform(t)).collect()
            },
            dense: embeddings
                .map(|e| weighted_embeddings(e, &texts, dense_weight, config.zh_dense_factor)),
            classes,
            n_sparse: vectorizer.len(),
            n_classes: labels.len(),
        };
        tracing::info!(
            examples = texts.len(),
            intents = labels.len(),
            features = vectorizer.len(),
            embeddings = set.dense.is_some(),
            "intent training: features ready"
        );
        let held = held_out_fold(&set.classes, set.n_classes, config.holdout);
        let calibration = Calibration::fit(&set, &held, embeddings, config, start);
        let linear = set.fit(config, calibration.warm.as_ref());
        let example_embeddings = embeddings
            .map(|e| ExampleEmbeddings::new(e, &set.classes, set.n_classes))
            .unwrap_or_default();
        tracing::info!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            "intent training: done"
        );
        Ok(Self {
            version: MODEL_VERSION.to_string(),
            labels,
            vectorizer,
            linear,
            dense_weight,
            zh_dense_factor: config.zh_dense_factor,
            temperature: calibration.temperature,
            min_confidence: config.min_confidence,
            min_similarity: calibration.min_similarity,
            example_embeddings,
        })
    }

    /// True when the model was trained with sentence embeddings (then `classify` needs the embedder).
    pub fn uses_embeddings(&self) -> bool {
        self.linear.dense_dim > 0
    }

    /// Classifies one message.
    pub fn classify(&self, text: &str, embedder: Option<&Embedder>) -> Result<IntentPrediction> {
        self.classify_and_embed(text, embedder)
            .map(|(prediction, _)| prediction)
    }

    /// Classifies one message and returns the sentence embedding computed for it (None
    /// when the model was trained without embeddings), for callers that pass it on.
    /// Blocks: for offline work and tests.
    pub fn classify_and_embed(
        &self,
        text: &str,
        embedder: Option<&Embedder>,
    ) -> Result<(IntentPrediction, Option<Vec<f32>>)> {
        let embedding = match self.required_embedder(embedder)? {
            Some(e) => Some(self.checked(e.embed(&[text])?.remove(0))?),
            None => None,
        };
        Ok((
            self.classify_with_embedding(text, embedding.as_deref()),
            embedding,
        ))
    }

    /// [`classify_and_embed`](Self::classify_and_embed) for a request being served: the
    /// embedding is computed in a batch with other requests' texts.
    pub async fn classify_and_embed_batched(
        &self,
        text: &str,
        embedder: Option<&Embedder>,
    ) -> Result<(IntentPrediction, Option<Vec<f32>>)> {
        let embedding = match self.required_embedder(embedder)? {
            Some(e) => Some(self.checked(e.embed_batched(text).await?)?),
            None => None,
        };
        Ok((
            self.classify_with_embedding(text, embedding.as_deref()),
            embedding,
        ))
    }

    /// The embedder, when this model classifies with embeddings (an error without one).
    fn required_embedder<'e>(
        &self,
        embedder: Option<&'e Embedder>,
    ) -> Result<Option<&'e Embedder>> {
        if !self.uses_embeddings() {
            return Ok(None);
        }
        embedder.map(Some).ok_or_else(|| {
            anyhow!(
                "this intent model was trained with sentence embeddings: an embedder is required"
            )
        })
    }

    fn checked(&self, embedding: Vec<f32>) -> Result<Vec<f32>> {
        if embedding.len() != self.linear.dense_dim {
            bail!(
                "embedding size {} does not match the model's {}",
                embedding.len(),
                self.linear.dense_dim
            );
        }
        Ok(embedding)
    }

    /// Calibrated probabilities of every intent, in the order of [`IntentModel::intents`],
    /// from a precomputed embedding (None for models trained without embeddings).
    pub fn distribution(&self, text: &str, embedding: Option<&[f32]>) -> Vec<f32> {
        self.distribution_of_row(text, &self.vectorizer.transform(text), embedding)
    }

    fn distribution_of_row(
        &self,
        text: &str,
        row: &[(u32, f32)],
        embedding: Option<&[f32]>,
    ) -> Vec<f32> {
        let w = self.dense_weight * language_factor(text, self.zh_dense_factor);
        let dense: Option<Vec<f32>> = match (embedding, self.uses_embeddings()) {
            (Some(e), true) => Some(e.iter().map(|x| x * w).collect()),
            _ => None,
        };
        let mut z = self.linear.logits(row, dense.as_deref());
        for v in z.iter_mut() {
            *v /= self.temperature;
        }
        softmax(&mut z);
        z
    }

    /// Classifies with a precomputed embedding (None for models trained without embeddings).
    pub fn classify_with_embedding(
        &self,
        text: &str,
        embedding: Option<&[f32]>,
    ) -> IntentPrediction {
        let row = self.vectorizer.transform(text);
        let z = self.distribution_of_row(text, &row, embedding);
        let mut order: Vec<usize> = (0..z.len()).collect();
        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
        let best = order[0];
        let far = match (embedding, self.uses_embeddings()) {
            (Some(e), true) => !self
                .example_embeddings
                .any_within(e, best, self.min_similarity),
            _ => false,
        };
        let out_of_scope =
            z[best] < self.min_confidence || row.is_empty() && !self.uses_embeddings() || far;
        IntentPrediction {
            intent: self.labels[best].clone(),
            confidence: z[best],
            alternatives: order[1..]
                .iter()
                .take(2)
                .map(|&i| (self.labels[i].clone(), z[i]))
                .collect(),
            out_of_scope,
        }
    }

    /// The intents the model knows, sorted.
    pub fn intents(&self) -> Vec<String> {
        self.labels.clone()
    }

    /// Serialises everything learned (vocabulary, weights, calibration).
    pub fn to_bytes(&self) -> Vec<u8> {
        artifact::to_bytes(self)
    }

    /// Restores a model written by [`IntentModel::to_bytes`] of the same model version.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let m: Self = artifact::from_bytes(b)?;
        if !m.linear.has_shape(m.vectorizer.len(), m.labels.len())
            || !m
                .example_embeddings
                .fits(m.labels.len(), m.linear.dense_dim)
        {
            bail!("intent model is inconsistent");
        }
        Ok(m)
    }
}

impl Artifact for IntentModel {
    const MAGIC: &'static [u8] = b"KEFUINT1";
    const VERSION: &'static str = MODEL_VERSION;
    const NAME: &'static str = "intent model";

    fn version(&self) -> &str {
        &self.version
    }
}

/// The distinct intents, sorted, and each example's intent as an index into them.
fn label_classes(examples: &[(String, String)]) -> Result<(Vec<String>, Vec<u32>)> {
    let mut labels: Vec<String> = examples.iter().map(|(_, i)| i.clone()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        bail!(
            "need examples of at least two intents, got {}",
            labels.len()
        );
    }
    let classes = examples
        .iter()
        .map(|(_, i)| labels.binary_search(i).map(|p| p as u32))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("label lookup failed"))?;
    Ok((labels, classes))
}

/// The sparse features of `config` for a training set of `n` examples: terms seen once
/// are kept unless the set is large.
fn feature_config(config: &TrainConfig, n: usize) -> FeatureConfig {
    FeatureConfig {
        word_ngrams: config.word_ngrams,
        char_min: config.char_min,
        char_max: config.char_max,
        cjk_min: 1,
        cjk_max: config.cjk_max,
        word_weight: config.word_weight,
        char_weight: config.char_weight,
        min_df: if n >= 2000 { 2 } else { 1 },
        negation: false,
        lexicon: false,
    }
}

/// The embeddings as the linear model sees them: scaled by the block weight and the
/// factor of each text's language.
fn weighted_embeddings(
    embeddings: &[Vec<f32>],
    texts: &[&str],
    dense_weight: f32,
    zh_dense_factor: f32,
) -> Vec<Vec<f32>> {
    embeddings
        .iter()
        .zip(texts)
        .map(|(v, t)| {
            let w = dense_weight * language_factor(t, zh_dense_factor);
            v.iter().map(|x| x * w).collect()
        })
        .collect()
}

/// The examples the linear model is fitted to: per example its sparse row, its weighted
/// embedding (when trained with embeddings) and its class.
struct TrainingSet {
    rows: Vec<SparseRow>,
    dense: Option<Vec<Vec<f32>>>,
    classes: Vec<u32>,
    n_sparse: usize,
    n_classes: usize,
}

impl TrainingSet {
    fn subset(&self, indices: &[usize]) -> Self {
        Self {
            rows: indices.iter().map(|&i| self.rows[i].clone()).collect(),
            dense: self
                .dense
                .as_ref()
                .map(|d| indices.iter().map(|&i| d[i].clone()).collect()),
            classes: indices.iter().map(|&i| self.classes[i]).collect(),
            n_sparse: self.n_sparse,
            n_classes: self.n_classes,
        }
    }

    /// The linear model fitted to every example, starting from `warm` when given.
    fn fit(&self, config: &TrainConfig, warm: Option<&Linear>) -> Linear {
        let data = Data {
            sparse: &self.rows,
            dense: self.dense.as_deref(),
            n_sparse: self.n_sparse,
            labels: &self.classes,
            weights: None,
            n_classes: self.n_classes,
        };
        let options = TrainOptions {
            l2: 1.0 / (config.c * self.classes.len() as f32),
            max_iter: config.max_iter,
            tol: 1e-5,
        };
        linear::train(&data, options, warm)
    }

    fn logits(&self, model: &Linear, i: usize) -> Vec<f32> {
        model.logits(&self.rows[i], self.dense.as_ref().map(|d| d[i].as_slice()))
    }
}

/// The held-out fold (stratified, deterministic): every class with >= 3 examples gives
/// about `share` of them, at least one, spread over the class.
fn held_out_fold(classes: &[u32], n_classes: usize, share: f32) -> Vec<bool> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &c) in classes.iter().enumerate() {
        by_class[c as usize].push(i);
    }
    let mut held = vec![false; classes.len()];
    for members in by_class.iter().filter(|m| m.len() >= 3) {
        let k = ((members.len() as f32 * share).round() as usize).max(1);
        let step = members.len() as f32 / k as f32;
        for j in 0..k {
            held[members[(j as f32 * step) as usize]] = true;
        }
    }
    held
}

/// What the held-out fold settles: the temperature, the similarity bound for out of
/// scope, and the model fitted without the fold, which warm-starts the final fit.
struct Calibration {
    temperature: f32,
    min_similarity: f32,
    warm: Option<Linear>,
}

impl Calibration {
    /// Fits a model to the examples outside the fold and calibrates it on the fold; with
    /// fewer than two held-out examples, no temperature and a fixed similarity bound.
    fn fit(
        set: &TrainingSet,
        held: &[bool],
        embeddings: Option<&[Vec<f32>]>,
        config: &TrainConfig,
        start: Instant,
    ) -> Self {
        let fit_idx: Vec<usize> = (0..held.len()).filter(|&i| !held[i]).collect();
        let held_idx: Vec<usize> = (0..held.len()).filter(|&i| held[i]).collect();
        if held_idx.len() < 2 {
            return Self {
                temperature: 1.0,
                min_similarity: if embeddings.is_some() { 0.25 } else { 0.0 },
                warm: None,
            };
        }
        let fold = set.subset(&fit_idx).fit(config, None);
        let held_logits: Vec<Vec<f32>> = held_idx.iter().map(|&i| set.logits(&fold, i)).collect();
        let held_y: Vec<u32> = held_idx.iter().map(|&i| set.classes[i]).collect();
        let temperature = fit_temperature(&held_logits, &held_y);
        let correct = held_logits
            .iter()
            .zip(&held_y)
            .filter(|(z, &c)| argmax(z) == c as usize)
            .count();
        let min_similarity = embeddings.map_or(0.0, |e| similarity_bound(e, &held_idx, &fit_idx));
        tracing::info!(
            held_out = held_idx.len(),
            held_out_accuracy = correct as f32 / held_idx.len() as f32,
            temperature,
            min_similarity,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "intent training: calibrated on held-out fold"
        );
        Self {
            temperature,
            min_similarity,
            warm: Some(fold),
        }
    }
}

/// Similarity of held-out examples to their nearest fitted example: the 2nd percentile
/// bounds how far an in-scope message may be.
fn similarity_bound(embeddings: &[Vec<f32>], held_idx: &[usize], fit_idx: &[usize]) -> f32 {
    let mut sims: Vec<f32> = held_idx
        .iter()
        .map(|&i| {
            fit_idx
                .iter()
                .map(|&j| dot(&embeddings[i], &embeddings[j]))
                .fold(f32::MIN, f32::max)
        })
        .collect();
    sims.sort_by(|a, b| a.total_cmp(b));
    let p = sims[(sims.len() as f32 * 0.02) as usize];
    p.clamp(0.15, 0.4)
}

fn language_factor(text: &str, zh_factor: f32) -> f32 {
    match detect_language(text) {
        Language::Zh => zh_factor,
        Language::En => 1.0,
    }
}

fn argmax(z: &[f32]) -> usize {
    (0..z.len())
        .max_by(|&a, &b| z[a].total_cmp(&z[b]))
        .unwrap_or(0)
}

/// Temperature minimising the negative log-likelihood of held-out logits
/// (golden-section search over log T in [ln 0.05, ln 20]).
pub(crate) fn fit_temperature(logits: &[Vec<f32>], labels: &[u32]) -> f32 {
    let nll = |t: f32| -> f64 {
        logits
            .iter()
            .zip(labels)
            .map(|(z, &y)| {
                let mut s: Vec<f32> = z.iter().map(|v| v / t).collect();
                let zy = s[y as usize];
                let lse = softmax(&mut s);
                (lse - zy) as f64
            })
            .sum()
    };
    let (mut a, mut b) = (0.05f32.ln(), 20f32.ln());
    let g = 0.618_034f32;
    for _ in 0..40 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if nll(c.exp()) < nll(d.exp()) {
            b = d;
        } else {
            a = c;
        }
    }
    ((a + b) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::tests::test_embedder;

    fn toy() -> Vec<(String, String)> {
        let data: &[(&str, &[&str])] = &[
            (
                "order_status",
                &[
                    "Where is my order?",
                    "My package has not arrived yet",
                    "When will my order be delivered?",
                    "Track my shipment please",
                    "my parcel is late",
                    "How long until my delivery arrives?",
                    "我的订单到哪里了？",
                    "快递怎么还没到",
                    "我的包裹什么时候送到",
                    "查一下我的物流",
                    "订单一直没有发货",
                    "where is my 快递",
                ],
            ),
            (
                "refund",
                &[
                    "I want my money back",
                    "How do I get a refund?",
                    "Please refund my purchase",
                    "Can I return this and get reimbursed?",
                    "refund the charge on my card",
                    "I'd like to cancel and be refunded",
                    "我要退款",
                    "怎么申请退款",
                    "请把钱退给我",
                    "退货退款流程是什么",
                    "这个东西我不要了，退钱",
                    "我想要refund",
                ],
            ),
            (
                "greeting",
                &[
                    "Hello",
                    "Hi there",
                    "Good morning",
                    "Hey, anyone there?",
                    "Hello, I need help",
                    "Hi, good afternoon",
                    "你好",
                    "您好",
                    "早上好",
                    "在吗",
                    "哈喽",
                    "hi 你好",
                ],
            ),
        ];
        data.iter()
            .flat_map(|(intent, texts)| {
                texts
                    .iter()
                    .map(move |t| (t.to_string(), intent.to_string()))
            })
            .collect()
    }

    fn check(model: &IntentModel, embedder: Option<&Embedder>) {
        for (text, want) in [
            ("where's my package? it hasn't arrived", "order_status"),
            ("I would like a refund for my order", "refund"),
            ("hello!", "greeting"),
            ("我的快递到哪了", "order_status"),
            ("我想退款", "refund"),
            ("您好，在吗", "greeting"),
        ] {
            let p = model.classify(text, embedder).unwrap();
            assert_eq!(p.intent, want, "{text}: {p:?}");
            assert!(!p.out_of_scope, "{text}: {p:?}");
            assert!(p.confidence > 0.4 && p.confidence <= 1.0, "{text}: {p:?}");
            assert_eq!(p.alternatives.len(), 2);
            assert!(p.alternatives.iter().all(|(_, c)| *c <= p.confidence));
        }
    }

    #[test]
    fn learns_toy_intents_without_embeddings() {
        let model = IntentModel::train(&toy(), None).unwrap();
        assert_eq!(model.intents(), vec!["greeting", "order_status", "refund"]);
        assert!(!model.uses_embeddings());
        check(&model, None);
        let p = model.classify("zzzz qqqq xxxx", None).unwrap();
        assert!(p.out_of_scope, "{p:?}");
        let (q, embedding) = model.classify_and_embed("zzzz qqqq xxxx", None).unwrap();
        assert_eq!((q, embedding), (p, None));
        let restored = IntentModel::from_bytes(&model.to_bytes()).unwrap();
        for text in ["where is my refund", "你好", "随便说点什么"] {
            assert_eq!(
                model.classify(text, None).unwrap(),
                restored.classify(text, None).unwrap()
            );
        }
        assert!(IntentModel::from_bytes(b"garbage").is_err());
    }

    #[test]
    fn learns_toy_intents_with_embeddings_and_rejects_out_of_scope() {
        let Some(e) = test_embedder() else { return };
        let model = IntentModel::train(&toy(), Some(&e)).unwrap();
        assert!(model.uses_embeddings());
        check(&model, Some(&e));
        for text in [
            "What is the capital of France?",
            "Write me a poem about the sea",
            "The quarterly earnings of semiconductor firms rose",
        ] {
            let p = model.classify(text, Some(&e)).unwrap();
            assert!(p.out_of_scope, "{text}: {p:?}");
        }
        assert!(model.classify("hello", None).is_err(), "needs the embedder");
        let restored = IntentModel::from_bytes(&model.to_bytes()).unwrap();
        let a = model.classify("I want my money back", Some(&e)).unwrap();
        let b = restored.classify("I want my money back", Some(&e)).unwrap();
        assert_eq!(a, b);
        // The embedding it classified with comes back, for the services after the router.
        let (c, embedding) = model
            .classify_and_embed("I want my money back", Some(&e))
            .unwrap();
        assert_eq!(a, c);
        let embedding = embedding.expect("a model with embeddings returns the embedding");
        let own = e.embed(&["I want my money back"]).unwrap().remove(0);
        assert_eq!(embedding.len(), e.dim());
        assert!(dot(&embedding, &own) > 0.9999);
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let ex = toy();
        let a = IntentModel::fingerprint(&ex);
        assert_eq!(a, IntentModel::fingerprint(&ex.clone()));
        assert_eq!(a.len(), 64);
        let mut changed = ex.clone();
        changed[0].1 = "refund".into();
        assert_ne!(a, IntentModel::fingerprint(&changed));
    }

    #[test]
    fn temperature_softens_overconfident_logits() {
        // logits say 10:0 but the label is right only 70% of the time -> T > 1
        let logits: Vec<Vec<f32>> = (0..10).map(|_| vec![10.0, 0.0]).collect();
        let labels: Vec<u32> = (0..10).map(|i| u32::from(i >= 7)).collect();
        let t = fit_temperature(&logits, &labels);
        assert!(t > 5.0, "{t}");
    }
}
