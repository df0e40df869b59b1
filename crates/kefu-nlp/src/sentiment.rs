//! Sentiment of customer messages in English and Chinese: five levels, a score in
//! [-1, 1] and escalation signals (anger, threat to leave, complaint).
//!
//! Polarity is learned: a 3-class softmax (negative / neutral / positive) over sparse
//! TF-IDF features and the MiniLM sentence embedding, trained by
//! [`crate::eval::train_sentiment`] on airline tweets (3 classes), Chinese food-delivery
//! reviews (negative / positive) and a hand-written seed set from other domains
//! (`assets/sentiment_seed.csv`: products, hotels, banking, telecom, service requests).
//! The embedding carries what the two source domains do not share with a customer's
//! message; the seeds keep the domain priors of airline tweets (mostly complaints) from
//! deciding. A second softmax over the sparse features alone serves when no embedding
//! model is installed. The vocabulary is pruned to the most useful terms and the model is
//! bundled into the binary (`assets/sentiment.bin`). Escalation signals come from a small
//! cue lexicon, because they are about what the customer says they will do, not about
//! polarity.
//!
//! Reproduce the artefact (about 2 minutes): `make sentiment-model`.

use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::features::Vectorizer;
use crate::linear::{softmax, Linear};
use crate::text::{detect_language, normalize, words, Language};

/// Changes whenever the features or the artefact format change.
pub const SENTIMENT_VERSION: &str = "kefu-sentiment-3";
const MAGIC: &[u8] = b"KEFUSNT1";
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

/// Why a message should go to a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationSignal {
    /// Anger, insults, shouting.
    Anger,
    /// Threat to cancel, close the account or move to a competitor.
    ChurnThreat,
    /// Explicit complaint, or a threat to report or sue.
    Complaint,
}

impl EscalationSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationSignal::Anger => "anger",
            EscalationSignal::ChurnThreat => "churn_threat",
            EscalationSignal::Complaint => "complaint",
        }
    }
}

/// The analysis of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentAnalysis {
    pub level: SentimentLevel,
    /// P(positive) - P(negative), adjusted by the escalation signals; in [-1, 1].
    pub score: f32,
    pub language: Language,
    pub signals: Vec<EscalationSignal>,
    /// True when a human should take over: any signal, or a very negative message.
    pub escalate: bool,
}

/// A trained sentiment model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentimentModel {
    version: String,
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
        vectorizer: Vectorizer,
        linear: Linear,
        dense_weight: f32,
        lexical: Linear,
    ) -> Self {
        Self {
            version: SENTIMENT_VERSION.to_string(),
            vectorizer,
            linear,
            dense_weight,
            lexical,
        }
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
        let mut signals = escalation_signals(text);
        // Shouting counts only in a message the model reads as negative: "Thanks!!!" and
        // "HOW DO I RESET MY PASSWORD???" are not anger.
        let negative_read = matches!(
            level,
            SentimentLevel::Negative | SentimentLevel::VeryNegative
        );
        if negative_read && shouting(text) && !signals.contains(&EscalationSignal::Anger) {
            signals.insert(0, EscalationSignal::Anger);
        }
        if signals.contains(&EscalationSignal::Anger) {
            level = SentimentLevel::VeryNegative;
            score = score.min(-0.8);
        } else if !signals.is_empty() {
            if matches!(
                level,
                SentimentLevel::Neutral | SentimentLevel::Positive | SentimentLevel::VeryPositive
            ) {
                level = SentimentLevel::Negative;
            }
            score = score.min(-0.4);
        }
        let escalate = !signals.is_empty() || level == SentimentLevel::VeryNegative;
        SentimentAnalysis {
            level,
            score,
            language,
            signals,
            escalate,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let body = b
            .strip_prefix(MAGIC)
            .ok_or_else(|| anyhow!("not a sentiment model"))?;
        let m: Self = postcard::from_bytes(body).context("decoding the sentiment model")?;
        if m.version != SENTIMENT_VERSION {
            bail!(
                "sentiment model version {} (expected {SENTIMENT_VERSION})",
                m.version
            );
        }
        let consistent = |l: &Linear, dense_dim: usize| {
            l.n_classes == 3
                && l.n_sparse == m.vectorizer.len()
                && l.dense_dim == dense_dim
                && l.w.len() == (l.n_sparse + dense_dim) * 3
        };
        if !consistent(&m.linear, m.linear.dense_dim) || !consistent(&m.lexical, 0) {
            bail!("sentiment model is inconsistent");
        }
        Ok(m)
    }

    /// Number of terms the model knows.
    pub fn vocabulary_size(&self) -> usize {
        self.vectorizer.len()
    }
}

