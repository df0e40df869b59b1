use clap::Parser;

/// kefu orchestrator: the per-message workflow across router, sentiment, knowledge and ticket (gRPC).
#[derive(Parser)]
#[command(name = "kefu-orchestrator", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_orchestrator::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_orchestrator::SPEC, &cli.telemetry, |shutdown| {
        kefu_orchestrator::start(cli.config, shutdown)
    })
    .await
}
