//! A tenant's escalation policy ([`EscalationPolicy`]) applied to a customer's message:
//! the cue lists it shows ("speak to a human", "chargeback", 账号被盗), whether it asks
//! something, and whether it says the last answer did not help. Every word comes from
//! the policy. English phrases match whole words ("complain" is not in "complaints");
//! Chinese phrases match whole segmented words or runs of them, never inside a word
//! (垃圾 is not in 垃圾邮件). A phrase within a negator's reach ("I'm not angry",
//! 不是投诉) does not count, nor a cue inside one of its list's exceptions (投诉建议).

use std::collections::HashSet;

use aho_corasick::AhoCorasick;
use kefu_tenant::{CueList, EscalationPolicy, EscalationReason, Negators, QuestionMarkers};

use crate::text::{is_word_char, normalize, words};

/// A message prepared once for every list of phrases: normalised and segmented.
pub struct Message {
    norm: String,
    tokens: Vec<String>,
    /// The tokens written together: every run of whole words is a substring of it.
    joined: String,
    /// Where each token starts in `joined`, then where the last one ends.
    boundaries: Vec<usize>,
}

impl Message {
    pub fn new(text: &str) -> Self {
        let norm = normalize(text);
        let tokens = words(&norm);
        let boundaries = std::iter::once(0)
            .chain(tokens.iter().scan(0, |end, token| {
                *end += token.len();
                Some(*end)
            }))
            .collect();
        Self {
            joined: tokens.concat(),
            boundaries,
            norm,
            tokens,
        }
    }
}

/// Which of the message's texts a phrase was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    /// English phrases: the normalised text.
    En,
    /// Chinese phrases: the joined words.
    Zh,
}

/// Where a phrase was found: bytes `start..end` of the text of its script.
#[derive(Clone, Copy, Debug)]
struct Span {
    script: Script,
    start: usize,
    end: usize,
}

impl Span {
    fn within(self, other: Span) -> bool {
        self.script == other.script && other.start <= self.start && self.end <= other.end
    }
}

/// Phrases in both languages, found on whole words in one pass over each text.
#[derive(Debug, Clone, Default)]
struct PhraseFinder {
    en: Option<AhoCorasick>,
    zh: Option<AhoCorasick>,
}

impl PhraseFinder {
    /// Phrases normalised here as messages are; Chinese ones without the spaces that
    /// separate their words.
    fn new(en: &[String], zh: &[String]) -> Self {
        let en: Vec<String> = en.iter().map(|p| normalize(p)).collect();
        let zh: Vec<String> = zh
            .iter()
            .map(|p| normalize(p).split_whitespace().collect())
            .collect();
        Self {
            en: automaton(&en),
            zh: automaton(&zh),
        }
    }

    fn spans<'a>(&'a self, message: &'a Message) -> impl Iterator<Item = Span> + 'a {
        let en = self
            .en
            .iter()
            .flat_map(|finder| finder.find_overlapping_iter(message.norm.as_str()))
            .filter(|m| whole_words(&message.norm, m.start(), m.end()))
            .map(|m| Span {
                script: Script::En,
                start: m.start(),
                end: m.end(),
            });
        let zh = self
            .zh
            .iter()
            .flat_map(|finder| finder.find_overlapping_iter(message.joined.as_str()))
            .filter(|m| {
                let boundary = |at: usize| message.boundaries.binary_search(&at).is_ok();
                boundary(m.start()) && boundary(m.end())
            })
            .map(|m| Span {
                script: Script::Zh,
                start: m.start(),
                end: m.end(),
            });
        en.chain(zh)
    }
}

/// An automaton over the non-empty phrases, or none.
fn automaton(phrases: &[String]) -> Option<AhoCorasick> {
    let phrases: Vec<&String> = phrases.iter().filter(|p| !p.is_empty()).collect();
    if phrases.is_empty() {
        return None;
    }
    Some(AhoCorasick::new(phrases).expect("policy phrases are short enough for an automaton"))
}

/// Whether bytes `start..end` of `text` neither begin nor end inside a word: "trash" is
/// in "the trash folder", "complain" is not in "complaints", "sue" is not in "issue",
/// "if i" is not in "if i'm".
fn whole_words(text: &str, start: usize, end: usize) -> bool {
    let found = &text[start..end];
    let opens_a_word = found.chars().next().is_some_and(is_word_char);
    let closes_a_word = found.chars().next_back().is_some_and(is_word_char);
    let joined_before = opens_a_word && continues_word(text[..start].chars().rev());
    let joined_after = closes_a_word && continues_word(text[end..].chars());
    !joined_before && !joined_after
}

/// Whether the characters next to a phrase, read away from it, continue its word: a
/// letter or digit, or an apostrophe inside a word ("don't"), as [`words`] splits them.
fn continues_word(mut chars: impl Iterator<Item = char>) -> bool {
    match chars.next() {
        Some(c) if is_word_char(c) => true,
        Some('\'' | '’') => chars.next().is_some_and(is_word_char),
        _ => false,
    }
}

