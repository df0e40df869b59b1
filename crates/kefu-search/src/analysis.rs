//! Text analysis for the lexical index: kefu-nlp's word segmentation (jieba for
//! Chinese, word boundaries otherwise), optional Chinese character bigrams, function
//! words removed, English words stemmed. The same analysis serves indexing, queries,
//! the lexical part of the confidence and the choice of answer sentences.
//!
//! Chinese text is also analysed a second way for ranking alone ([`grams_analyzer`]):
//! character unigrams and bigrams of the content words, and bigrams of their pinyin, so
//! that a paraphrase segmented differently, or typed with a homophone ("发漂" for
//! "发票"), still matches.

use kefu_nlp::text::{is_cjk, normalize, words};
use pinyin::ToPinyin;
use tantivy::tokenizer::{
    Language, RemoveLongFilter, Stemmer, StopWordFilter, TextAnalyzer, Token, TokenStream,
    Tokenizer,
};

/// Name under which the analyzer is registered in the tantivy index.
pub(crate) const TOKENIZER_NAME: &str = "kefu";

/// Function words of questions and instructions in English and Chinese. They carry no
/// topic, so they neither rank documents nor count as evidence of relevance.
const STOP_WORDS: &[&str] = &[
    // English
    "a",
    "about",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "for",
    "from",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "hers",
    "him",
    "his",
    "how",
    "i",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "it",
    "it's",
    "its",
    "me",
    "my",
    "myself",
    "of",
    "on",
    "or",
    "our",
    "ours",
    "please",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "to",
    "too",
    "us",
    "very",
    "was",
    "we",
    "were",
    "what",
    "what's",
    "when",
    "where",
    "which",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    // Chinese
    "的",
    "了",
    "吗",
    "呢",
    "吧",
    "啊",
    "呀",
    "嘛",
    "么",
    "是",
    "我",
    "你",
    "您",
    "他",
    "她",
    "它",
    "我们",
    "你们",
    "他们",
    "在",
    "和",
    "与",
    "及",
    "或",
    "就",
    "都",
    "也",
    "还",
    "要",
    "想",
    "怎么",
    "怎样",
    "如何",
    "什么",
    "为什么",
    "哪",
    "哪里",
    "哪个",
    "这",
    "那",
    "这个",
    "那个",
    "请问",
    "请",
    "一下",
    "个",
    "把",
    "被",
    "让",
    "给",
    "对",
    "从",
    "得",
    "地",
    "着",
    "过",
    "会",
    "能",
    "可以",
    "您好",
    "你好",
    "谢谢",
    "怎么办",
    "咋办",
    "咋",
    "啥",
    "为啥",
    "有没有",
    "是不是",
    "能不能",
    "可不可以",
    "会不会",
    "要不要",
    "一下",
    "一个",
    "这样",
    "那样",
    "怎么样",
    "多少",
    "几",
    "哦",
    "嗯",
    "还是",
    "但是",
    "因为",
    "所以",
    "如果",
    "的话",
    "现在",
    "不",
    "不能",
    "但",
    "有",
    "到",
    "多",
    "东西",
    "先",
];

/// Splits text into words with kefu-nlp; with `cjk_bigrams`, every Chinese word of
/// three or more characters also yields its character bigrams (at the same position),
/// so that "退货退款" matches a query segmented as "退款".
#[derive(Clone)]
struct Segmenter {
    cjk_bigrams: bool,
}

/// A token stream over tokens produced up front.
pub(crate) struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

impl Tokenizer for Segmenter {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let mut tokens = Vec::new();
        for (position, word) in words(text).into_iter().enumerate() {
            let chars: Vec<char> = word.chars().collect();
            if chars.iter().all(|&c| is_cjk(c)) && STOP_WORDS.contains(&word.as_str()) {
                // no bigrams from a function word ("怎么办" → "么办")
                continue;
            }
            if self.cjk_bigrams && chars.len() >= 3 && chars.iter().all(|&c| is_cjk(c)) {
                for pair in chars.windows(2) {
                    tokens.push(Token {
                        position,
                        text: pair.iter().collect(),
                        ..Token::default()
                    });
                }
            }
            tokens.push(Token {
                position,
                text: word,
                ..Token::default()
            });
        }
        VecTokenStream { tokens, next: 0 }
    }
}

/// Name under which the Chinese n-gram analyzer is registered.
pub(crate) const GRAMS_TOKENIZER_NAME: &str = "kefu_grams";

/// Chinese n-grams of a text, the rest ignored: each run of Han characters is segmented,
/// function words cut it into pieces, and each piece yields its characters, its character
/// bigrams and (with `pinyin`) the toneless pinyin of each bigram ("tui huo").
#[derive(Clone)]
struct ChineseGrams {
    pinyin: bool,
}

