//! Confidence of a retrieved passage and grounded answers quoted from passages.

use std::collections::HashMap;
use std::sync::LazyLock;

use kefu_nlp::text::normalize;
use tantivy::tokenizer::TextAnalyzer;

use crate::analysis::{analyzer, distinct_terms};
use crate::sentences::{joins_without_space, split_sentences_by_line, word_count};
use crate::{Answer, Evidence, Passage};

/// A passage whose confidence reaches this answers the query; below it, the caller
/// should treat the query as "nothing relevant found". Set a little above the
/// models' even odds: a wrong answer costs more than a hand-off to a person.
pub const CONFIDENCE_THRESHOLD: f32 = 0.6;

/// Logistic models of "the passage answers the query", as weights of
/// `[1, cosine, coverage, char_coverage]` (see [`Evidence`]), indexed by query
/// language (English, Chinese): MiniLM's cosine for English, kefu's Chinese encoder's for
/// Chinese, where lexical overlap is measured on characters, which survives segmentation
/// differences ("开发票" vs "发票"). Fitted with
/// `cargo run --release -p kefu-search --example calibrate_confidence`.
const HYBRID_MODEL: [[f32; 4]; 2] = [[-5.01, 11.42, 4.18, 0.0], [-5.12, 4.18, 0.0, 9.56]];
/// The same for an index without embeddings.
const LEXICAL_MODEL: [[f32; 4]; 2] = [[-2.41, 0.0, 7.54, 0.0], [-4.72, 0.0, 0.0, 11.02]];

/// Confidence in [0, 1] that a passage answers the query.
pub(crate) fn confidence(e: &Evidence) -> f32 {
    let model = if e.cosine.is_some() {
        &HYBRID_MODEL
    } else {
        &LEXICAL_MODEL
    };
    let w = model[usize::from(e.chinese)];
    let z = w[0] + w[1] * e.cosine.unwrap_or(0.0) + w[2] * e.coverage + w[3] * e.char_coverage;
    1.0 / (1.0 + (-z).exp())
}

/// At most this many sentences are quoted.
const MAX_SENTENCES: usize = 3;
/// Further sentences are quoted only while the answer stays within this size.
const MAX_ANSWER_WORDS: usize = 80;
/// Weight of a query term that the passage's title already contains: the passage is
/// about it, so it says little about which sentence answers.
const TITLE_TERM_WEIGHT: f32 = 0.25;
/// Factor for a query term that opens the sentence: "Pro ($18 a month): …" is about Pro.
const LEADING_TERM_FACTOR: f32 = 2.0;

/// Kinds of answer a question asks for, recognised by its wording; a sentence that
/// gives that kind of answer counts as matching one more query term.
#[derive(Clone, Copy)]
enum Cue {
    /// "how much", "多少钱": sentences with an amount of money.
    Money,
    /// "how long", "多久": sentences with an amount of time.
    Duration,
}

impl Cue {
    const ALL: [Cue; 2] = [Cue::Money, Cue::Duration];

    /// The pseudo-term standing for the cue among a sentence's terms.
    fn term(self) -> &'static str {
        match self {
            Cue::Money => "\u{1}money",
            Cue::Duration => "\u{1}duration",
        }
    }

    fn asked(self, query: &str) -> bool {
        let words: &[&str] = match self {
            Cue::Money => &[
                "how much",
                "cost",
                "price",
                "fee",
                "charge",
                "expensive",
                "cheap",
                "多少钱",
                "价格",
                "价钱",
                "费用",
                "收费",
                "资费",
                "贵",
                "便宜",
                "几块",
            ],
            Cue::Duration => &[
                "how long",
                "how soon",
                "how many days",
                "when will",
                "多久",
                "多长时间",
                "几天",
                "什么时候",
                "多快",
                "几个工作日",
            ],
        };
        words.iter().any(|w| query.contains(w))
    }

    fn answered(self, sentence: &str) -> bool {
        let has_digit = sentence.chars().any(|c| c.is_ascii_digit());
        match self {
            Cue::Money => {
                sentence.contains(['$', '¥', '€', '£', '￥'])
                    || (has_digit && sentence.contains(['元', '块']))
            }
            Cue::Duration => {
                let units = [
                    "minute",
                    "hour",
                    "day",
                    "week",
                    "month",
                    "year",
                    "分钟",
                    "小时",
                    "天",
                    "周",
                    "个月",
                    "年",
                    "工作日",
                ];
                has_digit && units.iter().any(|u| sentence.contains(u))
            }
        }
    }
}

