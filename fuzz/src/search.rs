//! The lexical search over the analysis of `kefu_search` (segmentation, stop words,
//! stemming, Chinese bigrams): any text may be indexed and any text may be a query;
//! results are bounded, ranked, with confidences in [0, 1], and answers quote the
//! best passage.
use std::path::Path;
use std::sync::OnceLock;

use kefu_search::{chunk_document, compose_answer, Document, Passage, SearchConfig, SearchIndex};

/// Lexical indexes (no encoder) over the demo tenant's articles: the default analysis
/// and the one without stemming and bigrams.
fn indexes() -> &'static [SearchIndex; 2] {
    static INDEXES: OnceLock<[SearchIndex; 2]> = OnceLock::new();
    INDEXES.get_or_init(|| {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tenants/demo/docs");
        let mut paths: Vec<_> = std::fs::read_dir(&docs)
            .expect("the demo tenant's articles")
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        paths.sort();
        let plain = SearchConfig {
            stem: false,
            cjk_bigrams: false,
            ..SearchConfig::default()
        };
        [SearchConfig::default(), plain].map(|config| {
            let index = SearchIndex::with_config(None, config).expect("an index");
            for path in &paths {
                let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("doc");
                let text = std::fs::read_to_string(path).expect("an article");
                index
                    .add_chunks(chunk_document(&Document::from_markdown(id, &text)))
                    .expect("indexing an article");
            }
            index
        })
    })
}

/// The first byte picks the index and whether the text is indexed as an article too;
/// the rest is the text, which is then the query.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let index = &indexes()[usize::from(mode & 1)];
    if mode & 2 != 0 {
        let chunks = chunk_document(&Document::from_markdown("fuzz", &text));
        index.add_chunks(chunks).expect("indexing any text");
    }
    let found = index
        .search_with_evidence(&text, 5)
        .expect("searching any text");
    assert!(found.len() <= 5);
    let passages: Vec<Passage> = found.iter().map(|(passage, _)| passage.clone()).collect();
    let mut docs: Vec<&str> = passages.iter().map(|p| p.doc_id.as_str()).collect();
    docs.sort_unstable();
    docs.dedup();
    assert_eq!(docs.len(), passages.len(), "two passages of one document");
    for pair in passages.windows(2) {
        assert!(pair[0].score >= pair[1].score, "not ranked: {passages:#?}");
    }
    for (passage, evidence) in &found {
        assert!(passage.score.is_finite(), "score {}", passage.score);
        assert!(
            (0.0..=1.0).contains(&passage.confidence),
            "confidence {}",
            passage.confidence
        );
        assert!((0.0..=1.0).contains(&evidence.coverage), "{evidence:?}");
        assert!(
            (0.0..=1.0).contains(&evidence.char_coverage),
            "{evidence:?}"
        );
    }
    if let Some(answer) = compose_answer(&text, &passages) {
        assert!(!answer.text.trim().is_empty(), "an empty answer");
        assert_eq!(answer.sources[..], passages[..1]);
        assert!(
            crate::keeps_content(&answer.text, &passages[0].text),
            "the answer is not quoted from the best passage: {:?}",
            answer.text
        );
    }
    assert!(index.search_chunks(&text, 3).expect("searching").len() <= 3);
}