impl Tokenizer for ChineseGrams {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let mut tokens = Vec::new();
        let mut push = |text: String| {
            tokens.push(Token {
                position: tokens.len(),
                text,
                ..Token::default()
            })
        };
        for piece in content_pieces(&normalize(text)) {
            for &c in &piece {
                push(c.to_string());
            }
            for pair in piece.windows(2) {
                push(pair.iter().collect());
                if self.pinyin {
                    if let (Some(a), Some(b)) = (pair[0].to_pinyin(), pair[1].to_pinyin()) {
                        push(format!("{} {}", a.plain(), b.plain()));
                    }
                }
            }
        }
        VecTokenStream { tokens, next: 0 }
    }
}

/// Whether a Chinese n-gram is the pinyin of a bigram rather than characters.
pub(crate) fn is_pinyin(gram: &str) -> bool {
    gram.contains(' ')
}

/// The runs of Han characters of a normalised text, each cut at its function words.
fn content_pieces(text: &str) -> Vec<Vec<char>> {
    let mut pieces = Vec::new();
    let mut run = String::new();
    let mut flush = |run: &mut String| {
        let mut piece = Vec::new();
        for word in words(run) {
            if STOP_WORDS.contains(&word.as_str()) {
                if !piece.is_empty() {
                    pieces.push(std::mem::take(&mut piece));
                }
            } else {
                piece.extend(word.chars());
            }
        }
        if !piece.is_empty() {
            pieces.push(piece);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_cjk(c) {
            run.push(c);
        } else if !run.is_empty() {
            flush(&mut run);
        }
    }
    if !run.is_empty() {
        flush(&mut run);
    }
    pieces
}

/// The Chinese n-gram analyzer (see [`ChineseGrams`]).
pub(crate) fn grams_analyzer(pinyin: bool) -> TextAnalyzer {
    TextAnalyzer::builder(ChineseGrams { pinyin }).build()
}

/// Terms longer than this are left out of the index: no one searches for them, and the
/// stemmer takes time that grows faster than their length (a 1 MB "word" took 14 s).
const MAX_TERM_BYTES: usize = 64;

/// The analyzer: segmentation, stop words, English stemming.
pub(crate) fn analyzer(cjk_bigrams: bool, stem: bool) -> TextAnalyzer {
    let builder = TextAnalyzer::builder(Segmenter { cjk_bigrams })
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES))
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|w| w.to_string()),
        ));
    if stem {
        builder.filter(Stemmer::new(Language::English)).build()
    } else {
        builder.dynamic().build()
    }
}

/// The analyzed terms of a text, in order, with repetitions.
pub(crate) fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while let Some(token) = stream.next() {
        out.push(token.text.clone());
    }
    out
}

/// The distinct analyzed terms of a text, in order of first occurrence.
pub(crate) fn distinct_terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in terms(analyzer, text) {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_english_and_drops_function_words() {
        let mut a = analyzer(false, true);
        assert_eq!(
            terms(&mut a, "How do I cancel my subscriptions?"),
            vec!["cancel", "subscript"]
        );
        let mut plain = analyzer(false, false);
        assert_eq!(
            terms(&mut plain, "How do I cancel my subscriptions?"),
            vec!["cancel", "subscriptions"]
        );
    }

    #[test]
    fn chinese_grams_are_characters_bigrams_and_pinyin_of_content_words() {
        let mut a = grams_analyzer(true);
        let t = terms(&mut a, "请问怎么申请退货? refund");
        for expected in ["申", "退", "申请", "请退", "退货", "tui huo"] {
            assert!(t.iter().any(|x| x == expected), "{expected} in {t:?}");
        }
        // "请问" and "怎么" are function words: no gram spans them, English is left out
        assert!(
            !t.iter()
                .any(|x| x == "怎么" || x == "么申" || x == "refund"),
            "{t:?}"
        );
        // a homophone typed by mistake shares the pinyin bigram
        let typo = terms(&mut a, "怎么开发漂");
        assert!(typo.iter().any(|x| x == "fa piao"), "{typo:?}");
        assert!(terms(&mut a, "开发票").iter().any(|x| x == "fa piao"));
        let mut plain = grams_analyzer(false);
        assert!(!terms(&mut plain, "发票").iter().any(|x| x == "fa piao"));
    }

    #[test]
    fn segments_chinese_with_optional_bigrams() {
        let mut a = analyzer(false, true);
        let t = terms(&mut a, "我想申请退款");
        assert!(t.contains(&"退款".to_string()), "{t:?}");
        assert!(
            !t.contains(&"我".to_string()) && !t.contains(&"想".to_string()),
            "{t:?}"
        );
        let mut b = analyzer(true, true);
        let t = terms(&mut b, "信用卡账单");
        assert!(t.iter().any(|x| x == "信用卡"), "{t:?}");
        assert!(
            t.iter().any(|x| x == "用卡") || t.iter().any(|x| x == "信用"),
            "{t:?}"
        );
    }
}
