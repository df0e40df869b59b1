//! Compares retrieval settings on an evaluation set.
//!
//! cargo run --release -p kefu-search --example retrieval_eval -- \
//!     [--docs eval/retrieval/docs.jsonl | tenants/demo/docs] [--queries eval/retrieval/queries.csv] [--models models] \
//!     [--mode hybrid|bm25|dense] [--fusion rrf:60|score] [--dense-en 0.5] [--dense-zh 0.5] [--candidates 50] [--no-stem] [--no-bigrams] \
//!     [--title-boost 1.0] [--heading-boost 1.0] [--grams 1.0] [--pinyin 0.3] [--question-boost 2.0] [--misses]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kefu_nlp::embed::Embedder;
use kefu_search::baseline::Grams;
use kefu_search::eval::{baseline, evaluate, ingest, load_corpus, load_queries};
use kefu_search::{Fusion, SearchConfig, SearchIndex};

fn main() -> Result<()> {
    let mut docs = PathBuf::from("eval/retrieval/docs.jsonl");
    let mut queries = PathBuf::from("eval/retrieval/queries.csv");
    let mut models = PathBuf::from("models");
    let mut mode = "hybrid".to_string();
    let mut config = SearchConfig::default();
    let mut misses = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--docs" => docs = value()?.into(),
            "--queries" => queries = value()?.into(),
            "--models" => models = value()?.into(),
            "--mode" => mode = value()?,
            "--fusion" => {
                let v = value()?;
                config.fusion = match v.split_once(':') {
                    Some(("rrf", k)) => Fusion::Rrf { k: k.parse()? },
                    None if v == "score" => Fusion::Score,
                    _ => bail!("--fusion rrf:K or score"),
                };
            }
            "--dense-en" => config.dense_weight_en = value()?.parse()?,
            "--dense-zh" => config.dense_weight_zh = value()?.parse()?,
            "--candidates" => config.candidates = value()?.parse()?,
            "--no-stem" => config.stem = false,
            "--no-bigrams" => config.cjk_bigrams = false,
            "--title-boost" => config.title_boost = value()?.parse()?,
            "--heading-boost" => config.heading_boost = value()?.parse()?,
            "--grams" => config.chinese_grams = value()?.parse()?,
            "--pinyin" => config.pinyin = value()?.parse()?,
            "--question-boost" => config.question_boost = value()?.parse()?,
            "--misses" => misses = true,
            other => bail!("unknown argument {other}"),
        }
    }
    match mode.as_str() {
        "hybrid" => {}
        "bm25" => config.dense = false,
        "dense" => config.lexical = false,
        other => bail!("unknown mode {other}"),
    }
    let embedder = if config.dense {
        Some(Arc::new(Embedder::from_models_dir(&models)?))
    } else {
        None
    };
    let index = SearchIndex::with_config(embedder, config.clone())?;
    let corpus = load_corpus(&docs)?;
    ingest(&index, &corpus)?;
    let queries = load_queries(&queries)?;
    let report = evaluate(&index, &queries)?;
    println!("{mode} {config:?}\n{report}");
    for grams in [Grams::UnigramsAndBigrams, Grams::Bigrams] {
        let figures = baseline(&corpus, &queries, grams)?;
        println!("baseline ({}): {figures}", grams.describe());
    }
    if misses {
        for q in &queries {
            let found = index.search(&q.text, 10)?;
            let rank = found.iter().position(|p| p.doc_id == q.doc_id);
            if rank != Some(0) {
                let top = found.first().map_or(String::new(), |p| {
                    format!("{} ({:.2})", p.doc_id, p.confidence)
                });
                println!(
                    "rank {:?}\t{}\t{}\ttop: {}",
                    rank.map(|r| r + 1),
                    q.doc_id,
                    q.text,
                    top
                );
            }
        }
    }
    Ok(())
}
