//! The tenant's escalation policy read in a message, for the orchestrator's decision:
//! the cues found, whether it asks something or says the last answer did not help, the
//! reason a route to a human is given with, and the sentiment thresholds. Business rules
//! only; no gRPC here beyond the fields it fills.

use kefu_nlp::cues::{Message, PolicyMatcher};
use kefu_proto::v1::{ClassifyResponse, EscalationCue, EscalationThresholds, Route};
use kefu_tenant::EscalationPolicy;

/// A tenant's policy, its phrases prepared for matching.
pub struct Escalation {
    policy: EscalationPolicy,
    matcher: PolicyMatcher,
}

impl Escalation {
    pub fn new(policy: &EscalationPolicy) -> Self {
        Self {
            policy: policy.clone(),
            matcher: PolicyMatcher::new(policy),
        }
    }

    /// Fills the escalation fields of a classification of `message` (its intent and
    /// route already set).
    pub fn read(&self, message: &Message, classification: &mut ClassifyResponse) {
        classification.escalation_cues = self
            .matcher
            .cues_in(message)
            .map(|(reason, list)| EscalationCue {
                reason: reason.as_str().to_owned(),
                effect: list.effect.as_str().to_owned(),
                raise_priority: list.raise_priority,
            })
            .collect();
        classification.escalation_thresholds = Some(EscalationThresholds {
            hand_off_score: self.policy.hand_off_score,
            negative_score: self.policy.negative_score,
            needs_person: Some(self.policy.needs_person),
        });
        classification.question = self.matcher.is_question(message);
        classification.says_not_helped = self.matcher.says_not_helped(message);
        let may_hand_off = Route::try_from(classification.route).is_ok_and(Route::may_hand_off);
        classification.route_reason = if may_hand_off {
            self.policy
                .intent_reason(&classification.intent)
                .as_str()
                .to_owned()
        } else {
            String::new()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_tenant::{EscalationReason, EscalationSection};

    fn read(escalation: &Escalation, text: &str, intent: &str, route: Route) -> ClassifyResponse {
        let mut classification = ClassifyResponse {
            intent: intent.into(),
            route: route as i32,
            ..Default::default()
        };
        escalation.read(&Message::new(text), &mut classification);
        classification
    }

    fn reasons(escalation: &Escalation, text: &str) -> Vec<String> {
        read(escalation, text, "out_of_scope", Route::Answer)
            .escalation_cues
            .into_iter()
            .map(|cue| cue.reason)
            .collect()
    }

    fn with(section: &str) -> Escalation {
        let section: EscalationSection = toml::from_str(section).unwrap();
        Escalation::new(&EscalationPolicy::with(&section).unwrap())
    }

    #[test]
    fn the_default_policy_finds_what_needs_a_person() {
        let escalation = Escalation::new(EscalationPolicy::defaults());
        use EscalationReason::*;
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
            ("你们就是垃圾", NegativeSentiment),
            ("This is fucking ridiculous", NegativeSentiment),
            ("I'm cancelling and going to a competitor", ChurnThreat),
            ("Tracking hasn't updated in 9 business days", Stalled),
            ("退款审核通过半个月了，还没到账", Stalled),
            ("我要投诉", Complaint),
            ("I've complained three times already", Complaint),
        ] {
            assert_eq!(
                reasons(&escalation, text).first().map(String::as_str),
                Some(want.as_str()),
                "{text}"
            );
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
            "Where is the trash folder in the app?",
            "Can I add an emergency contact who gets the alerts too?",
            "I'm a lawyer and need a plan for the four people in my office",
            "Is your service GDPR compliant?",
        ] {
            assert!(
                reasons(&escalation, calm).is_empty(),
                "{calm}: {:?}",
                reasons(&escalation, calm)
            );
        }
    }

    #[test]
    fn danger_and_anger_raise_the_priority() {
        let escalation = Escalation::new(EscalationPolicy::defaults());
        let raised = |text| {
            read(&escalation, text, "out_of_scope", Route::Answer).escalation_cues[0].raise_priority
        };
        assert!(raised("The battery is swollen"));
        assert!(raised("This is ridiculous"));
        assert!(!raised("I want to file a formal complaint"));
    }

    #[test]
    fn a_tenant_policy_changes_what_is_found_and_what_it_does() {
        let escalation = with("[cues.complaint]\neffect = \"if_negative\"\nen = [\"not happy\"]\n");
        let read = read(
            &escalation,
            "I'm not happy with the camera",
            "out_of_scope",
            Route::Answer,
        );
        assert_eq!(read.escalation_cues.len(), 1);
        assert_eq!(read.escalation_cues[0].effect, "if_negative");
        assert!(reasons(&escalation, "I want to complain").is_empty());
    }

    #[test]
    fn a_route_to_a_human_is_given_the_reason_the_policy_says_the_intent_means() {
        let defaults = Escalation::new(EscalationPolicy::defaults());
        let route_reason = |escalation: &Escalation, intent, route| {
            read(escalation, "hello", intent, route).route_reason
        };
        assert_eq!(
            route_reason(&defaults, "human_agent", Route::Human),
            "human_request"
        );
        assert_eq!(
            route_reason(&defaults, "complaint", Route::Human),
            "complaint"
        );
        assert_eq!(
            route_reason(&defaults, "complaint", Route::HumanIfNegative),
            "complaint"
        );
        assert_eq!(
            route_reason(&defaults, "payment_problem", Route::Human),
            "intent_route"
        );
        assert_eq!(route_reason(&defaults, "complaint", Route::Answer), "");
        let own = with("[intent_reasons]\nbeschwerde = \"complaint\"");
        assert_eq!(route_reason(&own, "beschwerde", Route::Human), "complaint");
        assert_eq!(
            route_reason(&own, "complaint", Route::Human),
            "intent_route"
        );
    }

    #[test]
    fn says_not_helped_in_the_tenants_words() {
        let defaults = Escalation::new(EscalationPolicy::defaults());
        let own = with("not_helped.en = [\"still stuck\"]");
        let says = |escalation: &Escalation, text| {
            read(escalation, text, "technical_support", Route::Answer).says_not_helped
        };
        assert!(says(&defaults, "I already restarted the router"));
        assert!(!says(&defaults, "I'm still stuck"));
        assert!(says(&own, "I'm still stuck"));
    }
}
