//! The decision of the workflow: answer, or hand off to a human (and why), whether to
//! open a ticket, its priority, and the reply's wording. Pure, so it is tested alone.
use kefu_proto::v1::{
    AnalyzeResponse, ClassifyResponse, EscalationCue, EscalationThresholds, Language, Priority,
    Route, SearchResponse, SentimentLabel,
};
use kefu_storage::Unanswered;
use kefu_tenant::CueEffect;
/// Why a customer goes to a human: the tenant policy's type, named as clients read it.
pub use kefu_tenant::EscalationReason;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Why the customer goes to a human; None when answered.
    pub reason: Option<EscalationReason>,
    pub open_ticket: bool,
    pub priority: Priority,
    pub answered_from_knowledge: bool,
    /// No answer found, for the first time in a row: the customer is asked to rephrase
    /// (or to ask for a person) instead of being handed off.
    pub clarify: bool,
    /// The last answer did not help (the customer says so, or it would be given again):
    /// the next best passage, or an offer of a person, instead of the same reply.
    pub next_best: bool,
    /// The question this message leaves unanswered, for reports and knowledge gaps.
    pub unanswered: Unanswered,
}

/// What the conversation so far says about this message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// The bot's last reply missed: a request to rephrase, or another try after an
    /// answer that did not help.
    pub previous_missed: bool,
    /// The customer says the bot's last answer did not help ("I already restarted it").
    pub not_helped: bool,
}

/// What the knowledge step gave for a message.
#[derive(Clone, Debug)]
pub enum Retrieval {
    /// The route or a fixed reply needs no passages.
    NotNeeded,
    /// The knowledge service could not be reached.
    Unavailable,
    Found(SearchResponse),
}

impl Retrieval {
    pub fn found(&self) -> Option<&SearchResponse> {
        match self {
            Self::Found(response) => Some(response),
            _ => None,
        }
    }
}

/// The thresholds when the router sent none: kefu's default policy.
fn default_thresholds() -> EscalationThresholds {
    let policy = kefu_tenant::EscalationPolicy::defaults();
    EscalationThresholds {
        hand_off_score: policy.hand_off_score,
        negative_score: policy.negative_score,
        needs_person: Some(policy.needs_person),
    }
}

