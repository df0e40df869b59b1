//! Outgoing calls: lazily connected channels with a deadline on every call, trace
//! context and metrics from the client layer, and bounded retries of transient failures.
use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::ServiceBuilder;

use crate::layers::{ClientTelemetry, ClientTelemetryLayer};
use crate::{ClientArgs, TlsArgs};

/// The channel type every generated kefu client is built on.
pub type GrpcChannel = ClientTelemetry<Channel>;

/// Makes the channels of one service to the others, all the same way: the deadline,
/// TLS when configured, telemetry.
#[derive(Clone)]
pub struct Connector {
    caller: String,
    deadline: Duration,
    tls: Option<ClientTlsConfig>,
}

impl Connector {
    /// For `caller` (the calling service's full name, for metrics).
    pub fn new(caller: &str, clients: &ClientArgs, tls: &TlsArgs) -> anyhow::Result<Self> {
        Ok(Self {
            caller: caller.to_owned(),
            deadline: clients.call_timeout(),
            tls: tls.client()?,
        })
    }

    /// A channel to `url`. It connects on first use and reconnects by itself, so
    /// services may start in any order.
    pub fn channel(&self, target: &str, url: &str) -> anyhow::Result<GrpcChannel> {
        let channel = self.raw_channel(url)?;
        Ok(ServiceBuilder::new()
            .layer(ClientTelemetryLayer::new(
                &self.caller,
                target,
                self.deadline,
            ))
            .service(channel))
    }

    /// A plain channel (no telemetry), e.g. for health probes of downstream services.
    pub fn raw_channel(&self, url: &str) -> anyhow::Result<Channel> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|error| anyhow::anyhow!("invalid service URL {url:?}: {error}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.deadline)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            anyhow::ensure!(
                url.starts_with("https://"),
                "{url}: with KEFU_TLS_CA set, kefu services are called over TLS (https:// URLs)"
            );
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| anyhow::anyhow!("TLS settings for {url}: {error}"))?;
        }
        Ok(endpoint.connect_lazy())
    }
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

    #[tokio::test]
    async fn rejects_malformed_urls_and_plaintext_under_tls() {
        let clients = ClientArgs {
            call_timeout_ms: 1000,
        };
        let plain = Connector::new("test", &clients, &TlsArgs::default()).unwrap();
        assert!(plain.raw_channel("not a url").is_err());
        assert!(plain.raw_channel("http://127.0.0.1:1").is_ok());
    }
}
