//! Evaluation and training entry points behind `kefu eval`. Progress goes to stderr;
//! each function returns its final one-line summary.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::embed::Embedder;
use crate::features::{FeatureConfig, SparseRow, Vectorizer};
use crate::intent::IntentModel;
use crate::linear::{self, Data, TrainOptions};
use crate::sentiment::{SentimentModel, CLASSES};

/// Reads a `text,<label>` CSV with a header (the label column is the second one).
pub fn read_labelled_csv(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse_labelled_csv(file).with_context(|| path.display().to_string())
}

/// The rows of a hand-off file (`text,expected`): the message, and whether a person
/// should take over (`yes` or `no`). Used by the hand-off model's training messages and
/// by `kefu eval escalation`.
pub fn read_expected_csv(path: &Path) -> Result<Vec<(String, bool)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse_expected_csv(file).with_context(|| path.display().to_string())
}

/// [`read_expected_csv`] from any reader; errors name the row.
pub(crate) fn parse_expected_csv(input: impl std::io::Read) -> Result<Vec<(String, bool)>> {
    let mut reader = csv::Reader::from_reader(input);
    let headers = reader.headers()?.clone();
    if headers.get(0) != Some("text") || headers.get(1) != Some("expected") {
        bail!("the header must be `text,expected`");
    }
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("row {}", line + 2))?;
        let expected = match record.get(1).map(str::trim) {
            Some("yes") => true,
            Some("no") => false,
            other => bail!(
                "row {}: expected must be yes or no, not {other:?}",
                line + 2
            ),
        };
        rows.push((record.get(0).unwrap_or_default().to_owned(), expected));
    }
    if rows.is_empty() {
        bail!("no rows");
    }
    Ok(rows)
}

/// [`read_labelled_csv`] from any reader; errors name the row.
pub(crate) fn parse_labelled_csv(input: impl std::io::Read) -> Result<Vec<(String, String)>> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("row {}", i + 2))?;
        if rec.len() < 2 {
            bail!("row {} has fewer than two columns", i + 2);
        }
        let (text, label) = (rec[0].trim(), rec[1].trim());
        if !text.is_empty() && !label.is_empty() {
            out.push((text.to_string(), label.to_string()));
        }
    }
    if out.is_empty() {
        bail!("no labelled rows");
    }
    Ok(out)
}

