use clap::Parser;

/// kefu gateway: the public gRPC API (conversations and tickets), authenticated and validated.
#[derive(Parser)]
#[command(name = "kefu-gateway", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_gateway::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_gateway::SPEC, &cli.telemetry, |shutdown| {
        kefu_gateway::start(cli.config, shutdown)
    })
    .await
}
