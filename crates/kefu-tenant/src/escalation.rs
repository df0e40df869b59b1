//! A tenant's escalation policy: when a customer is handed to a human, and with which
//! reason. All of it is data: kefu's defaults (`assets/escalation.toml`, which documents
//! every key) with the tenant's `[escalation]` section laid over them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{bail, ensure};
use serde::Deserialize;

/// Why a customer is handed to a human: one type from the tenant's cue lists to the
/// `escalation_reason` a client reads. Declared most serious first: when a message shows
/// cues of several reasons, the first decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum EscalationReason {
    /// A hacked account, charges the customer did not make, a stranger with access.
    SecurityIncident,
    /// Danger to people or property: smoke, sparks, a swollen battery, a break-in.
    SafetyHazard,
    /// A lawyer, a chargeback or bank dispute, a regulator.
    LegalThreat,
    /// The customer asks for a person.
    HumanRequest,
    /// Anger in words, or a sentiment score at or below the tenant's `hand_off_score`.
    NegativeSentiment,
    /// A threat to cancel or move to a competitor.
    ChurnThreat,
    /// A case stuck past its normal time (tracking silent for days, a refund not arrived).
    Stalled,
    Complaint,
    /// The bot found no answer twice in a row, or its next best try did not help either.
    NoAnswer,
    /// No cue, but the learned reading says the customer needs a person (sarcasm, a
    /// vulnerable customer, a danger described calmly, a case stuck past its time).
    NeedsPerson,
    /// The intent's route is a human, and the policy gives the intent no reason of its own.
    IntentRoute,
    /// The router could not be reached: nobody knows what the customer wants.
    RouterUnavailable,
    /// The knowledge service could not be reached for a question it should answer.
    KnowledgeUnavailable,
}

impl EscalationReason {
    pub const ALL: [Self; 13] = [
        Self::SecurityIncident,
        Self::SafetyHazard,
        Self::LegalThreat,
        Self::HumanRequest,
        Self::NegativeSentiment,
        Self::ChurnThreat,
        Self::Stalled,
        Self::Complaint,
        Self::NoAnswer,
        Self::NeedsPerson,
        Self::IntentRoute,
        Self::RouterUnavailable,
        Self::KnowledgeUnavailable,
    ];

    /// The name clients read (`escalation_reason`) and policies are written with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SecurityIncident => "security_incident",
            Self::SafetyHazard => "safety_hazard",
            Self::LegalThreat => "legal_threat",
            Self::HumanRequest => "human_request",
            Self::NegativeSentiment => "negative_sentiment",
            Self::ChurnThreat => "churn_threat",
            Self::Stalled => "stalled",
            Self::Complaint => "complaint",
            Self::NoAnswer => "no_answer",
            Self::NeedsPerson => "needs_person",
            Self::IntentRoute => "intent_route",
            Self::RouterUnavailable => "router_unavailable",
            Self::KnowledgeUnavailable => "knowledge_unavailable",
        }
    }

    /// Whether a customer's words can show it (a cue list, an intent's meaning); the
    /// others come from the conversation or from services being down.
    pub fn shown_in_words(self) -> bool {
        self <= Self::Complaint
    }
}

impl FromStr for EscalationReason {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        // "anger": the name of negative_sentiment's cue list in earlier tenant files
        if name == "anger" {
            return Ok(Self::NegativeSentiment);
        }
        parse_name(&Self::ALL, Self::as_str, name, "escalation reason")
    }
}

/// What a cue found in a message does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum CueEffect {
    /// The cue alone hands the customer to a human.
    HandOff,
    /// Only with a negative sentiment reading (score at or below `negative_score`).
    IfNegative,
    /// Noted on the turn (priority, reports); never hands off.
    Record,
}

impl CueEffect {
    pub const ALL: [Self; 3] = [Self::HandOff, Self::IfNegative, Self::Record];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HandOff => "hand_off",
            Self::IfNegative => "if_negative",
            Self::Record => "record",
        }
    }
}

impl FromStr for CueEffect {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        parse_name(&Self::ALL, Self::as_str, name, "effect")
    }
}