/// Decides for one message; `classification` is None when the router could not be
/// reached, and the customer then goes to a human rather than being failed.
///
/// The signals are combined in one order: a cue of the tenant's escalation policy that
/// hands off (most serious first; some only with a negative reading, or when the learned
/// reading says the customer needs a person), then the intent's route to a human (some
/// routes only with a negative or needing reading, as cues), then a
/// second try that did not help either, then a sentiment score at or below the tenant's
/// threshold (not for a question: asking how to return a broken camera is not anger),
/// then the learned reading (questions too: "my battery is bulging, is that normal?"),
/// then an answer if there is one (but not the one that just failed), and only then the
/// knowledge service being down or a second miss in a row.
pub fn decide(
    classification: Option<&ClassifyResponse>,
    sentiment: &AnalyzeResponse,
    retrieval: &Retrieval,
    conversation: Conversation,
) -> Decision {
    let Some(classification) = classification else {
        return Decision {
            reason: Some(EscalationReason::RouterUnavailable),
            open_ticket: true,
            priority: priority(Priority::Medium as i32, sentiment, &[]),
            answered_from_knowledge: false,
            clarify: false,
            next_best: false,
            unanswered: Unanswered::None,
        };
    };
    let knowledge = retrieval.found();
    let thresholds = classification
        .escalation_thresholds
        .unwrap_or_else(default_thresholds);
    let needs_person = needs_person(sentiment, &thresholds);
    // A question's sentiment reads what it is about ("how do I return a broken camera?",
    // "how long is the video of the burglary kept?"), not how the customer feels: only a
    // statement's score counts; in a question, only the learned reading does.
    let felt_score =
        (!classification.question).then(|| sentiment.sentiment.as_ref().map_or(0.0, |s| s.score));
    let negative = needs_person || felt_score.is_some_and(|s| s <= thresholds.negative_score);
    // A cue the orchestrator cannot read (a newer router's) is passed over.
    let cue_reason = classification
        .escalation_cues
        .iter()
        .filter_map(|cue| Some((cue.reason.parse().ok()?, cue.effect.parse().ok()?)))
        .find(|(_, effect)| match effect {
            CueEffect::HandOff => true,
            CueEffect::IfNegative => negative,
            CueEffect::Record => false,
        })
        .map(|(reason, _)| reason);
    let route = Route::try_from(classification.route).unwrap_or(Route::Answer);
    let fixed_reply = !classification.fixed_reply.is_empty();
    let confident_answer = knowledge.is_some_and(|k| k.confident && !k.answer.trim().is_empty());

    let to_human = route.hands_off(negative);

    let reason = if cue_reason.is_some() {
        cue_reason
    } else if to_human {
        Some(
            classification
                .route_reason
                .parse()
                .unwrap_or(EscalationReason::IntentRoute),
        )
    } else if conversation.not_helped && conversation.previous_missed {
        // the second try did not help either
        Some(EscalationReason::NoAnswer)
    } else if felt_score.is_some_and(|s| s <= thresholds.hand_off_score) {
        Some(EscalationReason::NegativeSentiment)
    } else if needs_person {
        Some(EscalationReason::NeedsPerson)
    } else if conversation.not_helped || fixed_reply || confident_answer {
        None
    } else if matches!(retrieval, Retrieval::Unavailable) {
        Some(EscalationReason::KnowledgeUnavailable)
    } else if conversation.previous_missed {
        Some(EscalationReason::NoAnswer)
    } else {
        None
    };
    let next_best = reason.is_none() && conversation.not_helped;
    let clarify = reason.is_none() && !next_best && !fixed_reply && !confident_answer;

    Decision {
        reason,
        open_ticket: reason.is_some() || (route == Route::Ticket && !clarify),
        priority: priority(
            classification.urgency,
            sentiment,
            &classification.escalation_cues,
        ),
        answered_from_knowledge: reason.is_none() && !next_best && !fixed_reply && confident_answer,
        clarify,
        next_best,
        unanswered: unanswered(reason, clarify, conversation),
    }
}

/// Whether the learned reading says the customer needs a person, by the tenant's
/// threshold (kefu's default when the router sent none; 1 turns it off).
fn needs_person(sentiment: &AnalyzeResponse, thresholds: &EscalationThresholds) -> bool {
    let threshold = thresholds
        .needs_person
        .unwrap_or(kefu_tenant::EscalationPolicy::defaults().needs_person);
    threshold < 1.0
        && sentiment
            .needs_person
            .is_some_and(|probability| probability >= threshold)
}

/// Which question a decision leaves unanswered, each once: a miss, a hand-off for want of
/// an answer, or an answer the customer says did not help (that earlier question). After
/// a miss, "that did not help" is no new question: the miss was counted.
fn unanswered(
    reason: Option<EscalationReason>,
    clarify: bool,
    conversation: Conversation,
) -> Unanswered {
    if conversation.not_helped {
        if conversation.previous_missed {
            Unanswered::None
        } else {
            Unanswered::NotHelped
        }
    } else if reason == Some(EscalationReason::NoAnswer) {
        Unanswered::NoAnswer
    } else if clarify {
        Unanswered::Miss
    } else {
        Unanswered::None
    }
}

/// The intent's urgency, one level up for a very negative customer or a cue that raises
/// the priority (danger, anger, as the tenant's policy says), at most urgent.
fn priority(urgency: i32, sentiment: &AnalyzeResponse, cues: &[EscalationCue]) -> Priority {
    let very_negative = sentiment
        .sentiment
        .as_ref()
        .is_some_and(|s| s.label == SentimentLabel::VeryNegative as i32);
    let pressing = cues.iter().any(|cue| cue.raise_priority);
    let mut level = match Priority::try_from(urgency) {
        Ok(Priority::Unspecified) | Err(_) => Priority::Low as i32,
        Ok(priority) => priority as i32,
    };
    if very_negative || pressing {
        level += 1;
    }
    at_most_urgent(level)
}

fn at_most_urgent(level: i32) -> Priority {
    Priority::try_from(level.min(Priority::Urgent as i32)).unwrap_or(Priority::Urgent)
}

