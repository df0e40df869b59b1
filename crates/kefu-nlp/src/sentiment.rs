//! Sentiment of customer messages in English and Chinese: five levels and a score in
//! [-1, 1]. Whether a message goes to a human is the tenant's escalation policy's call
//! (cue phrases in `tenant.toml`, matched by [`crate::cues`]), not this model's.
//!
//! Polarity is learned: a 3-class softmax (negative / neutral / positive) over sparse
//! TF-IDF features (with the Chinese sentiment lexicon's reading, [`crate::lexicon`]) and
//! the sentence embedding ([`crate::embed`]: MiniLM for English, kefu's encoder for
//! Chinese), trained by [`crate::eval::train_sentiment`] on airline tweets (3 classes),
//! Chinese food-delivery reviews (negative / positive), Chinese Weibo posts, car forum
//! reviews and helpdesk dialogues (3 classes, [`crate::eval::ZH_SENTIMENT_DOMAINS`]) and
//! hand-written seed sets from other domains (`assets/sentiment_seed.csv`: products,
//! hotels, banking, telecom, service requests; `assets/sentiment_seed_zh_domains.csv`:
//! Chinese reviews of thirteen more domains).
//! The embedding carries what the two source domains do not share with a customer's
//! message; the seeds keep the domain priors of airline tweets (mostly complaints) from
//! deciding. A second softmax over the sparse features alone serves when no embedding
//! model is installed. The vocabulary is pruned to the most useful terms and the model is
//! bundled into the binary (`assets/sentiment.bin`).
//!
//! Reproduce the artefact (a few minutes): `make sentiment-model`.

use std::sync::OnceLock;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::artifact::{self, Artifact};
use crate::features::Vectorizer;
use crate::linear::{softmax, Linear};
use crate::text::{detect_language, Language};

/// Changes whenever the features or the artefact format change.
pub const SENTIMENT_VERSION: &str = "kefu-sentiment-5";
static BUNDLED: &[u8] = include_bytes!("../assets/sentiment.bin");

/// Class order of the softmax.
pub(crate) const CLASSES: [&str; 3] = ["negative", "neutral", "positive"];

/// Five-level sentiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentimentLevel {
    VeryNegative,
    Negative,
    Neutral,
    Positive,
    VeryPositive,
}

impl SentimentLevel {
    /// snake_case name, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SentimentLevel::VeryNegative => "very_negative",
            SentimentLevel::Negative => "negative",
            SentimentLevel::Neutral => "neutral",
            SentimentLevel::Positive => "positive",
            SentimentLevel::VeryPositive => "very_positive",
        }
    }

    /// Three-way polarity: "negative", "neutral" or "positive".
    pub fn polarity(self) -> &'static str {
        match self {
            SentimentLevel::VeryNegative | SentimentLevel::Negative => "negative",
            SentimentLevel::Neutral => "neutral",
            SentimentLevel::Positive | SentimentLevel::VeryPositive => "positive",
        }
    }
}

/// The analysis of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentAnalysis {
    pub level: SentimentLevel,
    /// P(positive) - P(negative), at most -0.8 when shouting in negative words; in [-1, 1].
    pub score: f32,
    pub language: Language,
    /// The learned model's class probabilities [negative, neutral, positive].
    pub probabilities: [f32; 3],
}

impl SentimentAnalysis {
    /// "positive" or "negative" by the sign of the score: the reading of data labelled
    /// with those two classes only.
    pub fn sign(&self) -> &'static str {
        if self.score >= 0.0 {
            "positive"
        } else {
            "negative"
        }
    }
}

/// A trained sentiment model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentimentModel {
    version: String,
    /// The encoder whose embeddings the model was trained on ([`crate::embed::Embedder::model_id`]).
    encoder: String,
    vectorizer: Vectorizer,
    /// Sparse terms and the sentence embedding (scaled by `dense_weight`).
    linear: Linear,
    dense_weight: f32,
    /// Sparse terms only, for when no embedding is at hand.
    lexical: Linear,
}

/// Probability of the winning polar class from which a message is "very" negative/positive.
const VERY: f32 = 0.95;

impl SentimentModel {
    pub(crate) fn new(
        encoder: String,
        vectorizer: Vectorizer,
        linear: Linear,
        dense_weight: f32,
        lexical: Linear,
    ) -> Self {
        Self {
            version: SENTIMENT_VERSION.to_string(),
            encoder,
            vectorizer,
            linear,
            dense_weight,
            lexical,
        }
    }