// Escalation cues. English cues match at the start of a word (so "complain" also matches
// "complaints"); Chinese cues match anywhere.
const ANGER_EN: &[&str] = &[
    "angry",
    "furious",
    "outraged",
    "livid",
    "pissed",
    "fed up",
    "sick of",
    "sick and tired",
    "ridiculous",
    "unacceptable",
    "disgusting",
    "disgrace",
    "pathetic",
    "wtf",
    "what the hell",
    "what the fuck",
    "bullshit",
    "screw you",
    "hate you",
    "incompetent",
    "scam",
    "rip off",
    "ripoff",
    "shame on you",
    "fuck",
    "damn you",
    "idiots",
    "useless service",
    "enraged",
];
const ANGER_ZH: &[&str] = &[
    "生气",
    "气死",
    "愤怒",
    "恼火",
    "火大",
    "垃圾",
    "坑人",
    "骗子",
    "恶心",
    "破玩意",
    "忍无可忍",
    "受够",
    "滚",
    "妈的",
    "他妈",
    "太过分",
    "岂有此理",
    "坑爹",
    "什么玩意",
    "无耻",
    "混蛋",
];
const CHURN_EN: &[&str] = &[
    "cancel my account",
    "close my account",
    "closing my account",
    "cancel my subscription",
    "cancel my membership",
    "cancel my contract",
    "terminate my contract",
    "end my contract",
    "delete my account",
    "switch to another",
    "switching to another",
    "switch providers",
    "switch banks",
    "switching banks",
    "take my business elsewhere",
    "taking my business elsewhere",
    "find another bank",
    "find another provider",
    "go to a competitor",
    "going to a competitor",
    "never fly with you again",
    "never use you again",
    "never buy from you again",
    "i'm leaving you",
    "i am leaving you",
    "done with you",
    "last time i use",
    "last time i fly",
];
const CHURN_ZH: &[&str] = &[
    "销户",
    "注销账户",
    "注销账号",
    "注销我的",
    "解约",
    "不用你们",
    "再也不用",
    "再也不买",
    "再也不来",
    "再也不会",
    "换一家",
    "换别家",
    "换别的",
    "转网",
    "取消会员",
    "取消订阅",
    "退会员",
    "不再使用",
    "以后不会再",
];
const COMPLAINT_EN: &[&str] = &[
    "complain",
    "file a complaint",
    "report you",
    "reporting you",
    "speak to a manager",
    "talk to a manager",
    "speak to your manager",
    "speak to a supervisor",
    "talk to a supervisor",
    "better business bureau",
    "ombudsman",
    "lawyer",
    "sue you",
    "suing you",
    "legal action",
    "consumer protection",
    "regulator",
];
const COMPLAINT_ZH: &[&str] = &[
    "投诉",
    "举报",
    "曝光",
    "12315",
    "消协",
    "消费者协会",
    "找你们领导",
    "找你们经理",
    "叫你们经理",
    "叫你们领导",
    "维权",
    "起诉",
    "律师",
    "工信部",
    "银保监",
    "差评",
];

/// Words that turn a cue after them around: "I'm not angry", "不是投诉".
const NEGATORS: &[&str] = &[
    "not",
    "no",
    "never",
    "isn't",
    "wasn't",
    "don't",
    "didn't",
    "without",
    "不",
    "没",
    "没有",
    "不是",
    "并不",
    "并没有",
    "别",
    "无",
];

/// Whether one of the three words before byte `at` of `norm` negates what follows.
fn negated(norm: &str, at: usize) -> bool {
    let before = words(&norm[..at]);
    before
        .iter()
        .rev()
        .take(3)
        .any(|word| NEGATORS.contains(&word.as_str()) || word.ends_with("n't"))
}

fn has_cue_en(norm: &str, cues: &[&str]) -> bool {
    cues.iter().any(|cue| {
        norm.match_indices(cue).any(|(i, _)| {
            norm[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric())
                && !negated(norm, i)
        })
    })
}

/// Chinese cues match whole segmented words (or runs of them), never inside a word:
/// 垃圾 is anger, 垃圾邮件 (the spam folder) is not. `tokens` are the message's words.
fn has_cue_zh(tokens: &[String], cues: &[&str]) -> bool {
    cues.iter().any(|cue| {
        (0..tokens.len()).any(|start| {
            let mut joined = String::new();
            for token in &tokens[start..] {
                joined.push_str(token);
                if joined == *cue {
                    return !tokens[..start]
                        .iter()
                        .rev()
                        .take(2)
                        .any(|w| NEGATORS.contains(&w.as_str()));
                }
                if joined.len() >= cue.len() {
                    break;
                }
            }
            false
        })
    })
}

