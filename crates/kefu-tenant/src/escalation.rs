//! A tenant's escalation policy: which cue phrases hand a customer to a human, and at
//! which sentiment. kefu's defaults (`assets/escalation.toml`) apply where the tenant's
//! `[escalation]` section says nothing; a tenant's cue list replaces the default list of
//! the same kind.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{ensure, Context as _};
use serde::Deserialize;

/// The kinds of cue a policy lists, in the order a hand-off reason is chosen when a
/// message shows several.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CueKind {
    SecurityIncident,
    SafetyHazard,
    LegalThreat,
    HumanRequest,
    Anger,
    ChurnThreat,
    Stalled,
    Complaint,
}

impl CueKind {
    pub const ALL: [CueKind; 8] = [
        CueKind::SecurityIncident,
        CueKind::SafetyHazard,
        CueKind::LegalThreat,
        CueKind::HumanRequest,
        CueKind::Anger,
        CueKind::ChurnThreat,
        CueKind::Stalled,
        CueKind::Complaint,
    ];
}

/// What a cue found in a message does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CueEffect {
    /// The cue alone hands the customer to a human.
    HandOff,
    /// Only with a negative sentiment reading (score at or below `negative_score`).
    IfNegative,
    /// Noted on the turn (priority, reports); never hands off.
    Record,
}

/// One kind's phrases.
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
}

/// The policy in force for a tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct EscalationPolicy {
    /// A message whose sentiment score (-1..1) is at or below this goes to a human.
    pub hand_off_score: f32,
    /// "Negative" for cues with [`CueEffect::IfNegative`].
    pub negative_score: f32,
    pub cues: BTreeMap<CueKind, CueList>,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self::defaults().clone()
    }
}

/// The `[escalation]` section as written: every part optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationSection {
    pub hand_off_score: Option<f32>,
    pub negative_score: Option<f32>,
    #[serde(default)]
    pub cues: BTreeMap<CueKind, CueList>,
}

/// Most phrases in one list, and longest phrase: a policy, not a corpus.
const MAX_PHRASES: usize = 1000;
const MAX_PHRASE_CHARS: usize = 100;

impl EscalationPolicy {
    /// kefu's defaults (`assets/escalation.toml`).
    pub fn defaults() -> &'static EscalationPolicy {
        static DEFAULTS: OnceLock<EscalationPolicy> = OnceLock::new();
        DEFAULTS.get_or_init(|| {
            let section: EscalationSection =
                toml::from_str(include_str!("../assets/escalation.toml"))
                    .expect("assets/escalation.toml parses (checked by the crate's tests)");
            let policy = EscalationPolicy {
                hand_off_score: section.hand_off_score.expect("a default hand_off_score"),
                negative_score: section.negative_score.expect("a default negative_score"),
                cues: section.cues,
            };
            policy
                .validate()
                .expect("assets/escalation.toml is a valid policy (checked by the crate's tests)");
            policy
        })
    }

    /// The defaults with a tenant's section laid over them.
    pub fn with(section: &EscalationSection) -> anyhow::Result<Self> {
        let defaults = Self::defaults();
        let mut cues = defaults.cues.clone();
        cues.extend(section.cues.clone());
        let policy = Self {
            hand_off_score: section.hand_off_score.unwrap_or(defaults.hand_off_score),
            negative_score: section.negative_score.unwrap_or(defaults.negative_score),
            cues,
        };
        policy.validate().context("[escalation]")?;
        Ok(policy)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (name, score) in [
            ("hand_off_score", self.hand_off_score),
            ("negative_score", self.negative_score),
        ] {
            ensure!(
                (-1.0..=1.0).contains(&score),
                "{name} must be between -1 and 1, not {score}"
            );
        }
        for (kind, list) in &self.cues {
            for phrases in [&list.en, &list.zh] {
                ensure!(
                    phrases.len() <= MAX_PHRASES,
                    "cues.{kind:?}: at most {MAX_PHRASES} phrases per language"
                );
                for phrase in phrases {
                    ensure!(
                        !phrase.trim().is_empty()
                            && phrase.chars().count() <= MAX_PHRASE_CHARS
                            && !phrase.chars().any(char::is_control),
                        "cues.{kind:?}: phrase {phrase:?} must be 1-{MAX_PHRASE_CHARS} printable characters"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_cover_every_kind() {
        let defaults = EscalationPolicy::defaults();
        for kind in CueKind::ALL {
            let list = &defaults.cues[&kind];
            assert!(!list.en.is_empty() && !list.zh.is_empty(), "{kind:?}");
        }
        assert!(defaults.hand_off_score < defaults.negative_score);
    }

    #[test]
    fn a_tenant_overrides_thresholds_and_whole_lists() {
        let section: EscalationSection = toml::from_str(
            r#"
            hand_off_score = -0.5
            [cues.complaint]
            effect = "if_negative"
            zh = ["投诉"]
            "#,
        )
        .unwrap();
        let policy = EscalationPolicy::with(&section).unwrap();
        assert_eq!(policy.hand_off_score, -0.5);
        assert_eq!(
            policy.negative_score,
            EscalationPolicy::defaults().negative_score
        );
        let complaint = &policy.cues[&CueKind::Complaint];
        assert_eq!(complaint.effect, CueEffect::IfNegative);
        assert!(complaint.en.is_empty() && complaint.zh == ["投诉"]);
        assert_eq!(
            policy.cues[&CueKind::Anger],
            EscalationPolicy::defaults().cues[&CueKind::Anger]
        );
    }

    #[test]
    fn bad_sections_are_refused_with_the_reason() {
        for (source, says) in [
            ("hand_off_score = -3.0", "hand_off_score"),
            (
                "[cues.anger]\neffect = \"hand_off\"\nen = [\" \"]",
                "phrase",
            ),
            ("[cues.anger]\neffect = \"sometimes\"", "unknown variant"),
            ("[cues.gossip]\neffect = \"record\"", "unknown variant"),
            ("threshold = 1", "unknown field"),
        ] {
            let error = toml::from_str::<EscalationSection>(source)
                .map_err(anyhow::Error::from)
                .and_then(|section| EscalationPolicy::with(&section));
            let error = format!("{:#}", error.unwrap_err());
            assert!(error.contains(says), "{source}: {error}");
        }
    }
}
