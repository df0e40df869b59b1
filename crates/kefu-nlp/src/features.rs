//! Sparse lexical features: TF-IDF over word 1-2-grams, character n-grams inside words
//! (Latin) and character 1..k-grams over runs of Han characters (where jieba's
//! segmentation is unreliable), plus '!', '?' and emoji as symbols.
//!
//! Terms are identified by a 64-bit FNV-1a hash (stable across platforms and builds), so a
//! vocabulary is a map from hash to column and needs no strings.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::text::{is_cjk, normalize, words};

/// How texts become terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeatureConfig {
    /// Word n-grams up to this length (1 or 2).
    pub word_ngrams: usize,
    /// Character n-gram lengths inside Latin words (padded with a space at both ends).
    pub char_min: usize,
    pub char_max: usize,
    /// Character n-grams of length cjk_min..=cjk_max over runs of Han characters.
    pub cjk_min: usize,
    pub cjk_max: usize,
    /// Weight of the word block and of the character block after each is L2-normalised.
    pub word_weight: f32,
    pub char_weight: f32,
    /// Terms seen in fewer training texts are dropped.
    pub min_df: u32,
    /// Also emit negated copies ("not" + word) of the three words after a negation.
    #[serde(default)]
    pub negation: bool,
    /// Also emit the Chinese sentiment lexicon's reading ([`crate::lexicon`]): a term per
    /// praising or blaming word (after negators and degree words) and one for the sum.
    #[serde(default)]
    pub lexicon: bool,
}

/// English negations that flip the polarity of the words after them.
fn is_negation(w: &str) -> bool {
    w.ends_with("n't")
        || matches!(
            w,
            "not"
                | "no"
                | "never"
                | "nothing"
                | "nobody"
                | "none"
                | "nor"
                | "cannot"
                | "without"
                | "hardly"
        )
}

/// ASCII emoticons, matched in the raw text.
const EMOTICONS: &[&str] = &[
    ":)", ":-)", ":(", ":-(", ":d", ";)", ";-)", ":/", ":p", ":'(", "<3", ":o", "xd",
];

const WORD: u8 = 0;
const CHAR: u8 = 1;

fn fnv(seed: u8, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(seed);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            eat(0xff);
        }
        for &b in *p {
            eat(b);
        }
    }
    h
}

