//! Cue phrases in a customer's message, as a tenant's escalation policy lists them
//! ("speak to a human", "chargeback", 账号被盗): English cues match at the start of a
//! word ("complain" also finds "complaints"), Chinese cues match whole segmented words
//! or runs of them, never inside a word (垃圾 is not in 垃圾邮件). A cue right after a
//! negation ("I'm not angry", 不是投诉) does not count, and a list can be told to skip
//! questions ("How do I cancel my subscription?" asks; it does not threaten).

use aho_corasick::AhoCorasick;

use crate::text::{normalize, words};

/// A message prepared once for every list of cues: normalised, segmented, and whether it
/// is a question.
pub struct Message {
    norm: String,
    tokens: Vec<String>,
    /// The tokens written together: every run of whole words is a substring of it.
    joined: String,
    /// Where each token starts in `joined`, then where the last one ends.
    boundaries: Vec<usize>,
    question: bool,
}

impl Message {
    pub fn new(text: &str) -> Self {
        let norm = normalize(text);
        let tokens = words(&norm);
        let question = is_question(&norm);
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
            question,
        }
    }

    pub fn is_question(&self) -> bool {
        self.question
    }
}

/// One list of cue phrases.
#[derive(Debug, Clone, Default)]
pub struct Cues {
    /// Every occurrence of every English cue in the normalised message, in one pass.
    en_finder: Option<AhoCorasick>,
    /// Every occurrence of every Chinese cue in the joined tokens; each is then checked
    /// against the word boundaries.
    zh_finder: Option<AhoCorasick>,
    skip_questions: bool,
}

