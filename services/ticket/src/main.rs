use clap::Parser;

/// kefu ticket service: ticket lifecycle, VIP queue, SLA and audit trail (gRPC).
#[derive(Parser)]
#[command(name = "kefu-ticket", version)]
struct Cli {
    #[command(flatten)]
    config: kefu_ticket::Config,
    #[command(flatten)]
    telemetry: kefu_runtime::TelemetryArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kefu_runtime::run_service(kefu_ticket::SPEC, &cli.telemetry, |shutdown| {
        kefu_ticket::start(cli.config, shutdown)
    })
    .await
}