/// A question about how something works ("How do I cancel my subscription?",
/// "取消订阅之后录像还在吗") asks; it does not threaten to leave.
fn is_question(norm: &str) -> bool {
    let trimmed = norm.trim_end();
    trimmed.ends_with(['?', '？', '吗', '呢', '么'])
        || [
            "how ",
            "what ",
            "can i",
            "could i",
            "is it",
            "do i",
            "does ",
            "if i ",
            "怎么",
            "如何",
            "能不能",
            "可以",
        ]
        .iter()
        .any(|start| trimmed.starts_with(start))
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

/// The escalation signals in a message, in a fixed order (anger, churn, complaint).
pub fn escalation_signals(text: &str) -> Vec<EscalationSignal> {
    let norm = normalize(text);
    // Segmented once for every cue list (jieba is the costly part).
    let tokens = words(&norm);
    let mut out = Vec::new();
    if has_cue_en(&norm, ANGER_EN) || has_cue_zh(&tokens, ANGER_ZH) {
        out.push(EscalationSignal::Anger);
    }
    if (has_cue_en(&norm, CHURN_EN) || has_cue_zh(&tokens, CHURN_ZH)) && !is_question(&norm) {
        out.push(EscalationSignal::ChurnThreat);
    }
    if has_cue_en(&norm, COMPLAINT_EN) || has_cue_zh(&tokens, COMPLAINT_ZH) {
        out.push(EscalationSignal::Complaint);
    }
    out
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
        assert_eq!(m.embedding_dim(), 384);
        assert!(BUNDLED.len() < 4 * 1024 * 1024);
        let again = SentimentModel::from_bytes(&m.to_bytes()).unwrap();
        let e = vec![0.05f32; 384];
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
            assert!(
                a.signals.contains(&EscalationSignal::Complaint) && a.escalate,
                "{a:?}"
            );
            assert_eq!(a.language, Language::En);
        }
        for a in analyses("Hello, I need help") {
            assert_eq!(a.level, Neutral, "{a:?}");
            assert!(!a.escalate);
        }
        for a in analyses("Thank you so much, the support was excellent and fast!") {
            assert!(matches!(a.level, Positive | VeryPositive), "{a:?}");
            assert!(a.score > 0.3, "{a:?}");
        }
        for a in analyses("My flight was cancelled and nobody helped, worst experience ever") {
            assert!(negative(a.level) && a.score < -0.3, "{a:?}");
        }
        for a in analyses("This is ridiculous, I'm going to cancel my account and switch banks") {
            assert_eq!(a.level, VeryNegative, "{a:?}");
            assert!(
                a.signals.contains(&EscalationSignal::Anger)
                    && a.signals.contains(&EscalationSignal::ChurnThreat)
            );
        }
    }

    #[test]
    fn clear_chinese_examples() {
        for a in analyses("你们的服务太差了，我要投诉") {
            assert!(negative(a.level), "{a:?}");
            assert_eq!(a.language, Language::Zh);
            assert!(
                a.signals.contains(&EscalationSignal::Complaint) && a.escalate,
                "{a:?}"
            );
        }
        for a in analyses("东西很好，物流也快，非常满意") {
            assert!(matches!(a.level, Positive | VeryPositive), "{a:?}");
        }
        for a in analyses("质量太差了，用了两天就坏了，非常失望") {
            assert!(negative(a.level), "{a:?}");
        }
        for a in analyses("气死我了，再也不会用你们的产品了") {
            assert_eq!(a.level, VeryNegative, "{a:?}");
            assert!(a.signals.contains(&EscalationSignal::ChurnThreat), "{a:?}");
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
    fn cues_respect_word_starts() {
        assert!(escalation_signals("I have an issue with my card").is_empty());
        assert_eq!(
            escalation_signals("I'll file complaints"),
            vec![EscalationSignal::Complaint]
        );
    }

    #[test]
    fn punctuation_negation_and_questions_are_not_cues() {
        let m = SentimentModel::bundled();
        for calm in [
            "Thanks!!!",
            "Great, it works now!!!",
            "谢谢！！！",
            "HOW DO I RESET MY PASSWORD???",
        ] {
            let a = m.analyze(calm, None);
            assert!(!a.escalate && a.signals.is_empty(), "{calm}: {a:?}");
        }
        for calm in [
            "I'm not angry, I just want to know how to switch plans",
            "Not a complaint, just a question",
            "我没生气，就是想问问怎么换套餐",
            "不是投诉哈，就想问下退款多久到账",
            "验证码在垃圾邮件里吗",
            "How do I cancel my subscription?",
            "取消订阅之后录像还在吗",
            "iPhone上app老闪退，卸载后重新安装有用吗",
        ] {
            assert!(escalation_signals(calm).is_empty(), "{calm}");
        }
        assert_eq!(
            escalation_signals("你们就是垃圾"),
            vec![EscalationSignal::Anger]
        );
        assert_eq!(
            escalation_signals("I will cancel my subscription today."),
            vec![EscalationSignal::ChurnThreat]
        );
        assert_eq!(
            escalation_signals("我要投诉"),
            vec![EscalationSignal::Complaint]
        );
    }
}
