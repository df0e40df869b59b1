//! Whether a customer needs a person: a learned reading for the hand-off decision, beside
//! the cue phrases of the tenant's escalation policy. Cue lists find what is said in so
//! many words (a lawyer, a chargeback, 转人工); they cannot find what is meant: sarcasm, a
//! vulnerable customer, a danger described calmly, a refund weeks late, a promise not
//! kept, nor tell a neutral "the police asked for the footage" from a threat.
//!
//! The model is a logistic regression over the message's words and character n-grams,
//! its sentence embedding ([`crate::embed`], one block per language) and the sentiment
//! model's three class probabilities ([`crate::sentiment`], which learned anger from
//! Weibo posts and complaints from airline tweets): the embedding carries what the
//! message is about, the n-grams the telling details ("weeks", "bulging", 烫, 一个月), the
//! sentiment how it is said. It is trained by [`train`] on messages written for kefu, of
//! many businesses, in English and Chinese (`assets/handoff_seed.csv`). The orchestrator
//! hands a customer off when the probability reaches the tenant's `needs_person`.
//!
//! Reproduce the artefact (a minute): `make handoff-model`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::artifact::{self, Artifact};
use crate::embed::Embedder;
use crate::eval::{parse_expected_csv, read_expected_csv};
use crate::features::{FeatureConfig, SparseRow, Vectorizer};
use crate::linear::{self, softmax, Data, Linear, TrainOptions};
use crate::sentiment::{SentimentAnalysis, SentimentModel};

/// Changes whenever the features or the artefact format change.
pub const HAND_OFF_VERSION: &str = "kefu-handoff-1";
static BUNDLED: &[u8] = include_bytes!("../assets/handoff.bin");
/// The hand-written training messages: `text,expected` with `yes` (a person should take
/// over now) or `no` (the bot answers).
static SEEDS: &str = include_str!("../assets/handoff_seed.csv");

/// Inverse L2 strength, as in scikit-learn's C (chosen by cross-validation).
const C: f32 = 16.0;
/// Scale of the sentiment probabilities beside the unit-length embedding.
const SENTIMENT_WEIGHT: f32 = 0.5;
/// The thresholds the cross-validation reports.
const REPORTED_THRESHOLDS: [f32; 4] = [0.5, 0.7, 0.8, 0.9];

/// A trained hand-off model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOffModel {
    version: String,
    /// The encoder whose embeddings the model was trained on ([`Embedder::model_id`]).
    encoder: String,
    vectorizer: Vectorizer,
    /// Two classes (no, yes) over the n-grams, then the embedding and the scaled
    /// sentiment probabilities.
    linear: Linear,
}

impl HandOffModel {
    /// The trained model compiled into the binary (`assets/handoff.bin`).
    pub fn bundled() -> &'static HandOffModel {
        static MODEL: OnceLock<HandOffModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            HandOffModel::from_bytes(BUNDLED).expect(
                "assets/handoff.bin is a valid hand-off model (checked by the crate's tests)",
            )
        })
    }

    /// The encoder the model was trained with.
    pub fn encoder(&self) -> &str {
        &self.encoder
    }

    /// The probability that the customer who wrote `text` needs a person, from its
    /// embedding by the model's own encoder and its sentiment; None for an embedding of
    /// another size.
    pub fn probability(
        &self,
        text: &str,
        embedding: &[f32],
        sentiment: &SentimentAnalysis,
    ) -> Option<f32> {
        if embedding.len() + 3 != self.linear.dense_dim {
            return None;
        }
        let dense = dense_features(embedding, sentiment.probabilities);
        Some(probability_of(
            &self.linear,
            &self.vectorizer.transform(text),
            &dense,
        ))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        artifact::to_bytes(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model: Self = artifact::from_bytes(bytes)?;
        if !model.linear.has_shape(model.vectorizer.len(), 2) {
            bail!("hand-off model is inconsistent");
        }
        Ok(model)
    }
}

impl Artifact for HandOffModel {
    const MAGIC: &'static [u8] = b"KEFUHOF1";
    const VERSION: &'static str = HAND_OFF_VERSION;
    const NAME: &'static str = "hand-off model";

    fn version(&self) -> &str {
        &self.version
    }
}

/// Words and word pairs, character n-grams of Latin words and of Han runs, negated
/// words marked.
fn feature_config() -> FeatureConfig {
    FeatureConfig {
        word_ngrams: 2,
        char_min: 2,
        char_max: 4,
        cjk_min: 1,
        cjk_max: 3,
        word_weight: 1.0,
        char_weight: 1.0,
        min_df: 2,
        negation: true,
        lexicon: false,
    }
}

/// The dense input: the embedding, then the sentiment probabilities.
fn dense_features(embedding: &[f32], sentiment: [f32; 3]) -> Vec<f32> {
    embedding
        .iter()
        .copied()
        .chain(sentiment.iter().map(|p| p * SENTIMENT_WEIGHT))
        .collect()
}

fn probability_of(linear: &Linear, sparse: &[(u32, f32)], dense: &[f32]) -> f32 {
    let mut z = linear.logits(sparse, Some(dense));
    softmax(&mut z);
    z[1]
}

/// The training messages: text, and whether a person should take over.
fn seeds() -> Result<Vec<(String, bool)>> {
    parse_expected_csv(SEEDS.as_bytes()).context("reading assets/handoff_seed.csv")
}

/// The messages with their dense features.
struct Prepared<'a> {
    texts: Vec<&'a str>,
    labels: Vec<u32>,
    dense: Vec<Vec<f32>>,
}