impl Cues {
    /// English and Chinese phrases (normalised here as messages are); with
    /// `skip_questions`, a question never matches.
    pub fn new(en: &[String], zh: &[String], skip_questions: bool) -> Self {
        let prepare = |phrases: &[String]| -> Vec<String> {
            phrases
                .iter()
                .map(|p| normalize(p).trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let zh: Vec<String> = prepare(zh)
            .into_iter()
            .map(|p| p.split_whitespace().collect())
            .collect();
        Self {
            en_finder: finder(&prepare(en)),
            zh_finder: finder(&zh),
            skip_questions,
        }
    }

    pub fn found_in(&self, message: &Message) -> bool {
        if self.skip_questions && message.question {
            return false;
        }
        self.en_finder
            .iter()
            .flat_map(|f| f.find_overlapping_iter(message.norm.as_str()))
            .any(|m| found_en_at(&message.norm, m.start()))
            || self
                .zh_finder
                .iter()
                .flat_map(|f| f.find_overlapping_iter(message.joined.as_str()))
                .any(|m| found_zh_at(message, m.start(), m.end()))
    }
}

/// Whether the customer says the last answer did not help ("I already restarted it",
/// "still not working", 还是不行, 试过了): then the bot must not give it again.
pub fn says_not_helped(message: &Message) -> bool {
    static NOT_HELPED: std::sync::OnceLock<Cues> = std::sync::OnceLock::new();
    let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    NOT_HELPED
        .get_or_init(|| {
            Cues::new(
                &own(&[
                    "didn't help",
                    "did not help",
                    "doesn't help",
                    "does not help",
                    "not helpful",
                    "didn't work",
                    "did not work",
                    "doesn't work",
                    "does not work",
                    "still not working",
                    "still doesn't",
                    "still does not",
                    "still broken",
                    "still the same",
                    "already tried",
                    "already did",
                    "already done",
                    "already restarted",
                    "already reset",
                    "tried that",
                    "i tried",
                    "same problem",
                    "same answer",
                    "not what i asked",
                    "that's not it",
                    "no luck",
                    "no difference",
                    "didn't fix",
                    "did not fix",
                ]),
                &own(&[
                    "没用",
                    "没有 用",
                    "不管用",
                    "不行",
                    "还是 不行",
                    "试过",
                    "已经 试过",
                    "已经 重启",
                    "还是 一样",
                    "没 解决",
                    "没有 解决",
                    "答非所问",
                    "不是 这个",
                    "没 效果",
                    "还是 没",
                ]),
                false,
            )
        })
        .found_in(message)
}

/// English words that turn a cue after them around ("I'm not angry"); Chinese ones are
/// the sentiment lexicon's negators (不是投诉, 不用转人工).
const NEGATORS_EN: &[&str] = &[
    "not", "no", "never", "isn't", "wasn't", "don't", "didn't", "without",
];

fn negator(word: &str) -> bool {
    NEGATORS_EN.contains(&word) || word.ends_with("n't") || crate::lexicon::is_negator(word)
}

/// An automaton over the phrases, or none for an empty list.
fn finder(phrases: &[String]) -> Option<AhoCorasick> {
    if phrases.is_empty() {
        return None;
    }
    Some(AhoCorasick::new(phrases).expect("cue phrases are short enough for an automaton"))
}

/// An English cue found at byte `i` counts at the start of a word, not after a negation
/// among the three words before it.
fn found_en_at(norm: &str, i: usize) -> bool {
    let at_word_start = norm[..i]
        .chars()
        .next_back()
        .is_none_or(|c| !c.is_alphanumeric());
    at_word_start && !words(&norm[..i]).iter().rev().take(3).any(|w| negator(w))
}

/// A Chinese cue found at bytes `start..end` of the joined tokens counts when it begins
/// and ends at word boundaries (a run of whole words), not after a negation among the
/// two words before it.
fn found_zh_at(message: &Message, start: usize, end: usize) -> bool {
    let boundary = |at: usize| message.boundaries.binary_search(&at);
    match (boundary(start), boundary(end)) {
        (Ok(first), Ok(_)) => !message.tokens[..first]
            .iter()
            .rev()
            .take(2)
            .any(|w| negator(w)),
        _ => false,
    }
}

/// A question about how something works ("How do I cancel my subscription?",
/// "取消订阅之后录像还在吗", "运费谁出呀", "发西藏要几天"), asked directly or not
/// ("I just want to know how to switch plans", "想知道怎么改地址").
fn is_question(norm: &str) -> bool {
    let trimmed = norm.trim_end();
    trimmed.ends_with(['?', '？', '吗', '呢', '么', '呀'])
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
        || [
            "怎么办",
            "多久",
            "几天",
            "多少钱",
            "是否",
            "能否",
            "想知道",
            "想问一下",
            "to know how",
            "to know what",
            "to know if",
            "to know whether",
            "to know when",
            "wondering how",
            "wondering if",
            "wondering whether",
        ]
        .iter()
        .any(|asks| trimmed.contains(asks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cues(en: &[&str], zh: &[&str], skip_questions: bool) -> Cues {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Cues::new(&own(en), &own(zh), skip_questions)
    }

    fn found(cues: &Cues, text: &str) -> bool {
        cues.found_in(&Message::new(text))
    }

    #[test]
    fn english_cues_match_at_word_starts_and_not_after_negations() {
        let complaint = cues(&["complain"], &[], false);
        assert!(found(&complaint, "I'll file complaints"));
        assert!(found(&complaint, "I want to COMPLAIN."));
        assert!(!found(&complaint, "Not complaining, just asking"));
        assert!(!found(
            &cues(&["sue"], &[], false),
            "I have an issue with my card"
        ));
        let anger = cues(&["angry"], &[], false);
        assert!(!found(
            &anger,
            "I'm not angry, I just want to know how to switch plans"
        ));
        assert!(found(&anger, "I am really angry"));
    }

    #[test]
    fn chinese_cues_match_whole_words_and_not_after_negations() {
        let anger = cues(&[], &["垃圾"], false);
        assert!(found(&anger, "你们就是垃圾"));
        assert!(!found(&anger, "验证码在垃圾邮件里吗"));
        let complaint = cues(&[], &["投诉"], false);
        assert!(found(&complaint, "我要投诉"));
        assert!(!found(&complaint, "不是投诉哈，就想问下退款多久到账"));
        // a phrase of several words, written with or without spaces
        let human = cues(&[], &["转 人工"], false);
        assert!(found(&human, "请帮我转人工"));
    }

    #[test]
    fn a_list_can_skip_questions() {
        let churn = cues(&["cancel my subscription"], &["取消订阅"], true);
        assert!(found(&churn, "I will cancel my subscription today."));
        assert!(!found(&churn, "How do I cancel my subscription?"));
        assert!(!found(&churn, "取消订阅之后录像还在吗"));
        assert!(found(
            &cues(&["cancel my subscription"], &[], false),
            "How do I cancel my subscription?"
        ));
        for asks in [
            "不想要了退货，运费谁出呀",
            "发西藏一般要几天",
            "app登不上去了，怎么办",
            "I'm not angry, I just want to know how to switch plans",
            "想知道会员到期以后数据还在不在",
        ] {
            assert!(Message::new(asks).is_question(), "{asks}");
        }
        assert!(!Message::new("再不解决我就换别家了").is_question());
    }

    #[test]
    fn knows_when_an_answer_did_not_help() {
        for said in [
            "I already restarted the router",
            "that didn't help",
            "Still not working.",
            "还是不行",
            "试过了，没用",
        ] {
            assert!(says_not_helped(&Message::new(said)), "{said}");
        }
        for said in [
            "thanks, that helped",
            "How do I restart the hub?",
            "好的，谢谢",
        ] {
            assert!(!says_not_helped(&Message::new(said)), "{said}");
        }
    }

    #[test]
    fn blank_phrases_never_match() {
        let blank = cues(&["", "  "], &[""], false);
        assert!(!found(&blank, "anything at all"));
        assert!(!found(&blank, ""));
    }
}
