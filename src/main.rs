//! `kefu`: the whole platform in one binary for local work (`kefu up`), database
//! migrations, and the evaluation and training commands of the language models.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kefu::UpArgs;
use kefu_runtime::{DataArgs, ModelArgs, Shutdown};

#[derive(Parser)]
#[command(
    name = "kefu",
    version,
    about = "kefu: multi-agent customer service over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `kefu up` carries every service's settings; the command is parsed once at start, so its
// size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start all seven services in this process, each on its own port, talking over gRPC.
    Up(UpArgs),
    /// Apply the database migrations to DATABASE_URL (also done by every service at start).
    Migrate {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Measure the language models on labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Train the bundled sentiment and hand-off models from the development datasets.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Load a running kefu through its gateway and report turns/s, latency and errors.
    Bench(kefu::bench::BenchArgs),
    /// Load a PostgreSQL database of its own with a million turns and time the support report.
    BenchReports(kefu::report_bench::ReportBenchArgs),
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Train the router on TRAIN.csv (text,intent) exactly as a tenant's intents, classify TEST.csv.
    Intents {
        #[arg(long)]
        train: PathBuf,
        #[arg(long)]
        test: PathBuf,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Run the bundled sentiment model on TEST.csv (text,sentiment), embedding included.
    Sentiment {
        #[arg(long)]
        test: PathBuf,
        /// Evaluate this model file (from `kefu train sentiment`) instead of the bundled one,
        /// e.g. one trained without the validation rows.
        #[arg(long, value_name = "MODEL.bin")]
        model: Option<PathBuf>,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Send each row of TEST.csv (text,expected: yes|no) as a new conversation's first
    /// message through a private stack; precision and recall of the hand-off decision.
    Escalation {
        #[arg(long)]
        test: PathBuf,
        #[arg(long, default_value = "demo")]
        tenant: String,
        #[arg(long, default_value = "tenants")]
        tenants_dir: PathBuf,
        /// Fail when more than this share (0-1) of the answerable messages is handed off,
        /// or of the others is not (a check of the committed models).
        #[arg(long, value_name = "SHARE", value_parser = share)]
        max_wrong: Option<f64>,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Leave one domain out: per Chinese sentiment domain, a model trained on the others
    /// reads it (a table on stdout).
    SentimentDomains {
        #[command(flatten)]
        sources: SentimentSourceArgs,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Ingest DOCS.jsonl as a tenant's documents, run QUERIES.csv (text,doc_id) through search.
    Retrieval {
        #[arg(long)]
        docs: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        /// Fail when kefu's MRR@10 is below this (a check of the committed models).
        #[arg(long, value_name = "MRR", value_parser = share)]
        min_mrr: Option<f64>,
        #[command(flatten)]
        models: ModelArgs,
    },
}

/// The sentiment training sets.
#[derive(clap::Args)]
struct SentimentSourceArgs {
    /// Airline tweets (English), text,sentiment.
    #[arg(long, default_value = "../shared/datasets/airline_sentiment/train.csv")]
    airline: PathBuf,
    /// Food-delivery reviews (Chinese), text,sentiment.
    #[arg(long, default_value = "../shared/datasets/waimai_sentiment/train.csv")]
    waimai: PathBuf,
    /// The folder of Chinese sentiment from other domains (Weibo, car forums, helpdesk).
    #[arg(long, default_value = "../shared/datasets/zh_sentiment")]
    zh_sentiment: PathBuf,
}

impl SentimentSourceArgs {
    fn sources(self) -> kefu_nlp::eval::SentimentSources {
        kefu_nlp::eval::SentimentSources {
            airline_csv: self.airline,
            waimai_csv: self.waimai,
            zh_sentiment_dir: self.zh_sentiment,
        }
    }
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Train the sentiment model on airline tweets (en), waimai reviews and the Chinese
    /// sentiment of other domains.
    Sentiment {
        #[command(flatten)]
        sources: SentimentSourceArgs,
        #[arg(long, default_value = "crates/kefu-nlp/assets/sentiment.bin")]
        out: PathBuf,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Train the hand-off model (does the customer need a person?) on the hand-written
    /// messages of crates/kefu-nlp/assets/handoff_seed.csv.
    Handoff {
        /// Validation files (text,expected) none of whose messages may be trained on.
        #[arg(long = "held-out", value_name = "CSV")]
        held_out: Vec<PathBuf>,
        #[arg(long, default_value = "crates/kefu-nlp/assets/handoff.bin")]
        out: PathBuf,
        #[command(flatten)]
        models: ModelArgs,
    },
}

impl EvalCommand {
    /// The command's summary line.
    fn run(self) -> anyhow::Result<String> {
        match self {
            EvalCommand::Intents {
                train,
                test,
                models,
            } => kefu_nlp::eval::intents(&train, &test, &models.models_dir),
            EvalCommand::Sentiment {
                test,
                model,
                models,
            } => kefu_nlp::eval::sentiment(&test, model.as_deref(), &models.models_dir),
            EvalCommand::SentimentDomains { sources, models } => {
                kefu_nlp::eval::sentiment_domains(&sources.sources(), &models.models_dir)
            }
            EvalCommand::Escalation {
                test,
                tenant,
                tenants_dir,
                max_wrong,
                models,
            } => tokio_runtime()?.block_on(kefu::escalation_eval::escalation(
                &test,
                &tenant,
                &tenants_dir,
                &models.models_dir,
                max_wrong,
            )),
            EvalCommand::Retrieval {
                docs,
                queries,
                min_mrr,
                models,
            } => kefu_search::eval::retrieval(&docs, &queries, &models.models_dir, min_mrr),
        }
    }
}

async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let _telemetry = kefu_runtime::telemetry::init("kefu", &args.telemetry)?;
    let shutdown = Shutdown::on_signals();
    let servers = match kefu::up(args, shutdown.clone()).await {
        Ok(servers) => servers,
        Err(error) => {
            shutdown.trigger();
            return Err(error);
        }
    };
    let gateway = servers
        .iter()
        .find(|server| server.spec.name == kefu_runtime::ServiceSpec::GATEWAY.name)
        .map(|server| server.grpc_addr)
        .expect("kefu up starts a gateway");
    eprintln!(
        "kefu is starting; the models load in the background (health turns SERVING when ready):"
    );
    for server in &servers {
        eprintln!(
            "  {:<13} grpc {}  metrics http://{}/metrics",
            server.spec.name, server.grpc_addr, server.metrics_addr
        );
    }
    eprintln!(
        "try: grpcurl -plaintext -d '{{\"tenant_id\":\"demo\",\"customer_id\":\"c1\",\"text\":\"How much is the Pro plan?\"}}' {gateway} kefu.v1.ConversationService/SendMessage"
    );
    eprintln!("stop with Ctrl-C");
    for server in servers {
        server.wait().await?;
    }
    Ok(())
}

/// A number from 0 to 1; any other would make a check always pass or always fail.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        Ok(_) => Err("must be between 0 and 1".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

fn print_line(result: anyhow::Result<String>) -> anyhow::Result<()> {
    println!("{}", result?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => {
            tokio_runtime().and_then(|rt| print_line(rt.block_on(kefu::bench::run(args))))
        }
        Command::BenchReports(args) => {
            tokio_runtime().and_then(|rt| print_line(rt.block_on(kefu::report_bench::run(args))))
        }
        Command::Up(args) => tokio_runtime().and_then(|rt| rt.block_on(run_up(args))),
        Command::Migrate { data } => tokio_runtime().and_then(|rt| {
            rt.block_on(async {
                kefu_storage::Database::connect(&data.database_url()).await?;
                eprintln!("migrations applied");
                Ok(())
            })
        }),
        Command::Eval(eval) => print_line(eval.run()),
        Command::Train(TrainCommand::Sentiment {
            sources,
            out,
            models,
        }) => print_line(kefu_nlp::eval::train_sentiment(
            &sources.sources(),
            &models.models_dir,
            &out,
        )),
        Command::Train(TrainCommand::Handoff {
            held_out,
            out,
            models,
        }) => {
            let held_out: Vec<&std::path::Path> = held_out.iter().map(PathBuf::as_path).collect();
            print_line(kefu_nlp::handoff::train(
                &held_out,
                &models.models_dir,
                &out,
            ))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escalation_with(max_wrong: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([
            "kefu",
            "eval",
            "escalation",
            "--test",
            "set.csv",
            &format!("--max-wrong={max_wrong}"),
        ])
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        for bad in ["1.5", "-0.1", "NaN", "a fifth"] {
            let error = escalation_with(bad).err().expect(bad);
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad}"
            );
        }
        for good in ["0", "0.2", "1"] {
            escalation_with(good).expect(good);
        }
    }
}
