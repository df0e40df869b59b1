//! Prometheus metrics: one process-wide recorder; each service serves its own
//! `/metrics` port showing the series labelled with its name, so that `kefu up`
//! (six services in one process) looks to Prometheus like six separate targets.
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shutdown::Shutdown;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const RESOLUTION_BUCKETS: &[f64] = &[
    60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 28800.0, 86400.0, 259200.0,
];
/// Hand-off to first agent reply: 30 s is the VIP target.
const FIRST_RESPONSE_BUCKETS: &[f64] = &[
    5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];
/// Satisfaction ratings are the integers 1..=5.
const CSAT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("kefu_ticket_resolution_seconds".into()),
                RESOLUTION_BUCKETS,
            )
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("kefu_handoff_first_response_seconds".into()),
                    FIRST_RESPONSE_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder
                    .set_buckets_for_metric(Matcher::Full("kefu_csat_score".into()), CSAT_BUCKETS)
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("the metrics recorder is installed once per process");
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

/// The exposition text restricted to one service's series.
pub fn render_for(service: &str) -> String {
    filter_service(&handle().render(), service)
}

fn filter_service(exposition: &str, service: &str) -> String {
    let label = format!("service=\"{service}\"");
    let mut out = String::new();
    let mut pending_comments = Vec::new();
    for line in exposition.lines() {
        if line.starts_with('#') {
            pending_comments.push(line);
        } else if line.contains(&label) {
            for comment in pending_comments.drain(..) {
                out.push_str(comment);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        } else if line.trim().is_empty() {
            pending_comments.clear();
        }
    }
    out
}

/// Serves `GET /metrics` for `service` until shutdown; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    service: String,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    handle();
    metrics::gauge!("kefu_build_info", "service" => service.clone(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let service = service.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    render_for(&service),
                )
            }
        }),
    );
    crate::server::serve_http("metrics", addr, app, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_services_series_with_their_comments() {
        let text = "# TYPE a counter\na{service=\"kefu-router\"} 1\na{service=\"kefu-ticket\"} 2\n\n# TYPE b gauge\nb{service=\"kefu-ticket\"} 3\n";
        let filtered = filter_service(text, "kefu-router");
        assert_eq!(filtered, "# TYPE a counter\na{service=\"kefu-router\"} 1\n");
        let filtered = filter_service(text, "kefu-ticket");
        assert!(filtered.contains("# TYPE b gauge\nb{service=\"kefu-ticket\"} 3"));
        assert!(!filtered.contains("kefu-router"));
    }
}