fn prepare<'a>(messages: &'a [(String, bool)], embedder: &Embedder) -> Result<Prepared<'a>> {
    let sentiment = SentimentModel::bundled();
    let texts: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
    eprintln!("hand-off: embedding {} messages", texts.len());
    let embeddings = embedder
        .embed(&texts)
        .context("embedding the training messages")?;
    let dense = texts
        .iter()
        .zip(&embeddings)
        .map(|(text, embedding)| {
            let probabilities = sentiment.analyze(text, Some(embedding)).probabilities;
            dense_features(embedding, probabilities)
        })
        .collect();
    Ok(Prepared {
        labels: messages.iter().map(|(_, yes)| u32::from(*yes)).collect(),
        texts,
        dense,
    })
}

/// Fits the vocabulary and the weights on the `rows` of `prepared`, the two classes
/// weighing the same.
fn fit(prepared: &Prepared, rows: &[usize]) -> (Vectorizer, Linear) {
    let texts: Vec<&str> = rows.iter().map(|&i| prepared.texts[i]).collect();
    let vectorizer = Vectorizer::fit(&texts, feature_config());
    let sparse: Vec<SparseRow> = texts.iter().map(|t| vectorizer.transform(t)).collect();
    let dense: Vec<Vec<f32>> = rows.iter().map(|&i| prepared.dense[i].clone()).collect();
    let labels: Vec<u32> = rows.iter().map(|&i| prepared.labels[i]).collect();
    let yes = labels.iter().filter(|&&l| l == 1).count() as f32;
    let no = labels.len() as f32 - yes;
    let weights: Vec<f32> = labels
        .iter()
        .map(|&l| labels.len() as f32 / (2.0 * if l == 1 { yes } else { no }))
        .collect();
    let data = Data {
        sparse: &sparse,
        dense: Some(&dense),
        n_sparse: vectorizer.len(),
        labels: &labels,
        weights: Some(&weights),
        n_classes: 2,
    };
    let options = TrainOptions {
        l2: 1.0 / (C * labels.len() as f32),
        max_iter: 500,
        tol: 1e-7,
    };
    let linear = linear::train(&data, options, None);
    (vectorizer, linear)
}

/// Five-fold cross-validation: per reported threshold, the share of messages that need a
/// person found, and of those that do not, kept.
fn cross_validate(prepared: &Prepared) -> Vec<(f32, f64, f64)> {
    const FOLDS: usize = 5;
    let n = prepared.labels.len();
    let mut probabilities = vec![0.0; n];
    for fold in 0..FOLDS {
        let train: Vec<usize> = (0..n).filter(|i| i % FOLDS != fold).collect();
        let (vectorizer, linear) = fit(prepared, &train);
        for i in (0..n).filter(|i| i % FOLDS == fold) {
            let sparse = vectorizer.transform(prepared.texts[i]);
            probabilities[i] = probability_of(&linear, &sparse, &prepared.dense[i]);
        }
    }
    let share = |yes: u32, threshold: f32| {
        let rows: Vec<f32> = (0..n)
            .filter(|&i| prepared.labels[i] == yes)
            .map(|i| probabilities[i])
            .collect();
        let right = rows
            .iter()
            .filter(|&&p| (p >= threshold) == (yes == 1))
            .count();
        right as f64 / rows.len().max(1) as f64
    };
    REPORTED_THRESHOLDS
        .iter()
        .map(|&t| (t, share(1, t), share(0, t)))
        .collect()
}

/// Trains the model on the hand-written messages, reports its cross-validation, and
/// writes it to `out`. No message of `held_out` (validation files, `text,expected`) may
/// be among the training messages.
pub fn train(held_out: &[&Path], models_dir: &Path, out: &Path) -> Result<String> {
    let start = Instant::now();
    let messages = seeds()?;
    let trained: HashSet<String> = messages
        .iter()
        .map(|(seed, _)| seed.trim().to_lowercase())
        .collect();
    for path in held_out {
        for (text, _) in read_expected_csv(path)? {
            if trained.contains(&text.trim().to_lowercase()) {
                bail!(
                    "assets/handoff_seed.csv holds a message of {}: {text:?}",
                    path.display()
                );
            }
        }
    }
    let embedder = crate::eval::load_embedder(models_dir)?;
    let prepared = prepare(&messages, &embedder)?;
    let validation: Vec<String> = cross_validate(&prepared)
        .into_iter()
        .map(|(threshold, found, kept)| {
            format!(
                "at {threshold}: {:.1}% of hand-offs found, {:.1}% of answerable kept",
                found * 100.0,
                kept * 100.0
            )
        })
        .collect();
    let all: Vec<usize> = (0..messages.len()).collect();
    let (vectorizer, linear) = fit(&prepared, &all);
    let model = HandOffModel {
        version: HAND_OFF_VERSION.to_owned(),
        encoder: embedder.model_id().to_owned(),
        vectorizer,
        linear,
    };
    std::fs::write(out, model.to_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "hand-off model: {} messages ({} terms), {:.0}s; five-fold cross-validation {}; \
         written to {}",
        messages.len(),
        model.vectorizer.len(),
        start.elapsed().as_secs_f64(),
        validation.join("; "),
        out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_model_loads_and_the_seeds_parse() {
        let model = HandOffModel::bundled();
        assert!(model.encoder().starts_with(crate::embed::MODEL_NAME));
        let seeds = seeds().unwrap();
        assert!(seeds.iter().any(|s| s.1) && seeds.iter().any(|s| !s.1));
    }

    #[test]
    fn other_bytes_are_refused() {
        assert!(HandOffModel::from_bytes(b"KEFUSNT1 not this").is_err());
        assert!(HandOffModel::from_bytes(&BUNDLED[..BUNDLED.len() / 2]).is_err());
    }
}
