//! Outgoing calls: lazily connected channels with what is left of the caller's deadline,
//! retries of calls that did not reach their peer (see `resilience`), trace context and
//! metrics from the client layer.
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::ServiceBuilder;

use crate::balance::{Balanced, ChannelTo};
use crate::layers::{ClientTelemetry, ClientTelemetryLayer};
use crate::resilience::{Resilient, RetryBudget};
use crate::{ClientArgs, TlsArgs};

/// The channel type every generated kefu client is built on.
pub type GrpcChannel = ClientTelemetry<Resilient<Balanced>>;

/// Makes the channels of one service to the others, all the same way: the deadline,
/// TLS when configured, telemetry.
#[derive(Clone)]
pub struct Connector {
    caller: String,
    deadline: Duration,
    tls: Option<ClientTlsConfig>,
    budget: RetryBudget,
    dns_refresh: Duration,
}

impl Connector {
    /// For `caller` (the calling service's full name, for metrics).
    pub fn new(caller: &str, clients: &ClientArgs, tls: &TlsArgs) -> anyhow::Result<Self> {
        Ok(Self {
            caller: caller.to_owned(),
            deadline: clients.call_timeout(),
            tls: tls.client()?,
            budget: RetryBudget::default(),
            dns_refresh: clients.dns_refresh(),
        })
    }

    /// A channel to every replica behind `url`'s host name (see `balance`). Each
    /// replica connects on first use and reconnects by itself, so services may start
    /// in any order. Must be called within the Tokio runtime.
    pub fn channel(&self, target: &str, url: &str) -> anyhow::Result<GrpcChannel> {
        let uri = self.endpoint(url, None)?.uri().clone();
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("service URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connector = self.clone();
        let tls_name = host.clone();
        let channel_to: ChannelTo = std::sync::Arc::new(move |address| {
            let scheme = if https { "https" } else { "http" };
            connector
                .endpoint(&format!("{scheme}://{address}"), Some(&tls_name))
                .expect("the service URL's settings were accepted above")
                .connect_lazy()
        });
        let balanced = Balanced::new(host, port, channel_to, self.dns_refresh);
        let channel = Resilient::new(balanced, self.budget.clone(), self.deadline);
        Ok(ServiceBuilder::new()
            .layer(ClientTelemetryLayer::new(&self.caller, target))
            .service(channel))
    }

    /// A plain channel (no telemetry), e.g. for health probes of downstream services.
    pub fn raw_channel(&self, url: &str) -> anyhow::Result<Channel> {
        Ok(self.endpoint(url, None)?.connect_lazy())
    }

    /// How every channel to `url` is made. With TLS the server's certificate is checked
    /// against `tls_name` (the service's name when `url` holds one replica's address),
    /// or else the URL's host.
    fn endpoint(&self, url: &str, tls_name: Option<&str>) -> anyhow::Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|error| anyhow::anyhow!("invalid service URL {url:?}: {error}"))?
            // No per-request timeout here: `Resilient` enforces what is left of the
            // caller's deadline and answers DEADLINE_EXCEEDED, not a transport error.
            // A peer busy with CPU-heavy work may accept slowly; the call's deadline
            // bounds the wait anyway.
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            anyhow::ensure!(
                url.starts_with("https://"),
                "{url}: with KEFU_TLS_CA set, kefu services are called over TLS (https:// URLs)"
            );
            let host = tls_name
                .or(endpoint.uri().host())
                .unwrap_or_default()
                .to_owned();
            endpoint = endpoint
                .tls_config(tls.clone().domain_name(host))
                .map_err(|error| anyhow::anyhow!("TLS settings for {url}: {error}"))?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connector without TLS whose calls have one second.
    fn plain_connector() -> Connector {
        let clients = ClientArgs {
            call_timeout_ms: 1000,
            ..Default::default()
        };
        Connector::new("test", &clients, &TlsArgs::default()).unwrap()
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_unavailable_and_a_spent_deadline_is_not_called() {
        let connector = plain_connector();
        let [port] = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            [listener.local_addr().unwrap().port()]
        };
        let channel = connector
            .channel("kefu-ticket", &format!("http://127.0.0.1:{port}"))
            .unwrap();
        let mut client = kefu_proto::v1::ticket_service_client::TicketServiceClient::new(channel);
        for repeatable in [true, false] {
            let status = if repeatable {
                client
                    .get_ticket(kefu_proto::v1::GetTicketRequest::default())
                    .await
                    .map(drop)
            } else {
                client
                    .next_in_queue(kefu_proto::v1::NextInQueueRequest::default())
                    .await
                    .map(drop)
            }
            .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
        let spent = crate::resilience::with_deadline(std::time::Instant::now(), async {
            client
                .get_ticket(kefu_proto::v1::GetTicketRequest::default())
                .await
        })
        .await
        .unwrap_err();
        assert_eq!(spent.code(), tonic::Code::DeadlineExceeded);
    }

    /// A peer that dies mid-answer (its sockets closed, as the kernel closes a killed
    /// process's) leaves its caller UNAVAILABLE, which callers retry, never UNKNOWN.
    #[tokio::test]
    async fn an_answer_cut_off_by_a_broken_connection_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sockets = accepted.clone();
        let incoming = futures::stream::unfold(listener, move |listener| {
            let sockets = sockets.clone();
            async move {
                let connection = listener.accept().await.and_then(|(stream, _)| {
                    let stream = stream.into_std()?;
                    sockets.lock().unwrap().push(stream.try_clone()?);
                    tokio::net::TcpStream::from_std(stream)
                });
                Some((connection, listener))
            }
        });
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );

        let channel = plain_connector()
            .channel("kefu-orchestrator", &format!("http://127.0.0.1:{port}"))
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut answer = client
            .watch(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            answer.message().await.unwrap().is_some(),
            "the first status"
        );
        for socket in accepted.lock().unwrap().iter() {
            socket.shutdown(std::net::Shutdown::Both).unwrap();
        }
        let status = answer.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    #[tokio::test]
    async fn rejects_malformed_urls_and_plaintext_under_tls() {
        let plain = plain_connector();
        assert!(plain.raw_channel("not a url").is_err());
        assert!(plain.raw_channel("http://127.0.0.1:1").is_ok());
    }
}
