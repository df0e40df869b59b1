use clap::Parser;

/// kefu sentiment service: five-level sentiment of a message (gRPC).
#[derive(Parser)]
#[command(name = "kefu-sentiment", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_sentiment::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_sentiment::SPEC, &cli.telemetry, |shutdown| {
        kefu_sentiment::start(cli.config, shutdown)
    })
    .await
}