/// One text's terms: (hash, group) pairs with repetitions.
pub(crate) fn terms(text: &str, cfg: &FeatureConfig) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let ws = words(text);
    let mut negated = 0;
    for (i, w) in ws.iter().enumerate() {
        out.push((fnv(b'w', &[w.as_bytes()]), WORD));
        if cfg.negation {
            if negated > 0 {
                out.push((fnv(b'n', &[w.as_bytes()]), WORD));
                negated -= 1;
            }
            if is_negation(w) {
                negated = 3;
            }
        }
        if cfg.word_ngrams >= 2 {
            if let Some(next) = ws.get(i + 1) {
                out.push((fnv(b'b', &[w.as_bytes(), next.as_bytes()]), WORD));
            }
        }
    }
    if cfg.lexicon {
        lexicon_terms(&ws, &mut out);
    }
    let norm = normalize(text);
    for e in EMOTICONS {
        if norm.contains(e) {
            out.push((fnv(b'e', &[e.as_bytes()]), WORD));
        }
    }
    let mut buf = [0u8; 4];
    for c in norm.chars() {
        if c == '!'
            || c == '?'
            || (!c.is_ascii() && !c.is_alphanumeric() && !c.is_whitespace() && is_symbol(c))
        {
            out.push((fnv(b's', &[c.encode_utf8(&mut buf).as_bytes()]), WORD));
        }
    }
    let chars: Vec<char> = norm.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_cjk(c) {
            let mut j = i;
            while j < chars.len() && is_cjk(chars[j]) {
                j += 1;
            }
            let run = &chars[i..j];
            for n in cfg.cjk_min.max(1)..=cfg.cjk_max.min(run.len()) {
                for g in run.windows(n) {
                    let s: String = g.iter().collect();
                    out.push((fnv(b'h', &[s.as_bytes()]), CHAR));
                }
            }
            i = j;
        } else if c.is_alphanumeric() {
            let mut j = i;
            while j < chars.len() && chars[j].is_alphanumeric() && !is_cjk(chars[j]) {
                j += 1;
            }
            if cfg.char_max > 0 {
                let mut padded = Vec::with_capacity(j - i + 2);
                padded.push(' ');
                padded.extend_from_slice(&chars[i..j]);
                padded.push(' ');
                for n in cfg.char_min..=cfg.char_max.min(padded.len()) {
                    for g in padded.windows(n) {
                        let s: String = g.iter().collect();
                        out.push((fnv(b'c', &[s.as_bytes()]), CHAR));
                    }
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The lexicon's reading as word terms: "pos"/"neg" once per unit of strength of each
/// evaluative word, "negated" per word a negator turned around, and the sign of the sum.
fn lexicon_terms(words: &[String], out: &mut Vec<(u64, u8)>) {
    let polarities = crate::lexicon::polarities(words);
    let mut sum = 0.0;
    for p in &polarities {
        sum += p.value;
        let term: &[u8] = if p.value > 0.0 { b"pos" } else { b"neg" };
        for _ in 0..(p.value.abs().round() as usize).max(1) {
            out.push((fnv(b'l', &[term]), WORD));
        }
        if p.negated {
            out.push((fnv(b'l', &[b"negated"]), WORD));
        }
    }
    if sum != 0.0 {
        let term: &[u8] = if sum > 0.0 { b"sum+" } else { b"sum-" };
        out.push((fnv(b'l', &[term]), WORD));
    }
}

/// Emoji and other pictographic or dingbat symbols carry sentiment; other punctuation is noise.
fn is_symbol(c: char) -> bool {
    matches!(c as u32,
        0x2600..=0x27BF | 0x1F300..=0x1FAFF | 0x2190..=0x21FF | 0x2B00..=0x2BFF)
}

/// A fitted TF-IDF vocabulary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Vectorizer {
    pub config: FeatureConfig,
    /// term hash -> column; stored in column order, so that a retrain gives the same bytes
    #[serde(serialize_with = "in_column_order")]
    pub vocab: HashMap<u64, u32>,
    /// per column: inverse document frequency
    pub idf: Vec<f32>,
    /// per column: block (word / char)
    pub group: Vec<u8>,
}

fn in_column_order<S: serde::Serializer>(
    vocab: &HashMap<u64, u32>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&u64, &u32)> = vocab.iter().collect();
    entries.sort_unstable_by_key(|&(_, column)| column);
    serializer.collect_map(entries)
}

/// A sparse row: (column, value), sorted by column.
pub(crate) type SparseRow = Vec<(u32, f32)>;

impl Vectorizer {
    /// Builds the vocabulary from training texts (document frequencies, min_df).
    pub fn fit(texts: &[&str], config: FeatureConfig) -> Self {
        let mut df: HashMap<(u64, u8), u32> = HashMap::new();
        let all: Vec<Vec<(u64, u8)>> = {
            use rayon::prelude::*;
            texts.par_iter().map(|t| terms(t, &config)).collect()
        };
        for ts in &all {
            let mut uniq = ts.clone();
            uniq.sort_unstable();
            uniq.dedup();
            for t in uniq {
                *df.entry(t).or_default() += 1;
            }
        }
        let n = texts.len() as f32;
        let mut kept: Vec<((u64, u8), u32)> = df
            .into_iter()
            .filter(|&(_, d)| d >= config.min_df)
            .collect();
        kept.sort_unstable();
        let mut vocab = HashMap::with_capacity(kept.len());
        let mut idf = Vec::with_capacity(kept.len());
        let mut group = Vec::with_capacity(kept.len());
        for (col, ((h, g), d)) in kept.into_iter().enumerate() {
            vocab.insert(h, col as u32);
            idf.push(((1.0 + n) / (1.0 + d as f32)).ln() + 1.0);
            group.push(g);
        }
        Self {
            config,
            vocab,
            idf,
            group,
        }
    }

    pub fn len(&self) -> usize {
        self.idf.len()
    }

    /// TF-IDF row with sublinear tf; each block is L2-normalised and scaled by its weight.
    pub fn transform(&self, text: &str) -> SparseRow {
        let mut counts: HashMap<u32, f32> = HashMap::new();
        for (h, _) in terms(text, &self.config) {
            if let Some(&col) = self.vocab.get(&h) {
                *counts.entry(col).or_default() += 1.0;
            }
        }
        let mut row: SparseRow = counts
            .into_iter()
            .map(|(col, c)| (col, (1.0 + c.ln()) * self.idf[col as usize]))
            .collect();
        row.sort_unstable_by_key(|&(c, _)| c);
        let mut norms = [0f32; 2];
        for &(c, v) in &row {
            norms[self.group[c as usize] as usize] += v * v;
        }
        let scale = [
            if norms[0] > 0.0 {
                self.config.word_weight / norms[0].sqrt()
            } else {
                0.0
            },
            if norms[1] > 0.0 {
                self.config.char_weight / norms[1].sqrt()
            } else {
                0.0
            },
        ];
        for (c, v) in row.iter_mut() {
            *v *= scale[self.group[*c as usize] as usize];
        }
        row
    }

    /// Keeps only the given columns (in the given order), renumbering them 0..n.
    pub fn retain(&mut self, keep: &[u32]) {
        let mut new_col = vec![u32::MAX; self.len()];
        for (i, &c) in keep.iter().enumerate() {
            new_col[c as usize] = i as u32;
        }
        self.vocab.retain(|_, c| new_col[*c as usize] != u32::MAX);
        for c in self.vocab.values_mut() {
            *c = new_col[*c as usize];
        }
        self.idf = keep.iter().map(|&c| self.idf[c as usize]).collect();
        self.group = keep.iter().map(|&c| self.group[c as usize]).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FeatureConfig {
        FeatureConfig {
            word_ngrams: 2,
            char_min: 2,
            char_max: 4,
            cjk_min: 1,
            cjk_max: 3,
            word_weight: 1.0,
            char_weight: 1.0,
            min_df: 1,
            negation: true,
            lexicon: true,
        }
    }

    #[test]
    fn rows_are_normalised_per_block() {
        let v = Vectorizer::fit(&["my card is lost", "我的银行卡丢了", "card card"], cfg());
        let row = v.transform("My CARD is lost!");
        assert!(!row.is_empty());
        let mut norms = [0f32; 2];
        for &(c, x) in &row {
            norms[v.group[c as usize] as usize] += x * x;
        }
        assert!(
            (norms[0] - 1.0).abs() < 1e-4 && (norms[1] - 1.0).abs() < 1e-4,
            "{norms:?}"
        );
        assert!(v.transform("zzz qqq").is_empty());
        let zh = v.transform("银行卡丢了");
        assert!(zh.len() >= 5, "{zh:?}");
        // negation marks the words after it; emoticons are terms
        let neg = terms("not good :)", &cfg());
        assert!(
            neg.contains(&(fnv(b'n', &[b"good"]), WORD))
                && neg.contains(&(fnv(b'e', &[b":)"]), WORD))
        );
        assert!(!terms("good", &cfg()).contains(&(fnv(b'n', &[b"good"]), WORD)));
        // the lexicon's reading: a blaming word and a negative sum
        let lex = terms("质量很差", &cfg());
        assert!(
            lex.contains(&(fnv(b'l', &[b"neg"]), WORD))
                && lex.contains(&(fnv(b'l', &[b"sum-"]), WORD))
        );
        assert!(!terms("几点退房", &cfg()).contains(&(fnv(b'l', &[b"sum-"]), WORD)));
    }
}
