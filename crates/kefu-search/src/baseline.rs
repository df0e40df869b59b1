//! The textbook baselines that Chinese ranking must beat: Okapi BM25 (k1 = 1.2,
//! b = 0.75) over the overlapping character bigrams of each document's title and text,
//! with or without the single characters too; no segmentation, no stop words, no fields.

use std::collections::HashMap;

use kefu_nlp::text::normalize;

use crate::Document;

const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Which character n-grams a [`CharBm25`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grams {
    Bigrams,
    UnigramsAndBigrams,
}

impl Grams {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Bigrams => "BM25 over character bigrams",
            Self::UnigramsAndBigrams => "BM25 over character unigrams and bigrams",
        }
    }
}

/// A BM25 index over character n-grams.
pub struct CharBm25 {
    grams: Grams,
    ids: Vec<String>,
    /// N-gram counts of each document, and its length in n-grams.
    docs: Vec<(HashMap<String, u32>, usize)>,
    df: HashMap<String, u32>,
    average_length: f64,
}

/// The character bigrams of each run of letters, digits or Han characters (a run of one
/// character is its own gram), and with `Grams::UnigramsAndBigrams` every character too.
fn grams_of(text: &str, grams: Grams) -> Vec<String> {
    let mut out = Vec::new();
    for run in normalize(text).split(|c: char| !c.is_alphanumeric()) {
        let chars: Vec<char> = run.chars().collect();
        if chars.len() == 1 || grams == Grams::UnigramsAndBigrams {
            out.extend(chars.iter().map(char::to_string));
        }
        out.extend(chars.windows(2).map(|pair| pair.iter().collect()));
    }
    out
}

impl CharBm25 {
    pub fn new(documents: &[Document], grams: Grams) -> Self {
        let mut df: HashMap<String, u32> = HashMap::new();
        let docs: Vec<(HashMap<String, u32>, usize)> = documents
            .iter()
            .map(|d| {
                let found = grams_of(&format!("{}\n{}", d.title, d.text), grams);
                let mut counts: HashMap<String, u32> = HashMap::new();
                for g in &found {
                    *counts.entry(g.clone()).or_default() += 1;
                }
                for g in counts.keys() {
                    *df.entry(g.clone()).or_default() += 1;
                }
                (counts, found.len())
            })
            .collect();
        let average_length =
            docs.iter().map(|(_, len)| *len as f64).sum::<f64>() / docs.len().max(1) as f64;
        Self {
            grams,
            ids: documents.iter().map(|d| d.id.clone()).collect(),
            docs,
            df,
            average_length,
        }
    }

    /// The ids of the `k` best documents for a query, best first.
    pub fn search(&self, query: &str, k: usize) -> Vec<&str> {
        let mut grams = grams_of(query, self.grams);
        grams.sort();
        grams.dedup();
        let n = self.docs.len() as f64;
        let mut scored: Vec<(usize, f64)> = self
            .docs
            .iter()
            .enumerate()
            .map(|(i, (counts, len))| {
                let norm = K1 * (1.0 - B + B * *len as f64 / self.average_length.max(1.0));
                let score = grams
                    .iter()
                    .filter_map(|g| Some((counts.get(g)?, self.df[g])))
                    .map(|(&tf, df)| {
                        let idf = (1.0 + (n - df as f64 + 0.5) / (df as f64 + 0.5)).ln();
                        idf * tf as f64 * (K1 + 1.0) / (tf as f64 + norm)
                    })
                    .sum();
                (i, score)
            })
            .filter(|&(_, score)| score > 0.0)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
            .into_iter()
            .take(k)
            .map(|(i, _)| self.ids[i].as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_shared_bigrams_weighted_by_rarity() {
        let docs = [
            Document::new("return", "退货流程", "七天内可以申请退货退款"),
            Document::new("invoice", "开发票", "订单完成后可以申请开具发票"),
        ];
        let bigrams = CharBm25::new(&docs, Grams::Bigrams);
        assert_eq!(
            bigrams.search("怎么申请退货", 10),
            vec!["return", "invoice"]
        );
        assert_eq!(bigrams.search("发票怎么开", 1), vec!["invoice"]);
        assert!(bigrams.search("天气", 10).is_empty());
        // One shared character is no bigram, but it is a unigram.
        assert!(bigrams.search("票据", 10).is_empty());
        let unigrams = CharBm25::new(&docs, Grams::UnigramsAndBigrams);
        assert_eq!(unigrams.search("票据", 10), vec!["invoice"]);
    }
}