/// Accuracy and macro-F1 over the labels that occur in `gold`.
pub fn scores(gold: &[&str], predicted: &[&str]) -> (f64, f64) {
    let n = gold.len().max(1) as f64;
    let correct = gold.iter().zip(predicted).filter(|(g, p)| g == p).count() as f64;
    let mut stats: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new(); // tp, fp, fn
    for g in gold {
        stats.entry(g).or_default();
    }
    for (g, p) in gold.iter().zip(predicted) {
        if g == p {
            stats.entry(g).or_default().0 += 1.0;
        } else {
            if let Some(s) = stats.get_mut(p) {
                s.1 += 1.0;
            }
            stats.entry(g).or_default().2 += 1.0;
        }
    }
    let f1s: Vec<f64> = stats
        .values()
        .map(|&(tp, fp, fneg)| {
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fneg)
            }
        })
        .collect();
    (
        correct / n,
        f1s.iter().sum::<f64>() / f1s.len().max(1) as f64,
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(gold: &[&str], predicted: &[&str], mut latencies_ms: Vec<f64>) -> String {
    let (acc, f1) = scores(gold, predicted);
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    format!(
        "accuracy={acc:.4} macro_f1={f1:.4} n={} p50_ms={:.1} p99_ms={:.1}",
        gold.len(),
        percentile(&latencies_ms, 0.5),
        percentile(&latencies_ms, 0.99)
    )
}

/// Trains the intent model on `train_csv` (text,intent) with the MiniLM embedder from
/// `models_dir`, then classifies every row of `test_csv` one at a time (embedding included).
pub fn intents(train_csv: &Path, test_csv: &Path, models_dir: &Path) -> Result<String> {
    let train = read_labelled_csv(train_csv)?;
    let test = read_labelled_csv(test_csv)?;
    let embedder = load_embedder(models_dir)?;
    eprintln!(
        "intents: training on {} examples from {}",
        train.len(),
        train_csv.display()
    );
    let start = Instant::now();
    let model = IntentModel::train(&train, Some(&embedder))?;
    let train_s = start.elapsed().as_secs_f64();
    eprintln!(
        "intents: trained {} intents in {train_s:.1}s",
        model.intents().len()
    );
    let mut predicted = Vec::with_capacity(test.len());
    let mut latencies = Vec::with_capacity(test.len());
    let mut embedding_ms = Vec::with_capacity(test.len());
    let mut out_of_scope = 0;
    for (i, (text, _)) in test.iter().enumerate() {
        let t = Instant::now();
        let embedding = embedder.embed(&[text])?.remove(0);
        embedding_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let p = model.classify_with_embedding(text, Some(&embedding));
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        out_of_scope += usize::from(p.out_of_scope);
        predicted.push(p.intent);
        if (i + 1) % 500 == 0 {
            eprintln!("intents: classified {}/{}", i + 1, test.len());
        }
    }
    eprintln!(
        "intents: {out_of_scope} of {} flagged out of scope (scored by their best intent)",
        test.len()
    );
    let gold: Vec<&str> = test.iter().map(|(_, l)| l.as_str()).collect();
    let pred: Vec<&str> = predicted.iter().map(String::as_str).collect();
    let line = summary(&gold, &pred, latencies);
    embedding_ms.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "intents: train_s={train_s:.1} {line} (embedding alone p50_ms={:.1} p99_ms={:.1})",
        percentile(&embedding_ms, 0.5),
        percentile(&embedding_ms, 0.99)
    );
    Ok(line)
}

/// Scores the bundled sentiment model (or the one saved at `model`) on `test_csv`
/// (text,sentiment), with the sentence
/// embedding from `models_dir` as the service computes it. With labels
/// negative/neutral/positive the five levels are merged into three; with only
/// negative/positive the sign of the score decides.
pub fn sentiment(test_csv: &Path, model: Option<&Path>, models_dir: &Path) -> Result<String> {
    let embedder = load_embedder(models_dir)?;
    match model {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let model = SentimentModel::from_bytes(&bytes)
                .with_context(|| format!("loading the sentiment model {}", path.display()))?;
            sentiment_with(&model, Some(&embedder), test_csv)
        }
        None => sentiment_with(SentimentModel::bundled(), Some(&embedder), test_csv),
    }
}

/// The encoder for an evaluation, which needs it: an error names the folder and the fix.
pub fn load_embedder(models_dir: &Path) -> Result<Embedder> {
    Embedder::from_models_dir(models_dir).with_context(|| {
        format!(
            "loading the embedding model from {} (run `make models`)",
            models_dir.display()
        )
    })
}

/// As [`sentiment`], for any model, with or without embeddings.
pub fn sentiment_with(
    model: &SentimentModel,
    embedder: Option<&Embedder>,
    test_csv: &Path,
) -> Result<String> {
    let test = read_labelled_csv(test_csv)?;
    let three_way = test.iter().any(|(_, l)| l == "neutral");
    eprintln!(
        "sentiment: {} rows from {} ({})",
        test.len(),
        test_csv.display(),
        if three_way { "3 classes" } else { "polarity" }
    );
    let mut predicted = Vec::with_capacity(test.len());
    let mut latencies = Vec::with_capacity(test.len());
    for (text, _) in &test {
        let t = Instant::now();
        let embedding = match embedder {
            Some(e) => e.embed(&[text.as_str()])?.pop(),
            None => None,
        };
        let a = model.analyze(text, embedding.as_deref());
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        predicted.push(if three_way {
            a.level.polarity()
        } else {
            a.sign()
        });
    }
    let gold: Vec<&str> = test.iter().map(|(_, l)| l.as_str()).collect();
    Ok(summary(&gold, &predicted, latencies))
}

