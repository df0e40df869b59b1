//! Outgoing calls: lazily connected channels with a deadline on every call, trace
//! context and metrics from the client layer, and bounded retries of transient failures.
use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;

use crate::layers::{ClientTelemetry, ClientTelemetryLayer};

/// The channel type every generated kefu client is built on.
pub type GrpcChannel = ClientTelemetry<Channel>;

/// A channel to `url` for `caller` (the calling service's full name, for metrics).
/// It connects on first use and reconnects by itself, so services may start in any order.
pub fn channel(
    caller: &str,
    target: &str,
    url: &str,
    deadline: Duration,
) -> anyhow::Result<GrpcChannel> {
    let channel = raw_channel(url, deadline)?;
    Ok(ServiceBuilder::new()
        .layer(ClientTelemetryLayer::new(caller, target, deadline))
        .service(channel))
}

/// A plain channel (no telemetry), e.g. for health probes of downstream services.
pub fn raw_channel(url: &str, deadline: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("invalid service URL {url:?}: {error}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(deadline)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// Runs an idempotent call, retrying it (at most twice, with backoff) while the peer is
/// unavailable, e.g. restarting or not yet listening. Other errors return at once.
pub async fn with_retry<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(status)
                if status.code() == tonic::Code::Unavailable && attempt < RETRY_BACKOFF.len() =>
            {
                tracing::debug!(attempt, error = %status.message(), "retrying unavailable peer");
                tokio::time::sleep(RETRY_BACKOFF[attempt]).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn retries_only_unavailable_and_gives_up() {
        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = with_retry(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = with_retry(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::invalid_argument("bad"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn rejects_malformed_urls() {
        assert!(raw_channel("not a url", Duration::from_secs(1)).is_err());
    }
}
