use clap::Parser;

/// kefu router: intent classification learned from each tenant's examples (gRPC).
#[derive(Parser)]
#[command(name = "kefu-router", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_router::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_router::SPEC, &cli.telemetry, |shutdown| {
        kefu_router::start(cli.config, shutdown)
    })
    .await
}
