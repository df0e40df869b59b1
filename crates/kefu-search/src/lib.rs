//! kefu-search: retrieval over a tenant's help articles.
//!
//! - [`chunk_document`]: Markdown-aware chunking with heading context
//! - [`SearchIndex`]: an in-memory hybrid index, BM25 (tantivy, with a tokenizer that
//!   segments Chinese with jieba and stems English) plus dense cosine similarity over
//!   sentence embeddings, fused with reciprocal rank fusion, one best chunk per document
//! - [`compose_answer`]: a grounded answer made only of the best passage's sentences
//! - [`eval`]: the retrieval benchmark (MRR@10, recall, latency), against
//!   [`baseline`], BM25 over character bigrams

mod analysis;
mod answer;
pub mod baseline;
mod chunk;
pub mod eval;
mod index;
mod sentences;

pub use answer::{compose_answer, CONFIDENCE_THRESHOLD};
pub use chunk::{chunk_document, MAX_OVERLAP_WORDS, MAX_WORDS, MIN_WORDS};
pub use index::{Evidence, Fusion, SearchConfig, SearchIndex};

use serde::{Deserialize, Serialize};

/// A help article as the tenant wrote it: Markdown or plain text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// A piece of a document, the unit of retrieval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// `doc_id#n`, n counting from 0 in document order.
    pub id: String,
    pub doc_id: String,
    /// The document's title.
    pub title: String,
    /// The path of headings above the chunk, joined with " > " ("" before the first heading).
    pub heading: String,
    /// The chunk's text with inline Markdown reduced to plain text.
    pub text: String,
    /// Its L2-normalised embedding, once computed.
    pub vector: Option<Vec<f32>>,
}

impl Document {
    /// A help article from its id, title and text.
    pub fn new(id: &str, title: &str, text: &str) -> Self {
        Self {
            id: id.to_string(),
            title: title.to_string(),
            text: text.to_string(),
        }
    }

    /// A help article from a Markdown file: the title is the first `# ` heading
    /// (the id when there is none).
    pub fn from_markdown(id: &str, text: &str) -> Self {
        let title = text
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("# "))
            .map(|t| t.trim().trim_end_matches('#').trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| id.to_string());
        Self::new(id, &title, text)
    }
}

/// A retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub chunk_id: String,
    pub doc_id: String,
    pub title: String,
    pub text: String,
    /// Fused ranking score: higher is better; comparable within one result list only.
    pub score: f32,
    /// Estimated probability in [0, 1] that the passage answers the query; comparable
    /// across queries (see [`CONFIDENCE_THRESHOLD`]).
    pub confidence: f32,
}

/// An answer grounded in retrieved passages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Sentences quoted from the sources, in the sources' language.
    pub text: String,
    /// The passages the answer was built from, best first.
    pub sources: Vec<Passage>,
    /// True when the best passage's confidence reaches [`CONFIDENCE_THRESHOLD`].
    pub confident: bool,
}
