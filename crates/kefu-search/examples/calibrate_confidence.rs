//! Fits the confidence models of `answer.rs` (logistic regression per query language)
//! on in-domain queries (label: the top passage is from the expected document) and
//! off-topic queries (label 0), and prints the constants and how they separate.
//!
//! cargo run --release -p kefu-search --example calibrate_confidence -- [--models models]
//!
//! Corpora: eval/retrieval (docs.jsonl, queries.csv) and tenants/demo/docs with
//! crates/kefu-search/data/demo_queries.csv; off-topic queries from
//! crates/kefu-search/data/off_topic_queries.txt, run against both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use kefu_nlp::embed::Embedder;
use kefu_search::eval::{ingest, load_corpus, load_queries};
use kefu_search::{Evidence, SearchConfig, SearchIndex, CONFIDENCE_THRESHOLD};

struct Sample {
    evidence: Evidence,
    label: bool,
    in_domain: bool,
    confidence: f32,
}

fn main() -> Result<()> {
    let mut models = PathBuf::from("models");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--models" => models = args.next().context("--models needs a value")?.into(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let embedder = Arc::new(Embedder::from_models_dir(&models)?);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let off_topic: Vec<String> = std::fs::read_to_string(data.join("off_topic_queries.txt"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let corpora = [
        (root.join("eval/retrieval/docs.jsonl"), root.join("eval/retrieval/queries.csv")),
        (root.join("tenants/demo/docs"), data.join("demo_queries.csv")),
    ];
    for hybrid in [true, false] {
        let mut samples = Vec::new();
        for (docs, queries) in &corpora {
            let config = SearchConfig { dense: hybrid, ..SearchConfig::default() };
            let index = SearchIndex::with_config(Some(embedder.clone()), config)?;
            ingest(&index, &load_corpus(docs)?)?;
            for q in load_queries(queries)? {
                if let Some((p, evidence)) = index.search_with_evidence(&q.text, 1)?.pop() {
                    samples.push(Sample { evidence, label: p.doc_id == q.doc_id, in_domain: true, confidence: p.confidence });
                }
            }
            for q in &off_topic {
                if let Some((p, evidence)) = index.search_with_evidence(q, 1)?.pop() {
                    samples.push(Sample { evidence, label: false, in_domain: false, confidence: p.confidence });
                }
            }
        }
        println!("== {} ({} samples)", if hybrid { "hybrid" } else { "lexical" }, samples.len());
        for chinese in [false, true] {
            let part: Vec<&Sample> = samples.iter().filter(|s| s.evidence.chinese == chinese).collect();
            let x: Vec<Vec<f64>> = part
                .iter()
                .map(|s| {
                    let mut f = vec![1.0];
                    if hybrid {
                        f.push(f64::from(s.evidence.cosine.unwrap_or(0.0)));
                    }
                    f.push(f64::from(s.evidence.coverage));
                    f
                })
                .collect();
            let y: Vec<f64> = part.iter().map(|s| f64::from(u8::from(s.label))).collect();
            let w = fit_logistic(&x, &y, 1e-2);
            let coefficients: Vec<String> = w.iter().map(|v| format!("{v:.2}")).collect();
            println!("{}: ({})", if chinese { "zh" } else { "en" }, coefficients.join(", "));
            report(&part);
        }
    }
    Ok(())
}

/// Share of correct, wrong and off-topic top passages that the current constants
/// call confident.
fn report(samples: &[&Sample]) {
    let rate = |f: &dyn Fn(&Sample) -> bool| {
        let sel: Vec<&&Sample> = samples.iter().filter(|s| f(s)).collect();
        let confident = sel.iter().filter(|s| s.confidence >= CONFIDENCE_THRESHOLD).count();
        format!("{confident}/{}", sel.len())
    };
    println!(
        "  confident with the current constants: correct {}  wrong {}  off-topic {}",
        rate(&|s| s.in_domain && s.label),
        rate(&|s| s.in_domain && !s.label),
        rate(&|s| !s.in_domain)
    );
}

/// L2-regularised logistic regression (bias not penalised) by Newton's method.
fn fit_logistic(x: &[Vec<f64>], y: &[f64], l2: f64) -> Vec<f64> {
    let d = x[0].len();
    let mut w = vec![0.0; d];
    for _ in 0..50 {
        let mut grad = vec![0.0; d];
        let mut hess = vec![vec![0.0; d]; d];
        for (xi, yi) in x.iter().zip(y) {
            let z: f64 = xi.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for j in 0..d {
                grad[j] += (p - yi) * xi[j];
                for k in 0..d {
                    hess[j][k] += p * (1.0 - p) * xi[j] * xi[k];
                }
            }
        }
        for j in 1..d {
            grad[j] += l2 * w[j];
            hess[j][j] += l2;
        }
        let step = solve(hess, grad);
        for j in 0..d {
            w[j] -= step[j];
        }
    }
    w
}

/// Solves a small dense linear system by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let diag = if a[col][col].abs() < 1e-12 { 1e-12 } else { a[col][col] };
        for row in col + 1..n {
            let f = a[row][col] / diag;
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        let diag = if a[row][row].abs() < 1e-12 { 1e-12 } else { a[row][row] };
        x[row] = (b[row] - s) / diag;
    }
    x
}