/// Built once: building one makes its set of stop words, a clone shares it.
static ANALYZER: LazyLock<TextAnalyzer> = LazyLock::new(|| analyzer(false, true));

/// Builds an answer from the best passage, quoting its sentences verbatim in passage
/// order. The first is the sentence with the most query information: query terms
/// weighted by how rare they are among the passage's sentences, less when the title
/// already has them, more when they open the sentence, and one more term when the
/// question asks for a price or a duration and the sentence gives one. Then, while
/// the answer stays short, sentences that add query terms not covered yet. When no
/// sentence shares a term with the query (a paraphrase found by the embeddings), the
/// passage's opening sentences are quoted. `None` without a passage or text.
pub fn compose_answer(query: &str, passages: &[Passage]) -> Option<Answer> {
    let top = passages.first()?;
    let sentences = split_sentences_by_line(&top.text);
    if sentences.is_empty() {
        return None;
    }
    let mut analyzer = ANALYZER.clone();
    let lowered = normalize(query);
    let cues: Vec<Cue> = Cue::ALL.into_iter().filter(|c| c.asked(&lowered)).collect();
    let mut query_terms = distinct_terms(&mut analyzer, query);
    query_terms.extend(cues.iter().map(|c| c.term().to_string()));
    let title_terms = distinct_terms(&mut analyzer, &top.title);
    let sentence_terms: Vec<Vec<String>> = sentences
        .iter()
        .map(|(_, s)| {
            let mut terms = distinct_terms(&mut analyzer, s);
            terms.extend(
                cues.iter()
                    .filter(|c| c.answered(s))
                    .map(|c| c.term().to_string()),
            );
            terms
        })
        .collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for terms in &sentence_terms {
        for t in terms {
            *df.entry(t.as_str()).or_default() += 1;
        }
    }
    let n = sentences.len() as f32;
    let weight = |t: &str| {
        let idf = df.get(t).map_or(0.0, |&d| (1.0 + n / d as f32).ln());
        if title_terms.iter().any(|x| x == t) {
            idf * TITLE_TERM_WEIGHT
        } else {
            idf
        }
    };
    // a term that is neither a cue nor in the title: only these justify quoting more
    let primary = |t: &str| !t.starts_with('\u{1}') && !title_terms.iter().any(|x| x == t);

    let mut chosen: Vec<usize> = Vec::new();
    let mut covered: Vec<&str> = Vec::new();
    let mut words = 0;
    while chosen.len() < MAX_SENTENCES {
        let score = |i: usize| -> f32 {
            let terms = &sentence_terms[i];
            let new: Vec<&String> = query_terms
                .iter()
                .filter(|q| terms.contains(q) && !covered.contains(&q.as_str()))
                .collect();
            if !chosen.is_empty() && !new.iter().any(|q| primary(q)) {
                return 0.0;
            }
            new.iter()
                .map(|q| {
                    weight(q)
                        * if terms.first() == Some(*q) {
                            LEADING_TERM_FACTOR
                        } else {
                            1.0
                        }
                })
                .sum()
        };
        let best = (0..sentences.len())
            .filter(|i| !chosen.contains(i))
            .map(|i| (i, score(i)))
            .filter(|&(_, g)| g > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((i, _)) = best else { break };
        let w = word_count(sentences[i].1);
        if !chosen.is_empty() && words + w > MAX_ANSWER_WORDS {
            break;
        }
        chosen.push(i);
        words += w;
        covered.extend(
            query_terms
                .iter()
                .filter(|q| sentence_terms[i].contains(q))
                .map(String::as_str),
        );
    }
    if chosen.is_empty() {
        for (i, (_, s)) in sentences.iter().enumerate().take(2) {
            let w = word_count(s);
            if !chosen.is_empty() && words + w > MAX_ANSWER_WORDS {
                break;
            }
            chosen.push(i);
            words += w;
        }
    }
    chosen.sort_unstable();
    let mut text = String::new();
    let mut last_line = None;
    for i in chosen {
        let (line, s) = sentences[i];
        if let Some(previous) = last_line {
            if previous != line {
                text.push('\n');
            } else if !joins_without_space(&text, s) {
                text.push(' ');
            }
        }
        text.push_str(s);
        last_line = Some(line);
    }
    Some(Answer {
        text,
        sources: vec![top.clone()],
        confident: top.confidence >= CONFIDENCE_THRESHOLD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sentences::split_sentences;

    fn passage(doc_id: &str, text: &str, confidence: f32) -> Passage {
        Passage {
            chunk_id: format!("{doc_id}#0"),
            doc_id: doc_id.into(),
            title: String::new(),
            text: text.into(),
            score: 1.0,
            confidence,
        }
    }

    /// The answer to `query` from a single passage.
    fn answer_from(query: &str, text: &str, confidence: f32) -> Answer {
        compose_answer(query, &[passage("doc", text, confidence)]).expect("answer")
    }

    #[test]
    fn quotes_the_most_relevant_sentences_verbatim() {
        let text = "We offer four plans. Plan: Basic; Monthly: $8\nPlan: Pro; Monthly: $18\nPaying yearly gives you two months free. \
Schools get 30% off.";
        let answer = answer_from("How much is the Pro plan per month?", text, 0.9);
        assert_eq!(answer.text, "Plan: Pro; Monthly: $18");
        assert!(answer.confident);
        assert_eq!(answer.sources.len(), 1);
        for s in split_sentences(&answer.text) {
            assert!(text.contains(s), "{s:?} not in the passage");
        }
    }

    #[test]
    fn chinese_answers_keep_chinese_punctuation_and_no_spaces() {
        let text = "订单在一个工作日内发出。普通快递 3 到 6 个工作日送达。加急快递 1 到 2 个工作日送达。发票随包裹寄出。";
        let answer = answer_from("加急快递几天到", text, 0.3);
        assert_eq!(answer.text, "加急快递 1 到 2 个工作日送达。");
        assert!(!answer.confident);
        for s in split_sentences(&answer.text) {
            assert!(text.contains(s));
        }
    }

    #[test]
    fn sentences_on_separate_lines_stay_on_separate_lines() {
        let text = "To reset your password:\n1. Open the sign-in page.\n2. Choose Forgot password and enter your email.";
        assert_eq!(
            answer_from("forgot password email reset", text, 0.9).text,
            "To reset your password:\n2. Choose Forgot password and enter your email."
        );
    }

    #[test]
    fn a_paraphrase_without_shared_terms_quotes_the_opening() {
        let text = "Card refunds take 5 to 10 business days. Wallet refunds are faster. Contact us if nothing arrives.";
        assert_eq!(
            answer_from("when do I see my money again", text, 0.7).text,
            "Card refunds take 5 to 10 business days. Wallet refunds are faster."
        );
    }

    #[test]
    fn no_passage_no_answer() {
        assert!(compose_answer("anything", &[]).is_none());
        assert!(compose_answer("anything", &[passage("empty", " \n ", 0.9)]).is_none());
    }

    #[test]
    fn confidence_grows_with_evidence() {
        let weak = confidence(&Evidence {
            cosine: Some(0.1),
            coverage: 0.0,
            char_coverage: 0.0,
            chinese: false,
        });
        let strong = confidence(&Evidence {
            cosine: Some(0.7),
            coverage: 1.0,
            char_coverage: 0.0,
            chinese: false,
        });
        assert!(weak < 0.05 && strong > 0.95, "{weak} {strong}");
        let zh = confidence(&Evidence {
            cosine: None,
            coverage: 0.2,
            char_coverage: 1.0,
            chinese: true,
        });
        assert!(zh > CONFIDENCE_THRESHOLD);
    }
}
