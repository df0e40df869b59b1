//! `kefu_search::chunk_document`: chunks are non-empty, bounded, numbered in order,
//! and on text without Markdown syntax they keep every letter and digit in order.
use kefu_nlp::text::is_cjk;
use kefu_search::{chunk_document, Chunk, Document, MAX_OVERLAP_WORDS, MAX_WORDS};

/// A chunk's size as the chunker measures it (its documentation): runs of letters and
/// digits (joined by inner apostrophes and hyphens) count one, Han characters one half.
pub fn word_count(text: &str) -> usize {
    let (mut words, mut han, mut in_word) = (0usize, 0usize, false);
    for c in text.chars() {
        if is_cjk(c) {
            han += 1;
            in_word = false;
        } else if c.is_alphanumeric() {
            words += usize::from(!in_word);
            in_word = true;
        } else {
            in_word = in_word && matches!(c, '\'' | '’' | '-');
        }
    }
    words + han.div_ceil(2)
}

/// The bound of a chunk: MAX_WORDS, plus a small tail folded into it (at most
/// MAX_OVERLAP_WORDS more) and the overlap sentence carried from the chunk before.
pub const CHUNK_BOUND: usize = MAX_WORDS + 2 * MAX_OVERLAP_WORDS;

/// Characters that carry no Markdown meaning anywhere in a line.
fn is_plain(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || ".,;:!?'\"()。，；：！？、（）".contains(c)
}

pub fn check(text: &str) {
    check_chunks(&Document::from_markdown("fuzz", text));

    let plain: String = text.chars().filter(|&c| is_plain(c)).collect();
    let chunks = check_chunks(&Document::from_markdown("plain", &plain));
    let all: String = chunks
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        crate::keeps_content(&plain, &all),
        "chunks of plain text lost content: {chunks:#?}"
    );
}

fn check_chunks(doc: &Document) -> Vec<Chunk> {
    let chunks = chunk_document(doc);
    for (n, chunk) in chunks.iter().enumerate() {
        assert_eq!(
            chunk.id,
            format!("{}#{n}", doc.id),
            "chunk ids out of order"
        );
        assert_eq!(
            (chunk.doc_id.as_str(), chunk.title.as_str()),
            (doc.id.as_str(), doc.title.as_str())
        );
        assert!(!chunk.text.trim().is_empty(), "an empty chunk: {chunk:?}");
        let size = word_count(&chunk.text);
        assert!(
            size <= CHUNK_BOUND,
            "chunk {n} has {size} words, more than {CHUNK_BOUND}"
        );
        assert!(chunk.vector.is_none());
    }
    chunks
}
