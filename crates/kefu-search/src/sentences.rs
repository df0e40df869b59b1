//! Sentence-level helpers shared by chunking and answer composition: CJK detection,
//! a size measure that treats English words and Chinese characters alike, and a
//! sentence splitter that understands both scripts.

use kefu_nlp::text::is_cjk;

/// Size of a text in "words": runs of letters/digits count one each, CJK characters
/// count one half each (rounded up).
pub(crate) fn word_count(text: &str) -> usize {
    let mut words = 0usize;
    let mut cjk = 0usize;
    let mut in_word = false;
    for c in text.chars() {
        if is_cjk(c) {
            cjk += 1;
            in_word = false;
        } else if c.is_alphanumeric() {
            if !in_word {
                words += 1;
                in_word = true;
            }
        } else if !(in_word && (c == '\'' || c == '’' || c == '-')) {
            in_word = false;
        }
    }
    words + cjk.div_ceil(2)
}

/// True for Han characters and CJK / full-width punctuation.
fn is_cjk_or_punct(c: char) -> bool {
    is_cjk(c) || matches!(c as u32, 0x3000..=0x303F | 0xFF00..=0xFFEF)
}

/// Whether two pieces of text are joined without a space: Chinese text (and its
/// punctuation) on both sides of the join.
pub(crate) fn joins_without_space(before: &str, after: &str) -> bool {
    before.chars().last().is_some_and(is_cjk_or_punct)
        && after.chars().next().is_some_and(is_cjk_or_punct)
}

/// Abbreviations after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "st", "no", "approx", "incl", "min", "max",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
];

fn ends_with_abbreviation(before: &str) -> bool {
    let last = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_lowercase();
    ABBREVIATIONS.contains(&last.as_str())
        || (last.chars().count() == 1 && last.chars().all(|c| c.is_alphabetic()))
}

/// Splits text into sentences. Line breaks always end a sentence (list items, table
/// rows); `。！？；!?` end one; `.` ends one when followed by whitespace or the end and
/// not preceded by a known abbreviation or an initial. Closing quotes and brackets
/// stay with their sentence. Returned sentences are trimmed, non-empty substrings
/// of the input.
pub(crate) fn split_sentences(text: &str) -> Vec<&str> {
    split_sentences_by_line(text)
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// Like [`split_sentences`], with the index of the line each sentence is on.
pub(crate) fn split_sentences_by_line(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let mut sentences = Vec::new();
        split_line(line, &mut sentences);
        out.extend(sentences.into_iter().map(|s| (n, s)));
    }
    out
}

fn split_line<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let boundary = match c {
            '。' | '！' | '？' | '；' | '!' | '?' => true,
            '.' => {
                let next = chars.get(i + 1).map(|&(_, n)| n);
                let at_end = next.is_none_or(|n| n.is_whitespace() || is_closing(n) || is_cjk(n));
                let before = &line[start..pos];
                let list_marker = {
                    let t = before.trim();
                    !t.is_empty() && t.chars().all(|d| d.is_ascii_digit())
                };
                at_end && !list_marker && !ends_with_abbreviation(before)
            }
            _ => false,
        };
        if boundary {
            // keep following terminators and closing quotes/brackets with this sentence
            let mut j = i + 1;
            while j < chars.len()
                && (is_closing(chars[j].1)
                    || matches!(chars[j].1, '。' | '！' | '？' | '!' | '?' | '.'))
            {
                j += 1;
            }
            let end = chars.get(j).map_or(line.len(), |&(p, _)| p);
            push_trimmed(&line[start..end], out);
            start = end;
            i = j;
        } else {
            i += 1;
        }
    }
    push_trimmed(&line[start..], out);
}

fn is_closing(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '”' | '’' | '）' | '」' | '』' | '》' | '】'
    )
}

fn push_trimmed<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    let t = s.trim();
    if t.chars().any(|c| c.is_alphanumeric()) {
        out.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_cjk() {
        assert_eq!(word_count("Hello world, it's 2024."), 4);
        assert_eq!(word_count("退款需要三天"), 3);
        assert_eq!(word_count("Pro 套餐每月"), 1 + 2);
    }

    #[test]
    fn splits_english_and_chinese() {
        let s = split_sentences(
            "The Pro plan costs $29.50 per month. E.g. billed yearly it is cheaper! Ask us.",
        );
        assert_eq!(
            s,
            vec![
                "The Pro plan costs $29.50 per month.",
                "E.g. billed yearly it is cheaper!",
                "Ask us."
            ]
        );
        let z = split_sentences("退款将在3个工作日内到账。如有问题，请联系客服！谢谢");
        assert_eq!(
            z,
            vec![
                "退款将在3个工作日内到账。",
                "如有问题，请联系客服！",
                "谢谢"
            ]
        );
        let l = split_sentences("Steps:\n1. Open Settings\n2. Click \"Billing\".");
        assert_eq!(
            l,
            vec!["Steps:", "1. Open Settings", "2. Click \"Billing\"."]
        );
    }
}