/// Hyper-parameters of the sentiment model; the defaults were chosen on the validation
/// splits of `eval/split.py` and the cross-domain sets in `eval/sentiment`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentimentConfig {
    /// Inverse regularisation strength.
    pub c: f32,
    /// Terms kept in the model (the bundled artefact must stay small).
    pub terms: usize,
    /// Weight of each row of the bundled seed set.
    pub seed_weight: f32,
    /// Scale of the sentence embedding against the sparse block (each has unit norm).
    pub dense_weight: f32,
    pub char_min: usize,
    pub char_max: usize,
    pub cjk_min: usize,
    pub cjk_max: usize,
    /// Mark the words after an English negation.
    pub negation: bool,
    /// Add the Chinese sentiment lexicon's reading to the features.
    pub lexicon: bool,
}

impl Default for SentimentConfig {
    fn default() -> Self {
        Self {
            c: 4.0,
            terms: 60_000,
            seed_weight: 5.0,
            dense_weight: 1.0,
            char_min: 2,
            char_max: 5,
            cjk_min: 1,
            cjk_max: 3,
            negation: true,
            lexicon: true,
        }
    }
}

/// Hand-written customer messages and reviews from domains the public corpora do not
/// cover (products, hotels, banking, telecom, service requests), in English and Chinese,
/// and Chinese reviews of thirteen more domains (books, appliances, clothing, groceries,
/// cosmetics, toys, furniture, travel, games, couriers...), all written for kefu.
static SEEDS: [&str; 2] = [
    include_str!("../assets/sentiment_seed.csv"),
    include_str!("../assets/sentiment_seed_zh_domains.csv"),
];

fn seed_rows() -> Result<Vec<(String, String)>> {
    let mut seeds = Vec::new();
    for seed in SEEDS {
        seeds.extend(parse_labelled_csv(seed.as_bytes()).context("reading a bundled seed set")?);
    }
    Ok(seeds)
}

/// Trains the sentiment model from labelled rows (labels negative / neutral / positive)
/// plus the seed set; with an embedder, the sentence embedding is a second view.
pub fn train_sentiment_model(
    rows: &[(String, String)],
    config: &SentimentConfig,
    embedder: Option<&Embedder>,
) -> Result<SentimentModel> {
    let rows: Vec<(String, String)> = rows.iter().cloned().chain(seed_rows()?).collect();
    let dense = match embedder {
        Some(e) => Some((e.model_id(), embed_rows(e, &rows)?)),
        None => None,
    };
    fit_sentiment(
        &rows,
        dense.as_ref().map(|(id, v)| (*id, v.as_slice())),
        config,
    )
}

/// The sentence embeddings of the rows' texts.
fn embed_rows(embedder: &Embedder, rows: &[(String, String)]) -> Result<Vec<Vec<f32>>> {
    eprintln!("sentiment: embedding {} rows", rows.len());
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    embedder
        .embed(&texts)
        .context("embedding the training rows")
}