    /// The encoder the model was trained with ([`crate::embed::Embedder::model_id`]);
    /// empty when it was trained without embeddings.
    pub fn encoder(&self) -> &str {
        &self.encoder
    }

    /// Size of the sentence embedding the model was trained with.
    pub fn embedding_dim(&self) -> usize {
        self.linear.dense_dim
    }

    /// The trained model compiled into the binary (`assets/sentiment.bin`).
    pub fn bundled() -> &'static SentimentModel {
        static MODEL: OnceLock<SentimentModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            SentimentModel::from_bytes(BUNDLED).expect(
                "assets/sentiment.bin is a valid sentiment model (checked by the crate's tests)",
            )
        })
    }

    /// Class probabilities [negative, neutral, positive] from the learned model alone,
    /// with the message's sentence embedding when given (an embedding of another size is
    /// ignored). Without an embedding, text without any known term is neutral.
    pub fn probabilities(&self, text: &str, embedding: Option<&[f32]>) -> [f32; 3] {
        let row = self.vectorizer.transform(text);
        let embedding = embedding.filter(|e| e.len() == self.linear.dense_dim);
        let mut z = match embedding {
            Some(e) => {
                let scaled: Vec<f32> = e.iter().map(|x| x * self.dense_weight).collect();
                self.linear.logits(&row, Some(&scaled))
            }
            None if row.is_empty() => return [0.0, 1.0, 0.0],
            None => self.lexical.logits(&row, None),
        };
        softmax(&mut z);
        [z[0], z[1], z[2]]
    }

    /// Analyses one message, with its sentence embedding when one is at hand. Never
    /// panics; empty or meaningless input is neutral.
    pub fn analyze(&self, text: &str, embedding: Option<&[f32]>) -> SentimentAnalysis {
        let language = detect_language(text);
        let p = self.probabilities(text, embedding);
        let mut score = (p[2] - p[0]).clamp(-1.0, 1.0);
        let best = if p[1] >= p[0] && p[1] >= p[2] {
            1
        } else if p[0] >= p[2] {
            0
        } else {
            2
        };
        let mut level = match best {
            0 if p[0] >= VERY => SentimentLevel::VeryNegative,
            0 => SentimentLevel::Negative,
            2 if p[2] >= VERY => SentimentLevel::VeryPositive,
            2 => SentimentLevel::Positive,
            _ => SentimentLevel::Neutral,
        };
        // Shouting counts only in a message the model reads as negative: "Thanks!!!" and
        // "HOW DO I RESET MY PASSWORD???" are not anger.
        let negative_read = matches!(
            level,
            SentimentLevel::Negative | SentimentLevel::VeryNegative
        );
        if negative_read && shouting(text) {
            level = SentimentLevel::VeryNegative;
            score = score.min(-0.8);
        }
        SentimentAnalysis {
            level,
            score,
            language,
            probabilities: p,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        artifact::to_bytes(self)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let m: Self = artifact::from_bytes(b)?;
        let vocabulary = m.vectorizer.len();
        if !m.linear.has_shape(vocabulary, 3)
            || !m.lexical.has_shape(vocabulary, 3)
            || m.lexical.dense_dim != 0
        {
            bail!("sentiment model is inconsistent");
        }
        Ok(m)
    }

    /// Number of terms the model knows.
    pub fn vocabulary_size(&self) -> usize {
        self.vectorizer.len()
    }
}

impl Artifact for SentimentModel {
    const MAGIC: &'static [u8] = b"KEFUSNT1";
    const VERSION: &'static str = SENTIMENT_VERSION;
    const NAME: &'static str = "sentiment model";

    fn version(&self) -> &str {
        &self.version
    }
}

