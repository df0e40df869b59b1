//! What the conversation so far means for a new message: whether the bot's last reply
//! missed or did not help, and what to search for. Pure rules over the session's turns.
use kefu_proto::v1::Turn;

use crate::decision::{Conversation, Retrieval};

/// What the session's last turn says about this message: whether the bot's last reply
/// missed (a turn without intent, see `Decision::missed`), and whether its last answer
/// from knowledge did not help (the customer says so, as the router read it with the
/// tenant's phrases, or the same answer would come again).
pub fn conversation_so_far(
    previous: Option<&Turn>,
    says_not_helped: bool,
    retrieval: &Retrieval,
) -> Conversation {
    let Some(previous) = previous.filter(|turn| !turn.escalated) else {
        return Conversation::default();
    };
    let answered_from_knowledge = !previous.sources.is_empty();
    let would_repeat = retrieval
        .found()
        .is_some_and(|k| !k.answer.is_empty() && previous.reply.starts_with(&k.answer));
    let previous_missed = previous.intent.is_empty();
    // after a miss too: "still not working" after the next best try goes to a person
    Conversation {
        previous_missed,
        not_helped: (answered_from_knowledge && would_repeat)
            || ((answered_from_knowledge || previous_missed) && says_not_helped),
    }
}

/// The text to search when it is not the message alone: a short follow-up on the same
/// topic is searched together with the question it follows. A follow-up the router reads
/// as another intent is a new topic, searched alone (with the router's embedding).
pub fn follow_up_query(previous: Option<&Turn>, text: &str, intent: &str) -> Option<String> {
    previous
        .filter(|previous| kefu_nlp::text::is_short_follow_up(text) && previous.intent == intent)
        .map(|previous| format!("{} {}", previous.text, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kefu_proto::v1::{SearchResponse, Source};

    fn bot_turn(text: &str, intent: &str, reply: &str, from_knowledge: bool) -> Turn {
        Turn {
            text: text.into(),
            intent: intent.into(),
            reply: reply.into(),
            sources: if from_knowledge {
                vec![Source::default()]
            } else {
                Vec::new()
            },
            ..Default::default()
        }
    }

    fn found(answer: &str) -> Retrieval {
        Retrieval::Found(SearchResponse {
            answer: answer.into(),
            confident: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_short_message_on_the_same_intent_is_searched_with_its_question() {
        let previous = bot_turn("How much is the Pro plan?", "pricing", "It is $20.", true);
        assert_eq!(
            follow_up_query(Some(&previous), "and per year?", "pricing").as_deref(),
            Some("How much is the Pro plan? and per year?")
        );
        assert_eq!(
            follow_up_query(Some(&previous), "and per year?", "refund"),
            None
        );
        let long = "I would also like to know how to change my billing address";
        assert_eq!(follow_up_query(Some(&previous), long, "pricing"), None);
        assert_eq!(follow_up_query(None, "and per year?", "pricing"), None);
    }

    #[test]
    fn the_same_answer_again_means_the_last_one_did_not_help() {
        let previous = bot_turn(
            "router keeps dropping",
            "connectivity",
            "Restart the router.",
            true,
        );
        let again = conversation_so_far(Some(&previous), false, &found("Restart the router."));
        assert!(again.not_helped);
        assert!(!again.previous_missed);
        let other = conversation_so_far(Some(&previous), false, &found("Use the 5 GHz band."));
        assert!(!other.not_helped);
        let says_so = conversation_so_far(Some(&previous), true, &found("Use the 5 GHz band."));
        assert!(says_so.not_helped, "the customer says it did not help");
    }

    #[test]
    fn a_miss_is_remembered_and_a_handed_off_turn_starts_afresh() {
        let missed = bot_turn("blorp", "", "Could you rephrase?", false);
        assert!(conversation_so_far(Some(&missed), false, &Retrieval::NotNeeded).previous_missed);
        let handed_off = Turn {
            escalated: true,
            ..missed
        };
        assert_eq!(
            conversation_so_far(Some(&handed_off), true, &Retrieval::NotNeeded),
            Conversation::default()
        );
    }
}