/// Fits the model on `rows`, whose last rows are the seed set, with their embeddings
/// (row by row) and the encoder's name when given.
fn fit_sentiment(
    rows: &[(String, String)],
    dense: Option<(&str, &[Vec<f32>])>,
    config: &SentimentConfig,
) -> Result<SentimentModel> {
    let (encoder, dense) = match dense {
        Some((encoder, vectors)) => (encoder.to_owned(), Some(vectors)),
        None => (String::new(), None),
    };
    let start = Instant::now();
    let n_seeds = seed_rows()?.len();
    let weights: Vec<f32> = std::iter::repeat_n(1.0, rows.len() - n_seeds)
        .chain(std::iter::repeat_n(config.seed_weight, n_seeds))
        .collect();
    let labels: Vec<u32> = rows
        .iter()
        .map(|(_, l)| {
            CLASSES
                .iter()
                .position(|c| c == l)
                .map(|p| p as u32)
                .with_context(|| format!("unknown sentiment label {l:?}"))
        })
        .collect::<Result<_>>()?;
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let dense: Option<Vec<Vec<f32>>> = dense.map(|d| {
        d.iter()
            .map(|r| r.iter().map(|x| x * config.dense_weight).collect())
            .collect()
    });
    let features = FeatureConfig {
        word_ngrams: 2,
        char_min: config.char_min,
        char_max: config.char_max,
        cjk_min: config.cjk_min,
        cjk_max: config.cjk_max,
        word_weight: 1.0,
        char_weight: 1.0,
        min_df: 2,
        negation: config.negation,
        lexicon: config.lexicon,
    };
    let mut vectorizer = Vectorizer::fit(&texts, features);
    let full_terms = vectorizer.len();
    let transform = |v: &Vectorizer| -> Vec<SparseRow> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| v.transform(t)).collect()
    };
    let total: f32 = weights.iter().sum();
    let opts = TrainOptions {
        l2: 1.0 / (config.c * total),
        max_iter: 300,
        tol: 1e-6,
    };
    let fit = |v: &Vectorizer, rows: &[SparseRow], dense: Option<&[Vec<f32>]>| {
        let data = Data {
            sparse: rows,
            dense,
            n_sparse: v.len(),
            labels: &labels,
            weights: Some(&weights),
            n_classes: 3,
        };
        linear::train(&data, opts, None)
    };
    let mut sparse_rows = transform(&vectorizer);
    let mut lexical = fit(&vectorizer, &sparse_rows, None);
    if vectorizer.len() > config.terms {
        // keep the terms with the largest weights, then refit on the pruned vocabulary so
        // that training and inference normalise rows the same way
        let mut importance: Vec<(f32, u32)> = (0..vectorizer.len())
            .map(|c| {
                let w = &lexical.w[c * 3..c * 3 + 3];
                let mean = (w[0] + w[1] + w[2]) / 3.0;
                (
                    w.iter().map(|x| (x - mean).abs()).fold(0.0, f32::max),
                    c as u32,
                )
            })
            .collect();
        importance.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut keep: Vec<u32> = importance[..config.terms].iter().map(|&(_, c)| c).collect();
        keep.sort_unstable();
        vectorizer.retain(&keep);
        sparse_rows = transform(&vectorizer);
        lexical = fit(&vectorizer, &sparse_rows, None);
    }
    let linear = match &dense {
        Some(d) => fit(&vectorizer, &sparse_rows, Some(d)),
        None => lexical.clone(),
    };
    eprintln!(
        "sentiment: trained on {} rows, {} of {} terms kept, embeddings {}, {:.1}s",
        rows.len(),
        vectorizer.len(),
        full_terms,
        if dense.is_some() { "on" } else { "off" },
        start.elapsed().as_secs_f64()
    );
    Ok(SentimentModel::new(
        encoder,
        vectorizer,
        linear,
        config.dense_weight,
        lexical,
    ))
}

/// The Chinese sentiment corpora of other domains (files of `zh_sentiment/`), each read
/// as its own domain: social media (two Weibo sets), car forums, helpdesk dialogues.
pub const ZH_SENTIMENT_DOMAINS: [&str; 4] = [
    "weibo_emotion_smp2020",
    "weibo_emotion_nlpcc2013",
    "car_reviews_bdci2018",
    "helpdesk_satisfaction_stc3",
];

/// The labelled rows of one `zh_sentiment/` domain. A helpdesk dialogue ("客户: ... ||
/// 客服: ...") is labelled with the customer's satisfaction; its customer turns are the
/// text, as kefu reads a customer's messages.
pub fn read_zh_sentiment(dir: &Path, domain: &str) -> Result<Vec<(String, String)>> {
    let rows = read_labelled_csv(&dir.join(format!("{domain}.csv")))?;
    Ok(rows
        .into_iter()
        .filter_map(|(text, label)| {
            if !text.contains(" || ") {
                return Some((text, label));
            }
            let customer: Vec<&str> = text
                .split(" || ")
                .filter_map(|turn| turn.strip_prefix("客户:"))
                .map(str::trim)
                .collect();
            (!customer.is_empty()).then(|| (customer.join(" "), label))
        })
        .collect())
}