/// Shouting: three or more exclamation marks, or mostly upper-case words in a longer
/// message. A sign of anger only where the words are negative too (see `analyze`).
fn shouting(text: &str) -> bool {
    if text.matches(['!', '！']).count() >= 3 {
        return true;
    }
    let letters: Vec<char> = text.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    letters.len() >= 15
        && letters.iter().filter(|c| c.is_ascii_uppercase()).count() * 10 >= letters.len() * 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use SentimentLevel::*;

    fn negative(l: SentimentLevel) -> bool {
        matches!(l, Negative | VeryNegative)
    }

    /// The encoder for tests, loaded once (None when it is not installed outside CI).
    fn embedder() -> Option<&'static crate::embed::Embedder> {
        static EMBEDDER: std::sync::OnceLock<Option<crate::embed::Embedder>> =
            std::sync::OnceLock::new();
        EMBEDDER
            .get_or_init(crate::embed::tests::test_embedder)
            .as_ref()
    }

    /// The bundled model reads the embeddings of the encoders kefu ships: after a
    /// retrained encoder (`make zh-model`) comes `make sentiment-model`.
    #[test]
    fn bundled_model_was_trained_on_the_shipped_encoders() {
        let Some(e) = embedder() else { return };
        let model = SentimentModel::bundled();
        assert_eq!(model.encoder(), e.model_id());
        assert_eq!(model.embedding_dim(), e.dim());
    }

    /// Analyses `text` with the lexical half alone and, when the encoder is installed,
    /// with the sentence embedding too: both paths must hold up.
    fn analyses(text: &str) -> Vec<SentimentAnalysis> {
        let m = SentimentModel::bundled();
        let mut out = vec![m.analyze(text, None)];
        if let Some(e) = embedder() {
            let v = e.embed(&[text]).unwrap().pop().unwrap();
            out.push(m.analyze(text, Some(&v)));
        }
        out
    }

    #[test]
    fn bundled_model_loads_and_roundtrips() {
        let m = SentimentModel::bundled();
        assert!(m.vocabulary_size() > 1000);
        assert_eq!(m.embedding_dim(), 384 + 192);
        assert!(BUNDLED.len() < 4 * 1024 * 1024);
        let again = SentimentModel::from_bytes(&m.to_bytes()).unwrap();
        let e = vec![0.05f32; 384 + 192];
        assert_eq!(
            again.probabilities("great service", Some(&e)),
            m.probabilities("great service", Some(&e))
        );
        assert!(SentimentModel::from_bytes(b"KEFUSNT1 junk").is_err());
    }

    #[test]
    fn clear_english_examples() {
        for a in analyses("Your service is terrible, I want to complain") {
            assert!(negative(a.level), "{a:?}");
            assert_eq!(a.language, Language::En);
        }
        for a in analyses("Hello, I need help") {
            assert_eq!(a.level, Neutral, "{a:?}");
        }
        for a in analyses("Thank you so much, the support was excellent and fast!") {
            assert!(matches!(a.level, Positive | VeryPositive), "{a:?}");
            assert!(a.score > 0.3, "{a:?}");
        }
        for a in analyses("My flight was cancelled and nobody helped, worst experience ever") {
            assert!(negative(a.level) && a.score < -0.3, "{a:?}");
        }
        for a in analyses("THIS IS RIDICULOUS, NOTHING WORKS AND NOBODY ANSWERS!!!") {
            assert_eq!(a.level, VeryNegative, "{a:?}");
        }
    }

    #[test]
    fn clear_chinese_examples() {
        for a in analyses("你们的服务太差了，我要投诉") {
            assert!(negative(a.level), "{a:?}");
            assert_eq!(a.language, Language::Zh);
        }
        for a in analyses("东西很好，物流也快，非常满意") {
            assert!(matches!(a.level, Positive | VeryPositive), "{a:?}");
        }
        for a in analyses("质量太差了，用了两天就坏了，非常失望") {
            assert!(negative(a.level), "{a:?}");
        }
        for a in analyses("气死我了，再也不会用你们的产品了") {
            assert!(negative(a.level), "{a:?}");
        }
    }

    #[test]
    fn any_input_is_safe() {
        for t in [
            "",
            "   ",
            "!!!",
            "🙂",
            "\u{0}\u{FFFF}",
            &"a".repeat(100_000),
            "ＡＢＣ，。！",
        ] {
            for a in analyses(t) {
                assert!((-1.0..=1.0).contains(&a.score), "{t:?}: {a:?}");
            }
        }
        let m = SentimentModel::bundled();
        assert_eq!(m.analyze("", None).level, Neutral);
        // an embedding of the wrong size is ignored, not a panic
        assert_eq!(m.analyze("", Some(&[1.0, 2.0])).level, Neutral);
    }

    #[test]
    fn punctuation_alone_is_not_anger() {
        let m = SentimentModel::bundled();
        for calm in [
            "Thanks!!!",
            "Great, it works now!!!",
            "谢谢！！！",
            "HOW DO I RESET MY PASSWORD???",
        ] {
            for a in analyses(calm) {
                assert_ne!(a.level, VeryNegative, "{calm}: {a:?}");
            }
            assert_ne!(m.analyze(calm, None).level, VeryNegative, "{calm}");
        }
    }
}
