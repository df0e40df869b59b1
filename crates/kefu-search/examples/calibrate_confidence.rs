//! Fits the confidence models of `answer.rs` (logistic regression per query language
//! over `[1, cosine, coverage, char_coverage]`)
//! on in-domain queries (label: the top passage is from the expected document) and
//! off-topic queries (label 0), and prints the constants and how they separate.
//!
//! cargo run --release -p kefu-search --example calibrate_confidence -- [--models models] [--dump samples]
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
    query: String,
    evidence: Evidence,
    label: bool,
    in_domain: bool,
    confidence: f32,
}

fn main() -> Result<()> {
    let mut models = PathBuf::from("models");
    let mut dump: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--models" => models = args.next().context("--models needs a value")?.into(),
            "--dump" => dump = Some(args.next().context("--dump needs a value")?.into()),
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
        (
            root.join("eval/retrieval/docs.jsonl"),
            root.join("eval/retrieval/queries.csv"),
        ),
        (
            root.join("tenants/demo/docs"),
            data.join("demo_queries.csv"),
        ),
    ];
    for hybrid in [true, false] {
        let mut samples = Vec::new();
        for (docs, queries) in &corpora {
            let config = SearchConfig {
                dense: hybrid,
                ..SearchConfig::default()
            };
            let index = SearchIndex::with_config(Some(embedder.clone()), config)?;
            ingest(&index, &load_corpus(docs)?)?;
            for q in load_queries(queries)? {
                if let Some((p, evidence)) = index.search_with_evidence(&q.text, 1)?.pop() {
                    samples.push(Sample {
                        query: q.text.clone(),
                        evidence,
                        label: p.doc_id == q.doc_id,
                        in_domain: true,
                        confidence: p.confidence,
                    });
                }
            }
            for q in &off_topic {
                if let Some((p, evidence)) = index.search_with_evidence(q, 1)?.pop() {
                    samples.push(Sample {
                        query: q.clone(),
                        evidence,
                        label: false,
                        in_domain: false,
                        confidence: p.confidence,
                    });
                }
            }
        }
        if let Some(path) = &dump {
            let mut out = String::from(
                "mode\tgroup\tchinese\tcosine\tcoverage\tchar_coverage\tconfidence\tquery\n",
            );
            for s in &samples {
                let group = if !s.in_domain {
                    "off_topic"
                } else if s.label {
                    "correct"
                } else {
                    "wrong"
                };
                out.push_str(&format!(
                    "{}\t{group}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    if hybrid { "hybrid" } else { "lexical" },
                    s.evidence.chinese,
                    s.evidence.cosine.unwrap_or(f32::NAN),
                    s.evidence.coverage,
                    s.evidence.char_coverage,
                    s.confidence,
                    s.query
                ));
            }
            let path = path.with_extension(if hybrid { "hybrid.tsv" } else { "lexical.tsv" });
            std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "== {} ({} samples)",
            if hybrid { "hybrid" } else { "lexical" },
            samples.len()
        );
        for chinese in [false, true] {
            let part: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.evidence.chinese == chinese)
                .collect();
            // [1, cosine, coverage, char_coverage]: which features each model uses
            let used: [bool; 4] = match (hybrid, chinese) {
                (true, false) => [true, true, true, false],
                (true, true) => [true, true, false, true],
                (false, false) => [true, false, true, false],
                (false, true) => [true, false, false, true],
            };
            let x: Vec<Vec<f64>> = part
                .iter()
                .map(|s| {
                    let e = &s.evidence;
                    let all = [1.0, e.cosine.unwrap_or(0.0), e.coverage, e.char_coverage];
                    all.iter()
                        .zip(used)
                        .filter(|(_, u)| *u)
                        .map(|(v, _)| f64::from(*v))
                        .collect()
                })
                .collect();
            let y: Vec<f64> = part.iter().map(|s| f64::from(u8::from(s.label))).collect();
            let mut fitted = fit_logistic(&x, &y, 1e-2).into_iter();
            let weights: Vec<String> = used
                .iter()
                .map(|&u| format!("{:.2}", if u { fitted.next().unwrap_or(0.0) } else { 0.0 }))
                .collect();
            println!(
                "{}: [{}]",
                if chinese { "zh" } else { "en" },
                weights.join(", ")
            );
            report(&part);
        }
    }
    Ok(())
}

/// How many correct, wrong and off-topic top passages the current constants call
/// confident at thresholds around CONFIDENCE_THRESHOLD.
fn report(samples: &[&Sample]) {
    for threshold in [0.4, 0.5, 0.6, 0.7, 0.8] {
        let rate = |f: &dyn Fn(&Sample) -> bool| {
            let sel: Vec<&&Sample> = samples.iter().filter(|s| f(s)).collect();
            let confident = sel.iter().filter(|s| s.confidence >= threshold).count();
            format!("{confident}/{}", sel.len())
        };
        println!(
            "  confident at {threshold:.2}{}: correct {}  wrong {}  off-topic {}",
            if threshold == CONFIDENCE_THRESHOLD {
                " (threshold)"
            } else {
                ""
            },
            rate(&|s| s.in_domain && s.label),
            rate(&|s| s.in_domain && !s.label),
            rate(&|s| !s.in_domain)
        );
    }
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
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let diag = if a[col][col].abs() < 1e-12 {
            1e-12
        } else {
            a[col][col]
        };
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / diag;
            for (x, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        let diag = if a[row][row].abs() < 1e-12 {
            1e-12
        } else {
            a[row][row]
        };
        x[row] = (b[row] - s) / diag;
    }
    x
}