impl TryFrom<String> for EscalationReason {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl TryFrom<String> for CueEffect {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl fmt::Display for EscalationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_name<T: Copy>(
    all: &[T],
    name_of: fn(T) -> &'static str,
    name: &str,
    what: &str,
) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|value| name_of(*value) == name)
        .ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|value| name_of(*value)).collect();
            format!(
                "unknown {what} {name:?}, expected one of: {}",
                names.join(", ")
            )
        })
}

/// English and Chinese phrases.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phrases {
    #[serde(default)]
    pub en: Vec<String>,
    #[serde(default)]
    pub zh: Vec<String>,
}

/// One reason's cue phrases.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CueList {
    pub effect: CueEffect,
    #[serde(default)]
    pub en: Vec<String>,
    #[serde(default)]
    pub zh: Vec<String>,
    /// A question never matches ("How do I cancel my subscription?").
    #[serde(default)]
    pub skip_questions: bool,
    /// The message's priority is one level up.
    #[serde(default)]
    pub raise_priority: bool,
    /// Phrases that hold a cue without meaning it (投诉建议): a cue inside one of them
    /// does not count.
    #[serde(default)]
    pub except_en: Vec<String>,
    #[serde(default)]
    pub except_zh: Vec<String>,
}

/// Words that turn a cue after them around, and how many words they reach.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Negators {
    pub window: usize,
    pub words: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Negation {
    pub en: Negators,
    pub zh: Negators,
}

/// How a message opens or what it says anywhere when it asks something.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuestionPhrases {
    pub openings: Vec<String>,
    pub phrases: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuestionMarkers {
    /// A message ending with one of these asks.
    pub end_marks: Vec<String>,
    /// Whole words.
    pub en: QuestionPhrases,
    /// As written, not on word boundaries (怎么 also opens 怎么样).
    pub zh: QuestionPhrases,
}

/// The policy in force for a tenant.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EscalationPolicy {
    /// A message whose sentiment score (-1..1) is at or below this goes to a human.
    pub hand_off_score: f32,
    /// "Negative" for cues with [`CueEffect::IfNegative`].
    pub negative_score: f32,
    /// A message that needs a person with at least this probability (the learned
    /// reading) goes to a human, and counts as negative for [`CueEffect::IfNegative`];
    /// 1 turns the learned reading off.
    pub needs_person: f32,
    pub negation: Negation,
    pub questions: QuestionMarkers,
    /// What a customer says when the last answer did not help.
    pub not_helped: Phrases,
    /// The tenant's intents that mean a reason of their own when routed to a human.
    pub intent_reasons: BTreeMap<String, EscalationReason>,
    /// Most serious first (the order of [`EscalationReason`]).
    pub cues: BTreeMap<EscalationReason, CueList>,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self::defaults().clone()
    }
}

/// The `[escalation]` section as written: any part of the policy.
pub type EscalationSection = toml::Table;

/// Most phrases in one list, and longest phrase: a policy, not a corpus.
const MAX_PHRASES: usize = 1000;
const MAX_PHRASE_CHARS: usize = 100;
/// Farthest a negator reaches, in words.
const MAX_NEGATION_WINDOW: usize = 10;

fn default_table() -> &'static toml::Table {
    static DEFAULTS: OnceLock<toml::Table> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        toml::from_str(include_str!("../assets/escalation.toml"))
            .expect("assets/escalation.toml parses (checked by the crate's tests)")
    })
}