/// After an answer that did not help: a passage from another source than the last reply
/// quoted, and the offer of a person; just the offer when there is none.
fn next_best_reply(knowledge: Option<&SearchResponse>, previous_reply: &str, zh: bool) -> String {
    let other = knowledge
        .into_iter()
        .flat_map(|k| &k.sources)
        .find(|source| {
            let head: String = source.snippet.chars().take(40).collect();
            !head.trim().is_empty() && !previous_reply.contains(head.trim_end_matches('…'))
        });
    match (other, zh) {
        (Some(source), false) => format!(
            "Sorry that didn't solve it. This may help instead ({}):\n\n{}\n\nIf it doesn't, just say so and I'll pass you to a colleague.",
            source.title, source.snippet
        ),
        (Some(source), true) => format!(
            "抱歉，刚才的方法没有解决问题。您可以看看这条（{}）：\n\n{}\n\n如果还是不行，告诉我一声，我马上为您转人工客服。",
            source.title, source.snippet
        ),
        (None, false) => "Sorry that didn't solve it, and I have no other answer for this. Shall I pass you to a colleague? Just say so.".into(),
        (None, true) => "抱歉，刚才的方法没有解决问题，我这里也没有别的办法了。需要为您转人工客服吗？回复“转人工”即可。".into(),
    }
}

/// While a human handles the session, a customer who grows angrier is moved up the
/// queue: the priority a message asks for when it is more negative than the previous
/// one and negative at all (the ticket service only ever raises).
pub fn mood_priority(previous_label: Option<i32>, sentiment: &AnalyzeResponse) -> Option<Priority> {
    let label = sentiment
        .sentiment
        .as_ref()
        .map(|s| s.label)
        .unwrap_or(SentimentLabel::Neutral as i32);
    let worse = previous_label.is_none_or(|previous| label < previous);
    if !worse || label > SentimentLabel::Negative as i32 || label == 0 {
        return None;
    }
    Some(if label == SentimentLabel::VeryNegative as i32 {
        Priority::Urgent
    } else {
        Priority::High
    })
}

/// The hand-off acknowledgement while the ticket cannot be opened yet (the ticket
/// service is unreachable; the request waits in the outbox): the truth, no number.
pub fn handoff_pending_reply(language: Language) -> String {
    if language == Language::Zh {
        "我已将您的问题转交人工客服。工单系统暂时无法访问，恢复后会立即为您创建工单，客服会尽快与您联系。".into()
    } else {
        "I've passed your message to our support team. Our ticket system is briefly unavailable, so your ticket will be opened as soon as it is back; a member of the team will get back to you.".into()
    }
}

impl Decision {
    pub fn escalated(&self) -> bool {
        self.reason.is_some()
    }

    /// A miss: the next message that finds no answer, or says this did not help either,
    /// goes to a human. Recorded as a turn without intent.
    pub fn missed(&self) -> bool {
        self.clarify || self.next_best
    }

