//! Readiness follows what a service really depends on: each dependency is a probe,
//! checked periodically; the gRPC health status is SERVING only while all pass.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::shutdown::Shutdown;

/// One dependency of a service (database, cache, downstream service, loaded model).
pub trait Probe: Send + Sync {
    fn name(&self) -> &str;
    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// A readiness condition the service sets itself, e.g. "the index is built".
#[derive(Clone)]
pub struct ReadyFlag {
    name: &'static str,
    ready: Arc<AtomicBool>,
}

impl ReadyFlag {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs a service's start-up work (learning models, building indexes) in the
    /// background and sets the flag once it succeeds; a failure is logged as `failure`
    /// and leaves the service NOT_SERVING.
    pub fn set_once_done<F>(&self, work: F, failure: &'static str)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let ready = self.clone();
        tokio::spawn(async move {
            match work.await {
                Ok(()) => ready.set(true),
                Err(error) => tracing::error!(error = %format!("{error:#}"), "{failure}"),
            }
        });
    }
}

impl Probe for ReadyFlag {
    fn name(&self) -> &str {
        self.name
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(self.is_ready(), "not ready yet");
            Ok(())
        })
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Checks a downstream kefu service through its own gRPC health endpoint.
pub struct DownstreamProbe {
    name: String,
    client: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
}

impl DownstreamProbe {
    pub fn new(name: impl Into<String>, channel: tonic::transport::Channel) -> Self {
        Self {
            name: name.into(),
            client: tonic_health::pb::health_client::HealthClient::new(channel),
        }
    }
}

impl Probe for DownstreamProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(PROBE_TIMEOUT);
            let mut client = self.client.clone();
            let status = tokio::time::timeout(PROBE_TIMEOUT, client.check(request))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {PROBE_TIMEOUT:?}"))??
                .into_inner()
                .status;
            anyhow::ensure!(
                status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "not serving"
            );
            Ok(())
        })
    }
}

pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The health service name that answers SERVING for as long as the process runs and
/// is not shutting down, whatever its dependencies do: what a liveness probe checks,
/// so that an outage of a shared dependency (Redis, the database) makes pods unready
/// instead of restarting every one of them.
pub const LIVENESS_SERVICE: &str = "liveness";

/// Re-evaluates the probes until shutdown and publishes the result for the overall
/// status ("") and every gRPC service name of the server. On shutdown everything turns
/// NOT_SERVING first, so that load balancers stop sending before the listener closes.
pub(crate) async fn watch(
    reporter: HealthReporter,
    service_label: String,
    grpc_services: Vec<&'static str>,
    probes: Vec<Arc<dyn Probe>>,
    shutdown: Shutdown,
) {
    let mut last: Option<bool> = None;
    loop {
        let mut failures = Vec::new();
        for probe in &probes {
            if let Err(error) = probe.check().await {
                failures.push(format!("{}: {error:#}", probe.name()));
            }
        }
        let serving = failures.is_empty() && !shutdown.is_triggered();
        if last != Some(serving) {
            if serving {
                tracing::info!(service = %service_label, "serving");
            } else {
                tracing::warn!(service = %service_label, failing = ?failures, "not serving");
            }
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            for name in &grpc_services {
                reporter.set_service_status(*name, status).await;
            }
            metrics::gauge!("kefu_health_status", "service" => service_label.clone())
                .set(if serving { 1.0 } else { 0.0 });
            last = Some(serving);
        }
        if shutdown.is_triggered() {
            reporter
                .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
                .await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.wait() => {}
        }
    }
}
