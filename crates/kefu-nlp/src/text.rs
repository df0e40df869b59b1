//! Text utilities shared by every model: language detection, normalisation and
//! word segmentation (Chinese through jieba, everything else on word boundaries).

use std::sync::OnceLock;

use jieba_rs::Jieba;
use serde::{Deserialize, Serialize};

/// The languages kefu understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Zh,
}

/// The contracts' name of a language.
impl From<Language> for kefu_proto::v1::Language {
    fn from(language: Language) -> Self {
        match language {
            Language::En => Self::En,
            Language::Zh => Self::Zh,
        }
    }
}

impl Language {
    /// ISO 639-1 code ("en" / "zh"), as used in tenant files.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Zh => "zh",
        }
    }
}

/// True for Han ideographs (CJK Unified Ideographs and their extensions/compatibility blocks).
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xF900..=0xFAFF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2EBEF
        | 0x30000..=0x3134F)
}

/// Guesses the language of a message: Chinese when Han characters carry most of the
/// content. One Han character is weighed like three Latin letters (about one short word),
/// so "我要投诉 my order" is Chinese and "I want to complain 投诉" is English.
/// Text without letters of either kind is English.
pub fn detect_language(text: &str) -> Language {
    let mut cjk = 0usize;
    let mut latin = 0usize;
    for c in text.chars() {
        if is_cjk(c) {
            cjk += 1;
        } else if c.is_alphabetic() {
            latin += 1;
        }
    }
    if cjk > 0 && cjk * 3 >= latin {
        Language::Zh
    } else {
        Language::En
    }
}

/// Maps full-width forms to their ASCII counterparts and the ideographic space to a space.
fn half_width(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    }
}

/// Normalises text for matching: full-width to half-width, lowercase, every run of
/// whitespace (including control characters) collapsed to one space, trimmed.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars().map(half_width) {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// A letter or digit of an alphabetic script: Han characters are words of their own.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_cjk(c)
}

/// Splits normalised text into words. Runs of Han characters are segmented with jieba;
/// other text is split on anything that is not a letter or digit, keeping inner
/// apostrophes ("don't"). Punctuation and symbols are dropped.
pub fn words(text: &str) -> Vec<String> {
    let norm = normalize(text);
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = norm.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if is_cjk(c) {
            let mut j = i;
            while j < chars.len() && is_cjk(chars[j].1) {
                j += 1;
            }
            let end = chars.get(j).map_or(norm.len(), |&(b, _)| b);
            for w in jieba().cut(&norm[start..end], true) {
                out.push(w.to_string());
            }
            i = j;
        } else if is_word_char(c) {
            let mut j = i + 1;
            while j < chars.len() {
                let cj = chars[j].1;
                let apostrophe_inside = (cj == '\'' || cj == '’')
                    && j + 1 < chars.len()
                    && is_word_char(chars[j + 1].1);
                if is_word_char(cj) || apostrophe_inside {
                    j += 1;
                } else {
                    break;
                }
            }
            let end = chars.get(j).map_or(norm.len(), |&(b, _)| b);
            out.push(norm[start..end].replace('’', "'"));
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Most characters, spaces not counted, of a short follow-up.
const SHORT_FOLLOW_UP_CHARS: usize = 24;

/// Whether a message is short enough to read as a follow-up of the conversation's last
/// question ("and for the Pro plan?", "还是不行") rather than a question of its own.
/// Spaces do not count, so that English and Chinese are measured alike.
pub fn is_short_follow_up(text: &str) -> bool {
    text.chars().filter(|c| !c.is_whitespace()).count() <= SHORT_FOLLOW_UP_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_language() {
        assert_eq!(
            detect_language("Hello, I need help with my card"),
            Language::En
        );
        assert_eq!(detect_language("你们的服务太差了，我要投诉"), Language::Zh);
        assert_eq!(detect_language("我的card丢了怎么办"), Language::Zh);
        assert_eq!(
            detect_language("I want to complain about the 投诉 process"),
            Language::En
        );
        assert_eq!(detect_language(""), Language::En);
        assert_eq!(detect_language("12345 !!!"), Language::En);
    }

    #[test]
    fn normalizes_width_case_and_space() {
        assert_eq!(normalize("  ＨＥＬＬＯ\t\n  Ｗｏｒｌｄ！ "), "hello world!");
        assert_eq!(normalize("你好，　世界"), "你好, 世界");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn segments_english_and_chinese() {
        assert_eq!(
            words("I don't have my CARD, help!"),
            vec!["i", "don't", "have", "my", "card", "help"]
        );
        let zh = words("我的银行卡丢了");
        assert!(zh.contains(&"银行卡".to_string()), "{zh:?}");
        assert!(
            zh.contains(&"丢".to_string()) || zh.contains(&"丢了".to_string()),
            "{zh:?}"
        );
        let mixed = words("我的Visa card被冻结了");
        assert!(
            mixed.contains(&"visa".to_string()) && mixed.contains(&"card".to_string()),
            "{mixed:?}"
        );
        assert!(mixed.contains(&"冻结".to_string()), "{mixed:?}");
        assert!(words("!!! ...").is_empty());
    }

    #[test]
    fn short_follow_ups_are_counted_without_spaces() {
        assert!(is_short_follow_up("and for the Pro plan?"));
        assert!(is_short_follow_up("还是不行"));
        assert!(
            is_short_follow_up("what  about   the   yearly   one"),
            "spaces do not count"
        );
        assert!(!is_short_follow_up(
            "How do I move my recordings to a new hub?"
        ));
    }
}
