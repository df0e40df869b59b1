//! Confidence of a retrieved passage and grounded answers quoted from passages.

use std::collections::HashMap;

use crate::analysis::{analyzer, distinct_terms};
use crate::sentences::{joins_without_space, split_sentences, word_count};
use crate::{Answer, Evidence, Passage};

/// A passage whose confidence reaches this answers the query; below it, the caller
/// should treat the query as "nothing relevant found".
pub const CONFIDENCE_THRESHOLD: f32 = 0.5;

/// Logistic model of "the passage answers the query" over the query-passage cosine
/// similarity and the IDF-weighted share of query terms found in the passage:
/// `(bias, cosine weight, coverage weight)`, for English and Chinese queries.
const HYBRID_MODEL: [(f32, f32, f32); 2] = [(-6.0, 8.0, 4.0), (-6.0, 8.0, 4.0)];
/// The same without embeddings: `(bias, coverage weight)`.
const LEXICAL_MODEL: [(f32, f32); 2] = [(-4.0, 7.0), (-4.0, 7.0)];

/// Confidence in [0, 1] that a passage answers the query.
pub(crate) fn confidence(e: &Evidence) -> f32 {
    let lang = usize::from(e.chinese);
    let z = match e.cosine {
        Some(c) => HYBRID_MODEL[lang].0 + HYBRID_MODEL[lang].1 * c + HYBRID_MODEL[lang].2 * e.coverage,
        None => LEXICAL_MODEL[lang].0 + LEXICAL_MODEL[lang].1 * e.coverage,
    };
    1.0 / (1.0 + (-z).exp())
}

/// At most this many sentences are quoted.
const MAX_SENTENCES: usize = 3;
/// Further sentences are quoted only while the answer stays within this size.
const MAX_ANSWER_WORDS: usize = 80;

/// Builds an answer from the best passage: its sentences that share the most
/// (locally rare) terms with the query, quoted verbatim in passage order. When no
/// sentence shares a term (a paraphrase found by the embeddings), the passage's
/// opening sentences are quoted. `None` when there is no passage or it has no text.
pub fn compose_answer(query: &str, passages: &[Passage]) -> Option<Answer> {
    let top = passages.first()?;
    let sentences = split_sentences(&top.text);
    if sentences.is_empty() {
        return None;
    }
    let mut analyzer = analyzer(false, true);
    let query_terms = distinct_terms(&mut analyzer, query);
    let sentence_terms: Vec<Vec<String>> = sentences.iter().map(|s| distinct_terms(&mut analyzer, s)).collect();
    // terms rare among the passage's sentences say more about which one answers
    let mut df: HashMap<&str, usize> = HashMap::new();
    for terms in &sentence_terms {
        for t in terms {
            *df.entry(t.as_str()).or_default() += 1;
        }
    }
    let n = sentences.len() as f32;
    let scores: Vec<f32> = sentence_terms
        .iter()
        .map(|terms| {
            query_terms
                .iter()
                .filter(|q| terms.contains(q))
                .map(|q| (1.0 + n / df[q.as_str()] as f32).ln())
                .sum()
        })
        .collect();

    let mut order: Vec<usize> = (0..sentences.len()).collect();
    if scores.iter().any(|&s| s > 0.0) {
        order.retain(|&i| scores[i] > 0.0);
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    }
    let mut chosen: Vec<usize> = Vec::new();
    let mut words = 0;
    for i in order {
        let w = word_count(sentences[i]);
        if !chosen.is_empty() && (chosen.len() == MAX_SENTENCES || words + w > MAX_ANSWER_WORDS) {
            break;
        }
        chosen.push(i);
        words += w;
    }
    chosen.sort_unstable();
    let mut text = String::new();
    for i in chosen {
        let s = sentences[i];
        if !text.is_empty() && !joins_without_space(&text, s) {
            text.push(' ');
        }
        text.push_str(s);
    }
    Some(Answer { text, sources: vec![top.clone()], confident: top.confidence >= CONFIDENCE_THRESHOLD })
}