/// (text, label) pairs.
type LabelledRows = Vec<(String, String)>;

/// The training sets of the bundled model: airline tweets (en), waimai reviews (zh) and
/// every domain of `zh_sentiment_dir`.
#[derive(Debug, Clone)]
pub struct SentimentSources {
    pub airline_csv: std::path::PathBuf,
    pub waimai_csv: std::path::PathBuf,
    pub zh_sentiment_dir: std::path::PathBuf,
}

impl SentimentSources {
    /// Every source's rows by domain name.
    fn read(&self) -> Result<Vec<(String, LabelledRows)>> {
        let mut domains = vec![
            ("airline".to_string(), read_labelled_csv(&self.airline_csv)?),
            ("waimai".to_string(), read_labelled_csv(&self.waimai_csv)?),
        ];
        for domain in ZH_SENTIMENT_DOMAINS {
            domains.push((
                domain.to_string(),
                read_zh_sentiment(&self.zh_sentiment_dir, domain)?,
            ));
        }
        for (name, rows) in &domains {
            eprintln!("sentiment: {} rows of {name}", rows.len());
        }
        Ok(domains)
    }
}

/// Trains the bundled model's recipe on every source and writes it to `out`.
pub fn train_sentiment(
    sources: &SentimentSources,
    models_dir: &Path,
    out: &Path,
) -> Result<String> {
    let embedder = load_embedder(models_dir)?;
    let rows: Vec<(String, String)> = sources.read()?.into_iter().flat_map(|(_, r)| r).collect();
    write_sentiment_model(&rows, Some(&embedder), out)
}

/// Leave one domain out: for each Chinese domain, a model trained on all the others (and
/// the airline tweets) reads that domain. Polarity accuracy on its negative and positive
/// rows (the sign of the score), and 3-class macro-F1 where it has neutral rows too. One
/// table row per held-out domain on stdout; returns the mean polarity accuracy.
pub fn sentiment_domains(sources: &SentimentSources, models_dir: &Path) -> Result<String> {
    let embedder = load_embedder(models_dir)?;
    let domains = sources.read()?;
    let seeds = seed_rows()?;
    let everything: Vec<(String, String)> = domains
        .iter()
        .flat_map(|(_, r)| r.iter().cloned())
        .chain(seeds.iter().cloned())
        .collect();
    let dense = embed_rows(&embedder, &everything)?;
    let config = SentimentConfig::default();
    println!("| held-out domain | rows | polarity accuracy | 3-class macro-F1 |");
    println!("|---|---|---|---|");
    let mut accuracies = Vec::new();
    let mut at = 0;
    let bounds: Vec<(usize, usize)> = domains
        .iter()
        .map(|(_, r)| {
            at += r.len();
            (at - r.len(), at)
        })
        .collect();
    for (held, (name, test)) in domains
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| n != "airline")
    {
        let (from, to) = bounds[held];
        let (rows, vectors): (Vec<(String, String)>, Vec<Vec<f32>>) = everything
            .iter()
            .zip(&dense)
            .enumerate()
            .filter(|&(i, _)| i < from || i >= to)
            .map(|(_, (row, vector))| (row.clone(), vector.clone()))
            .unzip();
        let model = fit_sentiment(&rows, Some((embedder.model_id(), &vectors)), &config)?;
        let (mut polar, mut polar_right) = (0usize, 0usize);
        let (mut gold, mut predicted) = (Vec::new(), Vec::new());
        for (i, (text, label)) in test.iter().enumerate() {
            let a = model.analyze(text, Some(&dense[from + i]));
            if label != "neutral" {
                polar += 1;
                polar_right += usize::from(a.sign() == label);
            }
            gold.push(label.as_str());
            predicted.push(a.level.polarity());
        }
        let accuracy = polar_right as f64 / polar.max(1) as f64;
        accuracies.push(accuracy);
        let f1 = if gold.contains(&"neutral") {
            format!("{:.4}", scores(&gold, &predicted).1)
        } else {
            "-".to_string()
        };
        println!("| {name} | {} | {accuracy:.4} | {f1} |", test.len());
    }
    Ok(format!(
        "mean polarity accuracy over {} held-out domains: {:.4}",
        accuracies.len(),
        accuracies.iter().sum::<f64>() / accuracies.len().max(1) as f64
    ))
}