/// Negators of one language, normalised as the message's words are.
struct NegatorSet {
    words: HashSet<String>,
    window: usize,
}

impl NegatorSet {
    fn new(negators: &Negators) -> Self {
        Self {
            words: negators
                .words
                .iter()
                .map(|w| normalize(w).replace('’', "'"))
                .collect(),
            window: negators.window,
        }
    }

    fn any_among_last<'a>(&self, words: impl DoubleEndedIterator<Item = &'a String>) -> bool {
        words
            .rev()
            .take(self.window)
            .any(|word| self.words.contains(word))
    }
}

/// The policy's question markers, normalised.
struct Questions {
    end_marks: Vec<String>,
    en_openings: Vec<String>,
    en_phrases: PhraseFinder,
    zh_openings: Vec<String>,
    zh_phrases: Vec<String>,
}

impl Questions {
    fn new(markers: &QuestionMarkers) -> Self {
        let normalized = |list: &[String]| list.iter().map(|m| normalize(m)).collect();
        Self {
            end_marks: normalized(&markers.end_marks),
            en_openings: normalized(&markers.en.openings),
            en_phrases: PhraseFinder::new(&markers.en.phrases, &[]),
            zh_openings: normalized(&markers.zh.openings),
            zh_phrases: normalized(&markers.zh.phrases),
        }
    }

    fn asked_in(&self, message: &Message) -> bool {
        let text = message.norm.as_str();
        self.end_marks
            .iter()
            .any(|mark| text.ends_with(mark.as_str()))
            || self.en_openings.iter().any(|opening| {
                text.starts_with(opening.as_str()) && whole_words(text, 0, opening.len())
            })
            || self
                .zh_openings
                .iter()
                .any(|opening| text.starts_with(opening.as_str()))
            || self
                .zh_phrases
                .iter()
                .any(|phrase| text.contains(phrase.as_str()))
            || self.en_phrases.spans(message).next().is_some()
    }
}

/// One reason's cue list, prepared.
struct CueMatcher {
    reason: EscalationReason,
    list: CueList,
    phrases: PhraseFinder,
    except: PhraseFinder,
}

/// A tenant's escalation policy prepared for matching messages.
pub struct PolicyMatcher {
    /// Most serious first.
    cues: Vec<CueMatcher>,
    not_helped: PhraseFinder,
    negators_en: NegatorSet,
    negators_zh: NegatorSet,
    questions: Questions,
}

impl PolicyMatcher {
    pub fn new(policy: &EscalationPolicy) -> Self {
        Self {
            cues: policy
                .cues
                .iter()
                .map(|(reason, list)| CueMatcher {
                    reason: *reason,
                    phrases: PhraseFinder::new(&list.en, &list.zh),
                    except: PhraseFinder::new(&list.except_en, &list.except_zh),
                    list: list.clone(),
                })
                .collect(),
            not_helped: PhraseFinder::new(&policy.not_helped.en, &policy.not_helped.zh),
            negators_en: NegatorSet::new(&policy.negation.en),
            negators_zh: NegatorSet::new(&policy.negation.zh),
            questions: Questions::new(&policy.questions),
        }
    }

    /// Whether the message asks something ("How do I cancel my subscription?",
    /// "取消订阅之后录像还在吗"), directly or not ("I just want to know how to switch plans").
    pub fn is_question(&self, message: &Message) -> bool {
        self.questions.asked_in(message)
    }