impl EscalationPolicy {
    /// kefu's defaults (`assets/escalation.toml`).
    pub fn defaults() -> &'static EscalationPolicy {
        static DEFAULTS: OnceLock<EscalationPolicy> = OnceLock::new();
        DEFAULTS.get_or_init(|| {
            Self::from_table(default_table().clone())
                .expect("assets/escalation.toml is a valid policy (checked by the crate's tests)")
        })
    }

    /// The defaults with a tenant's section laid over them. Errors name the key as the
    /// tenant wrote it (`escalation.negation.en.window`) and what is wrong with it.
    pub fn with(section: &EscalationSection) -> anyhow::Result<Self> {
        let mut table = default_table().clone();
        overlay(&mut table, section, "")?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> anyhow::Result<Self> {
        let policy: Self = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|error| anyhow::anyhow!("escalation.{}: {}", error.path(), error.inner()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The reason an intent routed to a human is handed off with.
    pub fn intent_reason(&self, intent: &str) -> EscalationReason {
        self.intent_reasons
            .get(intent)
            .copied()
            .unwrap_or(EscalationReason::IntentRoute)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (key, score) in [
            ("hand_off_score", self.hand_off_score),
            ("negative_score", self.negative_score),
        ] {
            ensure!(
                (-1.0..=1.0).contains(&score),
                "escalation.{key}: must be between -1 and 1, not {score}"
            );
        }
        ensure!(
            (0.0..=1.0).contains(&self.needs_person),
            "escalation.needs_person: must be a probability between 0 and 1, not {}",
            self.needs_person
        );
        for (language, negators) in [("en", &self.negation.en), ("zh", &self.negation.zh)] {
            let key = format!("negation.{language}");
            ensure!(
                (1..=MAX_NEGATION_WINDOW).contains(&negators.window),
                "escalation.{key}.window: must be between 1 and {MAX_NEGATION_WINDOW} words, not {}",
                negators.window
            );
            check_phrases(&format!("{key}.words"), &negators.words)?;
        }
        let questions = &self.questions;
        check_phrases("questions.end_marks", &questions.end_marks)?;
        for (language, markers) in [("en", &questions.en), ("zh", &questions.zh)] {
            check_phrases(&format!("questions.{language}.openings"), &markers.openings)?;
            check_phrases(&format!("questions.{language}.phrases"), &markers.phrases)?;
        }
        check_phrases("not_helped.en", &self.not_helped.en)?;
        check_phrases("not_helped.zh", &self.not_helped.zh)?;
        for (intent, reason) in &self.intent_reasons {
            ensure!(
                reason.shown_in_words(),
                "escalation.intent_reasons.{intent}: {reason} is not a reason an intent can mean"
            );
        }
        for (reason, list) in &self.cues {
            ensure!(
                reason.shown_in_words(),
                "escalation.cues.{reason}: a message's words cannot show {reason}, so it has no cue list"
            );
            for (language, phrases) in [
                ("en", &list.en),
                ("zh", &list.zh),
                ("except_en", &list.except_en),
                ("except_zh", &list.except_zh),
            ] {
                check_phrases(&format!("cues.{reason}.{language}"), phrases)?;
            }
        }
        Ok(())
    }
}

fn check_phrases(key: &str, phrases: &[String]) -> anyhow::Result<()> {
    ensure!(
        phrases.len() <= MAX_PHRASES,
        "escalation.{key}: at most {MAX_PHRASES} phrases"
    );
    for phrase in phrases {
        ensure!(
            !phrase.trim().is_empty()
                && phrase.chars().count() <= MAX_PHRASE_CHARS
                && !phrase.chars().any(char::is_control),
            "escalation.{key}: phrase {phrase:?} must be 1-{MAX_PHRASE_CHARS} printable characters"
        );
    }
    Ok(())
}

/// Lays a tenant's section over the defaults at `path`: a table merges key by key, while
/// a number, a list, a cue list (`cues.<reason>`) or `intent_reasons` replaces the
/// default whole. Cue lists are keyed by their reason's own name, so that one written
/// under an earlier name ("anger") replaces its default.
fn overlay(base: &mut toml::Table, over: &toml::Table, path: &str) -> anyhow::Result<()> {
    for (key, value) in over {
        let at = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let key = if path == "cues" {
            match key.parse::<EscalationReason>() {
                Ok(reason) => reason.as_str().to_owned(),
                Err(error) => bail!("escalation.{at}: {error}"),
            }
        } else {
            key.clone()
        };
        let replaced_whole = path == "cues" || at == "intent_reasons";
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) if !replaced_whole => {
                overlay(base, over, &at)?
            }
            _ => {
                base.insert(key, value.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(source: &str) -> EscalationSection {
        toml::from_str(source).unwrap()
    }

    #[test]
    fn defaults_parse_and_every_reason_a_message_can_show_has_phrases() {
        let defaults = EscalationPolicy::defaults();
        for reason in EscalationReason::ALL
            .into_iter()
            .filter(|r| r.shown_in_words())
        {
            let list = &defaults.cues[&reason];
            assert!(!list.en.is_empty() && !list.zh.is_empty(), "{reason}");
        }
        assert!(defaults.hand_off_score < defaults.negative_score);
        assert_eq!(
            defaults.intent_reason("human_agent"),
            EscalationReason::HumanRequest
        );
        assert_eq!(
            defaults.intent_reason("payment_problem"),
            EscalationReason::IntentRoute
        );
    }

    #[test]
    fn reasons_and_effects_read_back_from_their_names() {
        for reason in EscalationReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
        }
        for effect in CueEffect::ALL {
            assert_eq!(effect.as_str().parse(), Ok(effect));
        }
        assert_eq!(
            "anger".parse(),
            Ok(EscalationReason::NegativeSentiment),
            "the cue list's earlier name"
        );
    }

    #[test]
    fn a_tenant_overrides_values_lists_and_whole_cue_lists() {
        let policy = EscalationPolicy::with(&section(
            r#"
            hand_off_score = -0.5
            not_helped.en = ["still stuck"]
            negation.zh.window = 3
            [intent_reasons]
            grievance = "complaint"
            [cues.complaint]
            effect = "if_negative"
            zh = ["投诉"]
            "#,
        ))
        .unwrap();
        let defaults = EscalationPolicy::defaults();
        assert_eq!(policy.hand_off_score, -0.5);
        assert_eq!(policy.negative_score, defaults.negative_score);
        assert_eq!(policy.not_helped.en, ["still stuck"]);
        assert_eq!(policy.not_helped.zh, defaults.not_helped.zh, "kept");
        assert_eq!(policy.negation.zh.window, 3);
        assert_eq!(policy.negation.zh.words, defaults.negation.zh.words);
        assert_eq!(
            policy.intent_reason("grievance"),
            EscalationReason::Complaint
        );
        assert_eq!(
            policy.intent_reason("complaint"),
            EscalationReason::IntentRoute,
            "the tenant's table replaces the default one"
        );
        let complaint = &policy.cues[&EscalationReason::Complaint];
        assert_eq!(complaint.effect, CueEffect::IfNegative);
        assert!(complaint.en.is_empty() && complaint.zh == ["投诉"]);
        assert_eq!(
            policy.cues[&EscalationReason::NegativeSentiment],
            defaults.cues[&EscalationReason::NegativeSentiment]
        );
    }

    #[test]
    fn a_cue_list_under_its_earlier_name_replaces_the_default() {
        let policy = EscalationPolicy::with(&section(
            "[cues.anger]\neffect = \"record\"\nen = [\"grr\"]",
        ))
        .unwrap();
        let anger = &policy.cues[&EscalationReason::NegativeSentiment];
        assert_eq!(
            (anger.effect, anger.en.as_slice()),
            (CueEffect::Record, &["grr".to_owned()][..])
        );
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_and_the_reason() {
        for (source, says) in [
            ("hand_off_score = -3.0", "escalation.hand_off_score: must be between -1 and 1"),
            (
                "[cues.negative_sentiment]\neffect = \"hand_off\"\nen = [\" \"]",
                "escalation.cues.negative_sentiment.en: phrase \" \"",
            ),
            (
                "[cues.complaint]\neffect = \"sometimes\"",
                "escalation.cues.complaint.effect: unknown effect \"sometimes\", expected one of: hand_off, if_negative, record",
            ),
            ("[cues.gossip]\neffect = \"record\"", "escalation.cues.gossip: unknown escalation reason \"gossip\""),
            ("[cues.no_answer]\neffect = \"record\"", "escalation.cues.no_answer: a message's words cannot show no_answer"),
            ("negation.en.window = 0", "escalation.negation.en.window: must be between 1 and 10"),
            (
                "negation.en.window = \"three\"",
                "escalation.negation.en.window: invalid type: string \"three\", expected usize",
            ),
            ("[negation.en]\nwindows = 2", "escalation.negation.en.windows: unknown field `windows`"),
            ("questions.en.openings = \"how\"", "escalation.questions.en.openings: invalid type"),
            ("intent_reasons.angry = \"furious\"", "escalation.intent_reasons.angry: unknown escalation reason \"furious\""),
            ("intent_reasons.down = \"router_unavailable\"", "escalation.intent_reasons.down: router_unavailable"),
            ("threshold = 1", "unknown field `threshold`"),
        ] {
            let error = EscalationPolicy::with(&section(source)).unwrap_err();
            let error = format!("{error:#}");
            assert!(error.contains(says), "{source}: {error}");
        }
    }
}
