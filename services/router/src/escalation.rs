//! The tenant's escalation policy applied to a message: which of its cue lists the
//! message shows, and the thresholds the orchestrator combines them with sentiment by.
//! Business rules only; no gRPC here.

use kefu_nlp::cues::{Cues, Message};
use kefu_proto::v1::{self, EscalationCue, EscalationSignal, EscalationThresholds};
use kefu_tenant::{CueEffect, CueKind, EscalationPolicy};

/// A tenant's policy, its phrases prepared for matching.
pub struct PolicyMatcher {
    /// In the policy's order of seriousness.
    lists: Vec<(CueKind, CueEffect, Cues)>,
    thresholds: EscalationThresholds,
}

impl PolicyMatcher {
    pub fn new(policy: &EscalationPolicy) -> Self {
        Self {
            lists: policy
                .cues
                .iter()
                .map(|(kind, list)| {
                    (
                        *kind,
                        list.effect,
                        Cues::new(&list.en, &list.zh, list.skip_questions),
                    )
                })
                .collect(),
            thresholds: EscalationThresholds {
                hand_off_score: policy.hand_off_score,
                negative_score: policy.negative_score,
            },
        }
    }

    /// The cues found in a message, most serious first.
    pub fn cues_in(&self, message: &Message) -> Vec<EscalationCue> {
        self.lists
            .iter()
            .filter(|(_, _, cues)| cues.found_in(message))
            .map(|(kind, effect, _)| EscalationCue {
                signal: signal_of(*kind) as i32,
                effect: effect_of(*effect) as i32,
            })
            .collect()
    }

    pub fn thresholds(&self) -> EscalationThresholds {
        self.thresholds
    }
}

fn signal_of(kind: CueKind) -> EscalationSignal {
    match kind {
        CueKind::SecurityIncident => EscalationSignal::SecurityIncident,
        CueKind::SafetyHazard => EscalationSignal::SafetyHazard,
        CueKind::LegalThreat => EscalationSignal::LegalThreat,
        CueKind::HumanRequest => EscalationSignal::HumanRequest,
        CueKind::Anger => EscalationSignal::Anger,
        CueKind::ChurnThreat => EscalationSignal::ChurnThreat,
        CueKind::Stalled => EscalationSignal::Stalled,
        CueKind::Complaint => EscalationSignal::Complaint,
    }
}

fn effect_of(effect: CueEffect) -> v1::CueEffect {
    match effect {
        CueEffect::HandOff => v1::CueEffect::HandOff,
        CueEffect::IfNegative => v1::CueEffect::IfNegative,
        CueEffect::Record => v1::CueEffect::Record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_tenant::EscalationSection;

    fn signals(matcher: &PolicyMatcher, text: &str) -> Vec<EscalationSignal> {
        matcher
            .cues_in(&Message::new(text))
            .iter()
            .map(|cue| EscalationSignal::try_from(cue.signal).unwrap())
            .collect()
    }

    #[test]
    fn the_default_policy_finds_what_needs_a_person() {
        let matcher = PolicyMatcher::new(EscalationPolicy::defaults());
        use EscalationSignal::*;
        for (text, want) in [
            ("I think my account was hacked", SecurityIncident),
            ("有人盗用了我的账号", SecurityIncident),
            (
                "The hub is smoking and smells like burning plastic!!",
                SafetyHazard,
            ),
            ("网关冒烟了，有焦糊味", SafetyHazard),
            ("I'm going to file a chargeback.", LegalThreat),
            ("这笔钱我要找银行拒付", LegalThreat),
            ("I want to talk to a real person, not a bot.", HumanRequest),
            ("转人工", HumanRequest),
            ("你们就是垃圾", Anger),
            ("I'm cancelling and going to a competitor", ChurnThreat),
            ("Tracking hasn't updated in 9 business days", Stalled),
            ("退款审核通过半个月了，还没到账", Stalled),
            ("我要投诉", Complaint),
        ] {
            assert_eq!(signals(&matcher, text).first(), Some(&want), "{text}");
        }
        for calm in [
            "Thanks!!!",
            "Great, it works now!!!",
            "How do I cancel my subscription?",
            "取消订阅之后录像还在吗",
            "My refund still hasn't arrived, how long does it usually take?",
            "验证码在垃圾邮件里",
            "iPhone上app老闪退，卸载后重新安装有用吗",
            "I'm not angry, I just want to know how to switch plans",
            "Is there a phone number I can call?",
            "Does the sensor kit include a smoke alarm?",
            "How do I delete my account?",
        ] {
            assert!(
                signals(&matcher, calm).is_empty(),
                "{calm}: {:?}",
                signals(&matcher, calm)
            );
        }
    }

    #[test]
    fn a_tenant_policy_changes_what_is_found_and_what_it_does() {
        let section: EscalationSection =
            toml::from_str("[cues.complaint]\neffect = \"if_negative\"\nen = [\"not happy\"]\n")
                .unwrap();
        let matcher = PolicyMatcher::new(&EscalationPolicy::with(&section).unwrap());
        let cues = matcher.cues_in(&Message::new("I'm not happy with the camera"));
        assert_eq!(cues.len(), 1);
        assert_eq!(cues[0].effect, v1::CueEffect::IfNegative as i32);
        assert!(matcher
            .cues_in(&Message::new("I want to complain"))
            .is_empty());
    }
}
