//! The one place where kefu servers and clients are built. A service hands over its
//! tonic routes and its readiness probes; everything else (health, reflection, tracing,
//! metrics, deadlines, concurrency limits, graceful shutdown) is done here the same way
//! for all six services.

mod balance;
pub mod client;
pub mod config;
pub mod health;
mod layers;
pub mod metrics;
pub mod principal;
pub mod resilience;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tenants;
pub mod tls;

pub use client::{Connector, GrpcChannel};
pub use config::{
    ClientArgs, ContentArgs, ContentServiceArgs, DataArgs, ModelArgs, ServerArgs, ServiceArgs,
    ServiceSpec,
};
pub use health::{Probe, ReadyFlag};
pub use principal::{Principal, Role};
pub use retry::RetryPolicy;
pub use server::{serve_http, RunningServer, Server};
pub use shutdown::Shutdown;
pub use telemetry::TelemetryArgs;
pub use tenants::LiveTenants;
pub use tls::TlsArgs;

/// The whole `main.rs` of a per-service binary. Its doc comment is the `--help` text,
/// the binary is named after its package, and the service crate named last provides
/// `Config` (its flags), `SPEC` and `start`:
///
/// ```ignore
/// kefu_runtime::service_main! {
///     /// kefu ticket service: ticket lifecycle, VIP queue, SLA and audit trail (gRPC).
///     kefu_ticket
/// }
/// ```
#[macro_export]
macro_rules! service_main {
    ($(#[doc = $doc:literal])+ $service:ident) => {
        $(#[doc = $doc])+
        #[derive(clap::Parser)]
        #[command(version)]
        struct Cli {
            #[command(flatten)]
            config: $service::Config,
            #[command(flatten)]
            telemetry: $crate::TelemetryArgs,
        }

        #[tokio::main]
        async fn main() -> std::process::ExitCode {
            let cli = <Cli as clap::Parser>::parse();
            $crate::run_service($service::SPEC, &cli.telemetry, |shutdown| {
                $service::start(cli.config, shutdown)
            })
            .await
        }
    };
}

/// What every per-service `main` does: telemetry, start, serve until SIGTERM, drain.
pub async fn run_service<F, Fut>(
    spec: ServiceSpec,
    telemetry: &TelemetryArgs,
    start: F,
) -> std::process::ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<RunningServer>>,
{
    let _telemetry = match telemetry::init(&spec.full_name(), telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = Shutdown::on_signals();
    let result = match start(shutdown.clone()).await {
        Ok(server) => server.wait().await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "{} failed", spec.full_name());
            std::process::ExitCode::FAILURE
        }
    }
}
