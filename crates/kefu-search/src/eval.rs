//! The retrieval benchmark: documents are ingested exactly as a tenant's are
//! (chunk_document → embed_chunks → add_chunks), every query goes through
//! [`SearchIndex::search`] one at a time, and the rank of the expected document gives
//! MRR@10 and recall@1/@5; latency covers the whole search, query embedding included.

use std::fmt;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::baseline::{CharBm25, Grams};
use crate::{chunk_document, Document, SearchConfig, SearchIndex};

/// One evaluation query and the id of the document that answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    pub text: String,
    pub doc_id: String,
}

/// Retrieval quality and latency over a query set.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mrr_at_10: f64,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mrr@10={:.4} recall@1={:.4} recall@5={:.4} n={} p50_ms={:.1} p99_ms={:.1}",
            self.mrr_at_10, self.recall_at_1, self.recall_at_5, self.n, self.p50_ms, self.p99_ms
        )
    }
}

/// Reads documents from JSON lines `{"id", "title", "text"}`.
pub fn load_documents(path: &Path) -> Result<Vec<Document>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let doc: Document = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a document", path.display(), i + 1))?;
        docs.push(doc);
    }
    Ok(docs)
}

/// Reads the `*.md` files of a directory as documents, the file stem being the id
/// (as a tenant's `docs/` folder is read), in file name order.
pub fn load_markdown_dir(dir: &Path) -> Result<Vec<Document>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    paths.sort();
    let mut docs = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("no usable file name: {}", path.display()))?;
        docs.push(Document::from_markdown(id, &text));
    }
    Ok(docs)
}

/// Documents from a JSON-lines file or from a directory of Markdown files.
pub fn load_corpus(path: &Path) -> Result<Vec<Document>> {
    if path.is_dir() {
        load_markdown_dir(path)
    } else {
        load_documents(path)
    }
}

/// Reads queries from a CSV file with the header `text,doc_id`.
pub fn load_queries(path: &Path) -> Result<Vec<Query>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let mut queries = Vec::new();
    for row in reader.deserialize() {
        let q: Query = row.with_context(|| format!("reading {}", path.display()))?;
        queries.push(q);
    }
    Ok(queries)
}

/// Ingests documents the way a tenant's documents are ingested.
pub fn ingest(index: &SearchIndex, docs: &[Document]) -> Result<()> {
    let mut chunks = Vec::new();
    for doc in docs {
        chunks.extend(chunk_document(doc));
    }
    index.embed_chunks(&mut chunks)?;
    index.add_chunks(chunks)
}

/// Runs every query through `index.search` and scores the rankings.
pub fn evaluate(index: &SearchIndex, queries: &[Query]) -> Result<Report> {
    score_rankings(queries, |query| {
        Ok(index
            .search(query, 10)?
            .into_iter()
            .map(|p| p.doc_id)
            .collect())
    })
}

/// Scores the ranking `rank` gives each query (document ids, best first; the first ten
/// count), one query at a time, timing each.
pub fn score_rankings(
    queries: &[Query],
    mut rank: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Report> {
    if queries.is_empty() {
        bail!("no queries to evaluate");
    }
    let mut reciprocal = 0.0;
    let mut at1 = 0usize;
    let mut at5 = 0usize;
    let mut latencies = Vec::with_capacity(queries.len());
    for (i, q) in queries.iter().enumerate() {
        let start = Instant::now();
        let ranking = rank(&q.text)?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        if let Some(rank) = ranking.iter().take(10).position(|id| *id == q.doc_id) {
            reciprocal += 1.0 / (rank + 1) as f64;
            at1 += usize::from(rank == 0);
            at5 += usize::from(rank < 5);
        }
        if (i + 1) % 100 == 0 || i + 1 == queries.len() {
            eprintln!("retrieval eval: {}/{} queries", i + 1, queries.len());
        }
    }
    latencies.sort_by(f64::total_cmp);
    let n = queries.len();
    let percentile = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Ok(Report {
        mrr_at_10: reciprocal / n as f64,
        recall_at_1: at1 as f64 / n as f64,
        recall_at_5: at5 as f64 / n as f64,
        n,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

/// The same queries against a textbook baseline, BM25 over character n-grams.
pub fn baseline(docs: &[Document], queries: &[Query], grams: Grams) -> Result<Report> {
    let index = CharBm25::new(docs, grams);
    score_rankings(queries, |query| {
        Ok(index
            .search(query, 10)
            .into_iter()
            .map(str::to_owned)
            .collect())
    })
}

/// The benchmark with the production settings: hybrid retrieval with the
/// all-MiniLM-L6-v2 model from `models_dir`, then the baselines on the same set. Returns
/// `mrr@10=… recall@1=… recall@5=… n=… p50_ms=… p99_ms=…` and a line with each
/// baseline's figures; an error when kefu's MRR@10 is below `min_mrr`.
pub fn retrieval(
    docs_jsonl: &Path,
    queries_csv: &Path,
    models_dir: &Path,
    min_mrr: Option<f64>,
) -> Result<String> {
    let docs = load_documents(docs_jsonl)?;
    let queries = load_queries(queries_csv)?;
    let embedder = kefu_nlp::eval::load_embedder(models_dir)?;
    let index = SearchIndex::with_config(Some(Arc::new(embedder)), SearchConfig::default())?;
    eprintln!("retrieval eval: ingesting {} documents", docs.len());
    let start = Instant::now();
    ingest(&index, &docs)?;
    eprintln!(
        "retrieval eval: {} chunks indexed in {:.1}s, running {} queries",
        index.chunk_count(),
        start.elapsed().as_secs_f64(),
        queries.len()
    );
    let report = evaluate(&index, &queries)?;
    if let Some(floor) = min_mrr.filter(|&floor| report.mrr_at_10 < floor) {
        anyhow::bail!(
            "MRR@10 {:.4} is below the floor {floor} ({report})",
            report.mrr_at_10
        );
    }
    let mut out = report.to_string();
    for grams in [Grams::UnigramsAndBigrams, Grams::Bigrams] {
        let figures = baseline(&docs, &queries, grams)?;
        out.push_str(&format!("\nbaseline ({}): {figures}", grams.describe()));
    }
    Ok(out)
}
