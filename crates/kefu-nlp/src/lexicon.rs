//! The Chinese sentiment lexicon (`assets/zh_sentiment_lexicon.tsv`, written for kefu):
//! evaluative words with a polarity and strength, negators and degree words, over jieba's
//! words. Domain-general words (好, 失望, 不值, 退货) carry sentiment into domains the
//! training reviews never saw, where the learned terms of food delivery say nothing.

use std::collections::HashMap;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    /// Polarity times strength: +1/+2 praise, -1/-2 blame.
    Polar(f32),
    Negator,
    /// Multiplies the next evaluative word.
    Degree(f32),
}

fn entries() -> &'static HashMap<&'static str, Entry> {
    static ENTRIES: OnceLock<HashMap<&'static str, Entry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        include_str!("../assets/zh_sentiment_lexicon.tsv")
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let (word, kind, weight) = (fields.next()?, fields.next()?, fields.next()?);
                let weight: f32 = weight.trim().parse().ok()?;
                let entry = match kind {
                    "pos" => Entry::Polar(weight),
                    "neg" => Entry::Polar(-weight),
                    "negator" => Entry::Negator,
                    "degree" => Entry::Degree(weight),
                    _ => return None,
                };
                Some((word, entry))
            })
            .collect()
    })
}

/// How many words before an evaluative word a negator or degree word still applies to.
const REACH: usize = 2;

/// The evaluative words of a segmented message, each with its polarity after the
/// negators (flip) and degree words (scale) among the words just before it: 不好 -1,
/// 非常好 +2, 不太满意 -1. Words outside the lexicon are skipped.
pub(crate) fn polarities(words: &[String]) -> Vec<Polarity> {
    let table = entries();
    let mut out = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let Some(Entry::Polar(value)) = table.get(word.as_str()) else {
            continue;
        };
        let mut value = *value;
        let mut negated = false;
        for before in words[i.saturating_sub(REACH)..i].iter().rev() {
            match table.get(before.as_str()) {
                Some(Entry::Negator) => negated = !negated,
                Some(Entry::Degree(scale)) => value *= scale,
                _ => {}
            }
        }
        out.push(Polarity {
            value: if negated { -value } else { value },
            negated,
        });
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Polarity {
    pub value: f32,
    /// Turned around by a negator before it.
    pub negated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::words;

    fn total(text: &str) -> f32 {
        polarities(&words(text)).iter().map(|p| p.value).sum()
    }

    #[test]
    fn the_lexicon_loads_with_every_kind() {
        let table = entries();
        assert!(table.len() > 1000, "{}", table.len());
        assert_eq!(table.get("没有"), Some(&Entry::Negator));
        assert!(matches!(table.get("非常"), Some(Entry::Degree(_))));
    }

    #[test]
    fn polarity_follows_negators_and_degree_words() {
        assert!(total("这家酒店很干净，服务也好") > 0.0);
        assert!(total("质量太差了，非常失望") < 0.0);
        assert!(total("一点都不好") < 0.0);
        assert!(total("味道不错") > 0.0);
        assert!(total("房间不干净") < 0.0);
        assert_eq!(total("请问几点退房"), 0.0);
    }
}