    /// The cue lists the message shows, most serious first.
    pub fn cues_in<'a>(
        &'a self,
        message: &'a Message,
    ) -> impl Iterator<Item = (EscalationReason, &'a CueList)> + 'a {
        let question = self.is_question(message);
        self.cues
            .iter()
            .filter(move |cue| !(cue.list.skip_questions && question))
            .filter(|cue| self.shows(&cue.phrases, &cue.except, message))
            .map(|cue| (cue.reason, &cue.list))
    }

    /// Whether the customer says the last answer did not help ("I already restarted the
    /// router", 还是不行): then the bot must not give it again.
    pub fn says_not_helped(&self, message: &Message) -> bool {
        self.shows(&self.not_helped, &PhraseFinder::default(), message)
    }

    /// A phrase found outside the reach of a negator and outside every exception.
    fn shows(&self, phrases: &PhraseFinder, except: &PhraseFinder, message: &Message) -> bool {
        phrases.spans(message).any(|span| {
            !self.negated(message, span) && !except.spans(message).any(|e| span.within(e))
        })
    }

    fn negated(&self, message: &Message, span: Span) -> bool {
        match span.script {
            Script::En => self
                .negators_en
                .any_among_last(words(&message.norm[..span.start]).iter()),
            Script::Zh => {
                let first = message
                    .boundaries
                    .binary_search(&span.start)
                    .unwrap_or_default();
                self.negators_zh
                    .any_among_last(message.tokens[..first].iter())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(section: &str) -> PolicyMatcher {
        PolicyMatcher::new(&EscalationPolicy::with(&toml::from_str(section).unwrap()).unwrap())
    }

    fn shows(matcher: &PolicyMatcher, text: &str) -> Vec<EscalationReason> {
        matcher
            .cues_in(&Message::new(text))
            .map(|(reason, _)| reason)
            .collect()
    }

    #[test]
    fn english_cues_match_whole_words_and_not_after_negations() {
        let complaint =
            matcher("[cues.complaint]\neffect = \"hand_off\"\nen = [\"complain\", \"sue\"]");
        let complaint = |text| shows(&complaint, text).contains(&EscalationReason::Complaint);
        assert!(complaint("I want to COMPLAIN."));
        assert!(!complaint("I'll file complaints"), "not a prefix");
        assert!(!complaint("I have an issue with my card"));
        assert!(complaint("I will sue!"));
        assert!(!complaint("I don't want to complain, just asking"));
        assert!(
            complaint("我要complain"),
            "a Chinese word before is a boundary"
        );
    }

    #[test]
    fn the_trash_folder_is_not_anger() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        for asks in [
            "Where is the trash folder in the app?",
            "How do I empty the trash?",
            "I moved a clip to the trash by mistake, can I get it back?",
        ] {
            assert!(shows(&defaults, asks).is_empty(), "{asks}");
        }
        assert_eq!(
            shows(
                &defaults,
                "Your app is absolute trash and so is your support."
            ),
            [EscalationReason::NegativeSentiment]
        );
    }

    #[test]
    fn chinese_cues_match_whole_words_and_not_after_negations() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        let shows = |text| shows(&defaults, text);
        assert_eq!(shows("你们就是垃圾"), [EscalationReason::NegativeSentiment]);
        assert!(shows("验证码在垃圾邮件里吗").is_empty());
        assert_eq!(shows("我要投诉"), [EscalationReason::Complaint]);
        assert!(shows("不是投诉哈，就想问下退款多久到账").is_empty());
        // a phrase of several words, written with spaces in the policy
        assert_eq!(shows("请帮我转人工"), [EscalationReason::HumanRequest]);
    }

    #[test]
    fn a_cue_inside_an_exception_does_not_count() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        assert!(shows(&defaults, "我想在投诉建议里表扬一下你们的客服小李").is_empty());
        assert_eq!(
            shows(&defaults, "在投诉建议里留言没用，我要投诉"),
            [EscalationReason::Complaint],
            "a second, bare 投诉 still counts"
        );
    }

    #[test]
    fn negators_and_their_reach_are_the_tenants() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        let text = "Not really angry";
        assert!(shows(&defaults, text).is_empty(), "within three words");
        let short_reach = matcher("negation.en.window = 1");
        assert_eq!(
            shows(&short_reach, text),
            [EscalationReason::NegativeSentiment]
        );
        let no_nie = matcher("negation.zh.words = [\"不\"]");
        assert_eq!(
            shows(&no_nie, "不用转人工"),
            [EscalationReason::HumanRequest]
        );
    }

    #[test]
    fn questions_are_read_with_the_policys_markers() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        for asks in [
            "How do I cancel my subscription?",
            "how do i cancle my subscribtion",
            "不想要了退货，运费谁出呀",
            "发西藏一般要几天",
            "app登不上去了，怎么办",
            "I'm not angry, I just want to know how to switch plans",
            "想知道会员到期以后数据还在不在",
        ] {
            assert!(defaults.is_question(&Message::new(asks)), "{asks}");
        }
        for says in [
            "再不解决我就换别家了",
            "however it broke again",
            "If I'm not refunded today I'll call my bank.",
        ] {
            assert!(!defaults.is_question(&Message::new(says)), "{says}");
        }
        let churn = "How do I cancel my subscription?";
        assert!(shows(&defaults, churn).is_empty(), "churn skips questions");
        let no_openings = matcher("questions.en.openings = []\nquestions.end_marks = []");
        assert_eq!(shows(&no_openings, churn), [EscalationReason::ChurnThreat]);
    }

    #[test]
    fn knows_when_an_answer_did_not_help() {
        let defaults = PolicyMatcher::new(EscalationPolicy::defaults());
        for said in [
            "I already restarted the router",
            "that didn't help",
            "Still not working.",
            "还是不行",
            "试过了，没用",
        ] {
            assert!(defaults.says_not_helped(&Message::new(said)), "{said}");
        }
        for said in [
            "thanks, that helped",
            "How do I restart the hub?",
            "好的，谢谢",
        ] {
            assert!(!defaults.says_not_helped(&Message::new(said)), "{said}");
        }
        let own = matcher("not_helped.en = [\"still stuck\"]");
        assert!(own.says_not_helped(&Message::new("I'm still stuck")));
        assert!(!own.says_not_helped(&Message::new("that didn't help")));
    }
}