    /// The reply to send; `previous_reply` is the bot's last one, never sent twice in a row.
    pub fn reply(
        &self,
        fixed_reply: &str,
        knowledge: Option<&SearchResponse>,
        ticket_id: &str,
        language: Language,
        previous_reply: &str,
    ) -> String {
        let zh = language == Language::Zh;
        if let Some(reason) = self.reason {
            return match (reason, zh) {
                (EscalationReason::NoAnswer, false) => format!(
                    "I couldn't find a reliable answer to that, so I've passed your question to a member of our support team (ticket {ticket_id}). They will get back to you as soon as possible."
                ),
                (EscalationReason::NoAnswer, true) => format!("抱歉，我没有找到可靠的答案，已将您的问题转交人工客服（工单号：{ticket_id}），他们会尽快与您联系。"),
                (_, false) => format!(
                    "I'm sorry for the trouble. I've passed your message to a member of our support team (ticket {ticket_id}). They will get back to you as soon as possible."
                ),
                (_, true) => format!("非常抱歉给您带来不便。我已将您的问题转交人工客服（工单号：{ticket_id}），他们会尽快与您联系。"),
            };
        }
        if self.next_best {
            return next_best_reply(knowledge, previous_reply, zh);
        }
        if self.clarify {
            return if zh {
                "抱歉，我不太确定您的意思。能换个说法，或补充一些细节（比如订单、套餐或设备）吗？如果想找人工客服，直接告诉我就好。".into()
            } else {
                "I'm not sure I understood. Could you rephrase, or add a detail or two (your order, plan or device, for example)? If you'd rather talk to a person, just say so.".into()
            };
        }
        let mut reply = if self.answered_from_knowledge {
            knowledge.map(|k| k.answer.clone()).unwrap_or_default()
        } else {
            fixed_reply.to_owned()
        };
        if self.open_ticket && !ticket_id.is_empty() {
            reply.push_str(&if zh {
                format!("\n\n我们也已为您创建工单（{ticket_id}），同事会跟进处理。")
            } else {
                format!(
                    "\n\nWe have also opened ticket {ticket_id} so that a colleague can follow up."
                )
            });
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_proto::v1::Sentiment;

    fn classified(intent: &str, route: Route, urgency: Priority) -> ClassifyResponse {
        ClassifyResponse {
            intent: intent.into(),
            confidence: 0.9,
            route: route as i32,
            urgency: urgency as i32,
            ..Default::default()
        }
    }

    fn feeling(label: SentimentLabel) -> AnalyzeResponse {
        let score = match label {
            SentimentLabel::VeryNegative => -0.95,
            SentimentLabel::Negative => -0.5,
            SentimentLabel::Positive => 0.5,
            SentimentLabel::VeryPositive => 0.95,
            _ => 0.0,
        };
        AnalyzeResponse {
            sentiment: Some(Sentiment {
                label: label as i32,
                score,
            }),
            ..Default::default()
        }
    }

    fn with_cue(
        mut classification: ClassifyResponse,
        reason: EscalationReason,
        effect: CueEffect,
        raise_priority: bool,
    ) -> ClassifyResponse {
        classification.escalation_cues.push(EscalationCue {
            reason: reason.as_str().into(),
            effect: effect.as_str().into(),
            raise_priority,
        });
        classification
    }

    #[test]
    fn policy_cues_hand_off_with_their_reason_over_routes_and_answers() {
        let question = classified("account_help", Route::Answer, Priority::Low);
        let hacked = with_cue(
            question.clone(),
            EscalationReason::SecurityIncident,
            CueEffect::HandOff,
            true,
        );
        let decision = decide_first_message(&hacked, &feeling(SentimentLabel::Neutral));
        assert_eq!(decision.reason, Some(EscalationReason::SecurityIncident));
        assert!(decision.open_ticket && !decision.answered_from_knowledge);
        assert_eq!(decision.priority, Priority::Medium, "one up: pressing");

        // only with a negative reading
        let grumble = with_cue(
            question.clone(),
            EscalationReason::Complaint,
            CueEffect::IfNegative,
            false,
        );
        let calm = decide_first_message(&grumble, &feeling(SentimentLabel::Neutral));
        assert_eq!(calm.reason, None);
        let upset = decide_first_message(&grumble, &feeling(SentimentLabel::Negative));
        assert_eq!(upset.reason, Some(EscalationReason::Complaint));
        // a question's sentiment reads its topic ("how long is the burglary's video
        // kept?"): there only the learned reading makes the cue count
        let mut asked = grumble.clone();
        asked.question = true;
        let decide_asked =
            |sentiment: &AnalyzeResponse| decide_first_message(&asked, sentiment).reason;
        assert_eq!(decide_asked(&feeling(SentimentLabel::Negative)), None);
        let needing = AnalyzeResponse {
            needs_person: Some(0.95),
            ..feeling(SentimentLabel::Negative)
        };
        assert_eq!(decide_asked(&needing), Some(EscalationReason::Complaint));

        // recorded, never handing off
        let noted = with_cue(
            question.clone(),
            EscalationReason::ChurnThreat,
            CueEffect::Record,
            false,
        );
        let decision = decide_first_message(&noted, &feeling(SentimentLabel::Negative));
        assert_eq!(decision.reason, None);

        // a cue the orchestrator cannot read is passed over for the next
        let mut unknown = with_cue(
            question,
            EscalationReason::Stalled,
            CueEffect::HandOff,
            false,
        );
        unknown.escalation_cues.insert(
            0,
            EscalationCue {
                reason: "alien_abduction".into(),
                effect: "hand_off".into(),
                raise_priority: false,
            },
        );
        let decision = decide_first_message(&unknown, &feeling(SentimentLabel::Neutral));
        assert_eq!(decision.reason, Some(EscalationReason::Stalled));
    }

    #[test]
    fn the_tenant_threshold_decides_how_negative_hands_off() {
        let mut billing = classified("billing", Route::Answer, Priority::Medium);
        let negative = feeling(SentimentLabel::Negative);
        let decide_with = |billing: &ClassifyResponse| decide_first_message(billing, &negative);
        assert_eq!(
            decide_with(&billing).reason,
            None,
            "-0.5 is above the default -0.9"
        );
        billing.escalation_thresholds = Some(EscalationThresholds {
            hand_off_score: -0.4,
            negative_score: -0.2,
            needs_person: None,
        });
        assert_eq!(
            decide_with(&billing).reason,
            Some(EscalationReason::NegativeSentiment)
        );
    }

    #[test]
    fn the_learned_reading_hands_off_by_the_tenant_threshold_and_confirms_cues() {
        let question = classified("account_help", Route::Answer, Priority::Low);
        let read_as = |probability: Option<f32>| AnalyzeResponse {
            needs_person: probability,
            ..feeling(SentimentLabel::Neutral)
        };
        let decide_with = |classification: &ClassifyResponse, probability| {
            decide_first_message(classification, &read_as(probability)).reason
        };
        // kefu's default threshold when the router sends none; a question too
        let default = kefu_tenant::EscalationPolicy::defaults().needs_person;
        let (above, below) = (Some(default + 0.05), Some(default - 0.2));
        assert_eq!(
            decide_with(&question, above),
            Some(EscalationReason::NeedsPerson)
        );
        assert_eq!(decide_with(&question, below), None);
        assert_eq!(decide_with(&question, None), None, "no encoder, no reading");

        let mut strict = question.clone();
        strict.escalation_thresholds = Some(EscalationThresholds {
            needs_person: Some(0.99),
            ..default_thresholds()
        });
        assert_eq!(decide_with(&strict, above), None);
        strict.escalation_thresholds = Some(EscalationThresholds {
            needs_person: Some(1.0),
            ..default_thresholds()
        });
        assert_eq!(decide_with(&strict, Some(1.0)), None, "1 turns it off");

        // an "if_negative" cue in a calm message counts when the customer needs a person,
        // with the cue's own reason
        let lawyer = with_cue(
            question,
            EscalationReason::LegalThreat,
            CueEffect::IfNegative,
            false,
        );
        assert_eq!(decide_with(&lawyer, below), None);
        assert_eq!(
            decide_with(&lawyer, above),
            Some(EscalationReason::LegalThreat)
        );
    }

    /// The decision for a conversation's first message, with a confident answer found.
    fn decide_first_message(
        classification: &ClassifyResponse,
        sentiment: &AnalyzeResponse,
    ) -> Decision {
        decide(
            Some(classification),
            sentiment,
            &Retrieval::Found(answer(true)),
            Conversation::default(),
        )
    }

    fn answer(confident: bool) -> SearchResponse {
        SearchResponse {
            answer: "The Pro plan costs $18 a month.".into(),
            confident,
            sources: Vec::new(),
        }
    }

    #[test]
    fn answers_a_confident_product_question() {
        let decision = decide_first_message(
            &classified("product_inquiry", Route::Answer, Priority::Low),
            &feeling(SentimentLabel::Neutral),
        );
        assert_eq!(decision.reason, None);
        assert!(!decision.open_ticket);
        assert!(decision.answered_from_knowledge);
        assert_eq!(decision.priority, Priority::Low);
    }

    #[test]
    fn a_route_to_a_human_hands_off_with_the_reason_the_router_gives() {
        let mut complaint = classified("complaint", Route::Human, Priority::High);
        complaint.route_reason = "complaint".into();
        let decision = decide(
            Some(&complaint),
            &feeling(SentimentLabel::Negative),
            &Retrieval::NotNeeded,
            Conversation::default(),
        );
        assert_eq!(decision.reason, Some(EscalationReason::Complaint));
        assert!(decision.open_ticket);
        assert!(decision.priority as i32 >= Priority::High as i32);
        let decision = decide(
            Some(&classified("payment_problem", Route::Human, Priority::High)),
            &feeling(SentimentLabel::Neutral),
            &Retrieval::NotNeeded,
            Conversation::default(),
        );
        assert_eq!(decision.reason, Some(EscalationReason::IntentRoute));
    }

    #[test]
    fn a_route_to_a_human_if_negative_hands_off_only_a_negative_or_needing_message() {
        let mut complaint = classified("complaint", Route::HumanIfNegative, Priority::High);
        complaint.route_reason = "complaint".into();
        let decide_with = |sentiment: &AnalyzeResponse| decide_first_message(&complaint, sentiment);
        assert_eq!(
            decide_with(&feeling(SentimentLabel::Negative)).reason,
            Some(EscalationReason::Complaint)
        );
        let calm_but_needing = AnalyzeResponse {
            needs_person: Some(0.95),
            ..feeling(SentimentLabel::Neutral)
        };
        assert_eq!(
            decide_with(&calm_but_needing).reason,
            Some(EscalationReason::Complaint)
        );
        // praise through the complaints channel is answered
        let praise = decide_with(&feeling(SentimentLabel::Positive));
        assert_eq!(praise.reason, None);
        assert!(praise.answered_from_knowledge);
    }

    #[test]
    fn very_negative_sentiment_escalates_and_raises_priority() {
        let decision = decide_first_message(
            &classified("billing", Route::Answer, Priority::Medium),
            &feeling(SentimentLabel::VeryNegative),
        );
        assert_eq!(decision.reason, Some(EscalationReason::NegativeSentiment));
        assert_eq!(decision.priority, Priority::High);
    }

    #[test]
    fn a_second_miss_in_a_row_goes_to_a_human() {
        let miss = |previous_missed| {
            decide(
                Some(&classified("out_of_scope", Route::Answer, Priority::Low)),
                &feeling(SentimentLabel::Neutral),
                &Retrieval::Found(answer(false)),
                Conversation {
                    previous_missed,
                    ..Default::default()
                },
            )
        };
        let first = miss(false);
        assert_eq!(first.reason, None, "the first miss asks to rephrase");
        assert!(first.clarify && !first.open_ticket);
        assert!(first
            .reply("", None, "", Language::En, "")
            .contains("rephrase"));
        assert_eq!(miss(true).reason, Some(EscalationReason::NoAnswer));
    }

    #[test]
    fn each_unanswered_question_is_recorded_once() {
        let decision = |conversation, confident| {
            decide(
                Some(&classified("billing", Route::Answer, Priority::Low)),
                &feeling(SentimentLabel::Neutral),
                &Retrieval::Found(answer(confident)),
                conversation,
            )
            .unanswered
        };
        let not_helped = |previous_missed| Conversation {
            previous_missed,
            not_helped: true,
        };
        assert_eq!(decision(Conversation::default(), true), Unanswered::None);
        assert_eq!(decision(Conversation::default(), false), Unanswered::Miss);
        let rephrased = Conversation {
            previous_missed: true,
            not_helped: false,
        };
        assert_eq!(decision(rephrased, false), Unanswered::NoAnswer);
        // the answer before did not help: that question was left unanswered
        assert_eq!(decision(not_helped(false), true), Unanswered::NotHelped);
        // after a miss, already counted
        assert_eq!(decision(not_helped(true), false), Unanswered::None);
    }

    #[test]
    fn an_answer_that_did_not_help_is_not_given_again() {
        let mut search = answer(true);
        search.sources = vec![
            kefu_proto::v1::Source {
                title: "Troubleshooting".into(),
                snippet: "The Pro plan costs $18 a month.".into(),
                ..Default::default()
            },
            kefu_proto::v1::Source {
                title: "Wi-Fi".into(),
                snippet: "Move the hub closer to the router.".into(),
                ..Default::default()
            },
        ];
        let retry = |previous_missed| {
            decide(
                Some(&classified(
                    "technical_support",
                    Route::Answer,
                    Priority::Medium,
                )),
                &feeling(SentimentLabel::Neutral),
                &Retrieval::Found(search.clone()),
                Conversation {
                    previous_missed,
                    not_helped: true,
                },
            )
        };
        let first = retry(false);
        assert_eq!(first.reason, None);
        assert!(first.next_best && first.missed() && !first.answered_from_knowledge);
        let reply = first.reply("", Some(&search), "", Language::En, &search.answer);
        assert!(reply.contains("Move the hub closer"), "{reply}");
        assert!(!reply.contains("$18"), "{reply}");
        // nothing else to offer: a person is offered
        let offer = first.reply("", None, "", Language::En, &search.answer);
        assert!(offer.contains("colleague"), "{offer}");
        // the second try did not help either: a human takes over
        assert_eq!(retry(true).reason, Some(EscalationReason::NoAnswer));
    }

    #[test]
    fn unreachable_services_hand_off_with_their_reason() {
        let decision = decide(
            None,
            &feeling(SentimentLabel::Neutral),
            &Retrieval::NotNeeded,
            Conversation::default(),
        );
        assert_eq!(decision.reason, Some(EscalationReason::RouterUnavailable));
        assert!(decision.open_ticket);
        assert_eq!(decision.priority, Priority::Medium);
        let decision = decide(
            Some(&classified("product_inquiry", Route::Answer, Priority::Low)),
            &feeling(SentimentLabel::Neutral),
            &Retrieval::Unavailable,
            Conversation::default(),
        );
        assert_eq!(
            decision.reason,
            Some(EscalationReason::KnowledgeUnavailable)
        );
        assert!(decision.open_ticket);
    }

    #[test]
    fn a_very_negative_message_is_one_step_more_urgent() {
        let decision = decide(
            Some(&classified("complaint", Route::Human, Priority::High)),
            &feeling(SentimentLabel::VeryNegative),
            &Retrieval::NotNeeded,
            Conversation::default(),
        );
        assert_eq!(
            decision.priority,
            Priority::Urgent,
            "high, one up: very negative"
        );
    }

    #[test]
    fn fixed_replies_need_no_knowledge() {
        let mut greeting = classified("greeting", Route::Answer, Priority::Low);
        greeting.fixed_reply = "Hello! How can I help?".into();
        let decision = decide(
            Some(&greeting),
            &feeling(SentimentLabel::Neutral),
            &Retrieval::NotNeeded,
            Conversation::default(),
        );
        assert_eq!(decision.reason, None);
        assert_eq!(
            decision.reply(&greeting.fixed_reply, None, "", Language::En, ""),
            "Hello! How can I help?"
        );
    }

    #[test]
    fn only_a_worsening_mood_raises_priority_while_with_a_human() {
        let negative = feeling(SentimentLabel::Negative);
        let very_negative = feeling(SentimentLabel::VeryNegative);
        assert_eq!(mood_priority(None, &negative), Some(Priority::High));
        assert_eq!(
            mood_priority(Some(SentimentLabel::Negative as i32), &very_negative),
            Some(Priority::Urgent)
        );
        assert_eq!(
            mood_priority(Some(SentimentLabel::Negative as i32), &negative),
            None,
            "not angrier than before"
        );
        assert_eq!(
            mood_priority(
                Some(SentimentLabel::Positive as i32),
                &feeling(SentimentLabel::Neutral)
            ),
            None,
            "worse but not negative"
        );
    }

    #[test]
    fn ticket_route_answers_and_opens_a_ticket() {
        let decision = decide_first_message(
            &classified("refund", Route::Ticket, Priority::Medium),
            &feeling(SentimentLabel::Neutral),
        );
        assert_eq!(decision.reason, None);
        assert!(decision.open_ticket);
        let reply = decision.reply("", Some(&answer(true)), "T-1", Language::En, "");
        assert!(reply.starts_with("The Pro plan costs"));
        assert!(reply.contains("T-1"));
    }
}