fn write_sentiment_model(
    rows: &[(String, String)],
    embedder: Option<&Embedder>,
    out: &Path,
) -> Result<String> {
    let model = train_sentiment_model(rows, &SentimentConfig::default(), embedder)?;
    let bytes = model.to_bytes();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "wrote {} bytes={} terms={} rows={}",
        out.display(),
        bytes.len(),
        model.vocabulary_size(),
        rows.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1() {
        let gold = ["a", "a", "b", "b"];
        let pred = ["a", "b", "b", "b"];
        let (acc, f1) = scores(&gold, &pred);
        assert!((acc - 0.75).abs() < 1e-9);
        // a: tp1 fp0 fn1 -> 2/3; b: tp2 fp1 fn0 -> 4/5
        assert!((f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-9, "{f1}");
    }

    /// A helpdesk dialogue is read as its customer's turns; other rows as written.
    #[test]
    fn helpdesk_dialogues_are_read_as_the_customers_turns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("helpdesk.csv"),
            "text,sentiment,satisfaction_mean\n\
             \"客户: 宽带又断了 || 客服: 您好，已为您报修 || 客户: 三天了还没人来\",negative,-1.2\n\
             \"客服: 您好 || 客服: 请问还在吗\",neutral,0\n\
             这个价格还可以,positive,1\n",
        )
        .unwrap();
        assert_eq!(
            read_zh_sentiment(dir.path(), "helpdesk").unwrap(),
            vec![
                (
                    "宽带又断了 三天了还没人来".to_string(),
                    "negative".to_string()
                ),
                ("这个价格还可以".to_string(), "positive".to_string()),
            ]
        );
    }

    #[test]
    fn sentiment_training_and_eval_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, rows: &[(&str, &str)]| {
            let p = dir.path().join(name);
            let mut s = String::from("text,sentiment\n");
            for (t, l) in rows {
                s.push_str(&format!("\"{t}\",{l}\n"));
            }
            std::fs::write(&p, s).unwrap();
            p
        };
        let mut en = Vec::new();
        for _ in 0..3 {
            en.extend([
                ("great flight, thanks", "positive"),
                ("awful delay, terrible", "negative"),
                ("what time is the flight", "neutral"),
            ]);
        }
        let mut zh = Vec::new();
        for _ in 0..3 {
            zh.extend([
                ("很好吃，很满意", "positive"),
                ("太难吃了，很差", "negative"),
            ]);
        }
        let air = write("air.csv", &en);
        let wm = write("wm.csv", &zh);
        let out = dir.path().join("m.bin");
        let rows: Vec<(String, String)> = read_labelled_csv(&air)
            .unwrap()
            .into_iter()
            .chain(read_labelled_csv(&wm).unwrap())
            .collect();
        let line = write_sentiment_model(&rows, None, &out).unwrap();
        assert!(line.contains("rows=15"), "{line}");
        assert!(line.contains("terms="), "{line}");
        let model = SentimentModel::from_bytes(&std::fs::read(&out).unwrap()).unwrap();
        let line = sentiment_with(&model, None, &wm).unwrap();
        assert!(
            line.starts_with("accuracy=1.0000 macro_f1=1.0000 n=6 "),
            "{line}"
        );
    }
}
