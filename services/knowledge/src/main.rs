use clap::Parser;

/// kefu knowledge: hybrid retrieval over each tenant's documents (gRPC).
#[derive(Parser)]
#[command(name = "kefu-knowledge", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_knowledge::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_knowledge::SPEC, &cli.telemetry, |shutdown| {
        kefu_knowledge::start(cli.config, shutdown)
    })
    .await
}
