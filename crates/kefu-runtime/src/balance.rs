//! Calls spread over every replica of a service. A Kubernetes Service's virtual IP would
//! carry all of one caller's calls over one HTTP/2 connection to one pod, so the pods an
//! HPA adds would take no traffic. Instead the service's DNS name (a headless Service)
//! is resolved again and again; each address gets its own lazily connected channel, and
//! each call goes to the less busy of two neighbouring replicas (in-flight calls). A
//! failed lookup keeps the replicas already known; a vanished address is dropped at the
//! next lookup.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call through `Balanced` failed without an answer.
#[derive(Debug)]
pub struct CallError {
    /// False when no connection could be made: the request was never sent, so any
    /// method may be tried again (on another replica).
    pub reached_peer: bool,
    source: BoxError,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        let mut cause = self.source.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for CallError {}

impl CallError {
    fn new(source: BoxError) -> Self {
        let mut reached_peer = true;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                if matches!(
                    io.kind(),
                    ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
                ) {
                    reached_peer = false;
                }
            }
            cause = error.source();
        }
        Self {
            reached_peer,
            source,
        }
    }
}

/// How long a replica that could not be reached is passed over.
const PASS_OVER: Duration = Duration::from_secs(1);

/// Makes the (lazily connected) channel to one replica's address.
pub type ChannelTo = Arc<dyn Fn(SocketAddr) -> Channel + Send + Sync>;

/// One replica: its address, its channel and the calls it is serving now.
#[derive(Clone)]
struct Replica {
    address: SocketAddr,
    channel: Channel,
    in_flight: Arc<AtomicUsize>,
    /// Until when (ms since `EPOCH`) calls avoid this replica: it could not be reached.
    unreachable_until: Arc<AtomicU64>,
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Replica {
    fn reachable(&self, now: u64) -> bool {
        self.unreachable_until.load(Ordering::Relaxed) <= now
    }
}

/// What the last lookup found; `None` until the first lookup has answered.
type Replicas = Option<Result<Arc<Vec<Replica>>, String>>;

#[derive(Clone)]
pub struct Balanced {
    replicas: tokio::sync::watch::Receiver<Replicas>,
    next: Arc<AtomicUsize>,
}

impl Balanced {
    /// Balances over the addresses of `host:port`, looked up every `refresh`; each
    /// replica's channel is made by `channel_to`.
    pub fn new(host: String, port: u16, channel_to: ChannelTo, refresh: Duration) -> Self {
        let (publish, replicas) = tokio::sync::watch::channel(None);
        tokio::spawn(resolve_forever(host, port, channel_to, refresh, publish));
        Self {
            replicas,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Looks the name up until every `Balanced` made with this task is gone.
async fn resolve_forever(
    host: String,
    port: u16,
    channel_to: ChannelTo,
    refresh: Duration,
    publish: tokio::sync::watch::Sender<Replicas>,
) {
    let mut known: Vec<Replica> = Vec::new();
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(found) => {
                let mut found: Vec<SocketAddr> = found.collect();
                found.sort();
                found.dedup();
                let unchanged = found.len() == known.len()
                    && found.iter().zip(&known).all(|(a, r)| *a == r.address);
                if !unchanged && !found.is_empty() {
                    tracing::info!(%host, replicas = found.len(), "replicas of a service changed");
                    // Replicas still there keep their connection and their count.
                    known = found
                        .into_iter()
                        .map(|address| {
                            known
                                .iter()
                                .find(|r| r.address == address)
                                .cloned()
                                .unwrap_or_else(|| Replica {
                                    address,
                                    channel: channel_to(address),
                                    in_flight: Arc::default(),
                                    unreachable_until: Arc::default(),
                                })
                        })
                        .collect();
                    publish.send_replace(Some(Ok(Arc::new(known.clone()))));
                } else if known.is_empty() {
                    publish.send_replace(Some(Err(format!("{host} has no address"))));
                }
            }
            Err(error) => {
                tracing::warn!(%host, %error, "looking up a service's replicas failed");
                if known.is_empty() {
                    publish.send_replace(Some(Err(format!("{host}: {error}"))));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = publish.closed() => return,
        }
    }
}

impl Service<Request<tonic::body::Body>> for Balanced {
    type Response = Response<tonic::body::Body>;
    type Error = CallError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen replica's, awaited in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let mut replicas = self.replicas.clone();
        let next = self.next.clone();
        Box::pin(async move {
            let not_sent = |message: String| CallError {
                reached_peer: false,
                source: message.into(),
            };
            let current = replicas
                .wait_for(Option::is_some)
                .await
                .map_err(|_| not_sent("the replica lookup stopped".into()))?
                .clone()
                .expect("waited for a lookup");
            let replicas = current.map_err(not_sent)?;
            // The less busy of two neighbours, among the reachable ones when any is.
            let now = now_ms();
            let reachable: Vec<&Replica> = replicas.iter().filter(|r| r.reachable(now)).collect();
            let candidates = if reachable.is_empty() {
                replicas.iter().collect()
            } else {
                reachable
            };
            let turn = next.fetch_add(1, Ordering::Relaxed);
            let (a, b) = (
                candidates[turn % candidates.len()],
                candidates[(turn + 1) % candidates.len()],
            );
            let chosen =
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                };
            let in_flight = chosen.in_flight.clone();
            in_flight.fetch_add(1, Ordering::Relaxed);
            let mut channel = chosen.channel.clone();
            let result = async {
                channel.ready().await?;
                channel.call(request).await
            }
            .await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            result.map_err(|error| {
                let error = CallError::new(error.into());
                if !error.reached_peer {
                    chosen
                        .unreachable_until
                        .store(now_ms() + PASS_OVER.as_millis() as u64, Ordering::Relaxed);
                }
                error
            })
        })
    }
}
