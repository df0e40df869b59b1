//! What keeps a call from doing harm under faults: the caller's deadline travels with
//! the call (each hop gets what is left of it, not a fresh one), and a call that could
//! not reach its peer is retried once or twice, within a budget: any method when no
//! connection could be made (the request was never sent), only methods that are safe
//! to repeat when the connection broke during the call; an answer cut off by a broken
//! connection fails UNAVAILABLE, for the caller to retry. A peer's own answer, even
//! UNAVAILABLE, is never retried here: it has already been through the peer's retries,
//! so retries happen at one hop and never stack.
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Service, ServiceExt};

use crate::balance::CallError;
use crate::layers::{is_kefu_rpc, take_ready};

tokio::task_local! {
    /// When the call being served must be answered by.
    static CALLER_DEADLINE: Instant;
}

/// Runs `future` (the handling of one incoming call) with its caller's deadline.
pub(crate) async fn with_deadline<F: std::future::Future>(
    deadline: Instant,
    future: F,
) -> F::Output {
    CALLER_DEADLINE.scope(deadline, future).await
}

/// The time left of the call being served, if this runs inside one.
pub fn remaining() -> Option<Duration> {
    CALLER_DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// A `grpc-timeout` header value ("250m", "5S", ...) as a duration.
pub(crate) fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A trailers-only gRPC response carrying `code`: how a layer answers without the peer.
pub fn status_response<B: Default>(code: tonic::Code, message: &str) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", message);
    }
    response
}

/// Methods a second attempt cannot harm: reads, and writes that carry an idempotency
/// key (tickets by message id, replies by request id, messages by message id) or set
/// an absolute state. Taking from the queue, transitions and ratings are not here.
const SAFE_TO_REPEAT: &[&str] = &[
    "/kefu.v1.RouterService/Classify",
    "/kefu.v1.RouterService/ReloadTenant",
    "/kefu.v1.SentimentService/Analyze",
    "/kefu.v1.KnowledgeService/Search",
    "/kefu.v1.KnowledgeService/IngestDocuments",
    "/kefu.v1.KnowledgeService/DeleteDocument",
    "/kefu.v1.KnowledgeService/Reindex",
    "/kefu.v1.TicketService/CreateTicket",
    "/kefu.v1.TicketService/GetTicket",
    "/kefu.v1.TicketService/ListTickets",
    "/kefu.v1.TicketService/GetCustomer",
    "/kefu.v1.TicketService/UpsertCustomer",
    "/kefu.v1.TicketService/ReplyToCustomer",
    "/kefu.v1.TicketService/GetConversation",
    "/kefu.v1.TicketService/RaisePriority",
    "/kefu.v1.OrchestratorService/HandleMessage",
    "/kefu.v1.OrchestratorService/GetSession",
    "/kefu.v1.OrchestratorService/StreamEvents",
];

pub fn is_safe_to_repeat(path: &str) -> bool {
    SAFE_TO_REPEAT.contains(&path)
}

const BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// Retries of calls that did not reach their peer, shared by a service's channels:
/// at most 20% more calls than without retries (plus 10 a second), so a peer that is
/// down is not hammered.
#[derive(Clone)]
pub struct RetryBudget(Arc<TpsBudget>);

impl Default for RetryBudget {
    fn default() -> Self {
        Self(Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)))
    }
}

/// The client side of both rules, wrapped around a channel.
#[derive(Clone)]
pub struct Resilient<S> {
    inner: S,
    budget: RetryBudget,
    /// The longest a call may take when the caller sets no deadline.
    deadline: Duration,
}

impl<S> Resilient<S> {
    pub fn new(inner: S, budget: RetryBudget, deadline: Duration) -> Self {
        Self {
            inner,
            budget,
            deadline,
        }
    }
}

impl<S> Service<Request<tonic::body::Body>> for Resilient<S>
where
    S: Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = CallError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let budget = self.budget.clone();
        let own = self.deadline;
        Box::pin(async move {
            // What is left of the caller's deadline, or our own when we are the first hop.
            let timeout = remaining().map_or(own, |left| left.min(own));
            if timeout.is_zero() {
                return Ok(status_response(
                    tonic::Code::DeadlineExceeded,
                    "the caller's deadline passed before this call",
                ));
            }
            let (mut parts, body) = request.into_parts();
            parts
                .headers
                .insert("grpc-timeout", grpc_timeout_value(timeout));
            let started = Instant::now();
            let repeatable = is_safe_to_repeat(parts.uri.path());
            budget.0.deposit();
            // The body is one small message; kept so that it can be sent again.
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return Ok(status_response(
                        tonic::Code::Internal,
                        "request body unreadable",
                    ))
                }
            };
            let mut attempt = 0;
            loop {
                let request = Request::from_parts(
                    parts.clone(),
                    tonic::body::Body::new(http_body_util::Full::new(bytes.clone())),
                );
                let left = timeout.saturating_sub(started.elapsed());
                // Each attempt waits for the channel to be ready (the first was polled
                // by the caller; a retry is a new call).
                let attempt_call = async {
                    if attempt > 0 {
                        ServiceExt::ready(&mut inner).await?;
                    }
                    inner.call(request).await
                };
                let outcome = tokio::time::timeout(left, attempt_call).await;
                let error = match outcome {
                    Ok(Ok(response)) => return Ok(response.map(broken_is_unavailable)),
                    Err(_) => {
                        return Ok(status_response(
                            tonic::Code::DeadlineExceeded,
                            "deadline exceeded calling a kefu service",
                        ))
                    }
                    Ok(Err(error)) => error,
                };
                // A call that found no connection was never sent: any method may go again.
                let retry = (repeatable || !error.reached_peer)
                    && attempt < BACKOFF.len()
                    && started.elapsed() + BACKOFF[attempt] < timeout
                    && budget.0.withdraw();
                if !retry {
                    // Could not reach the peer: UNAVAILABLE, which callers know how to treat.
                    return Ok(status_response(
                        tonic::Code::Unavailable,
                        &format!("a kefu service could not be reached: {error}"),
                    ));
                }
                tracing::debug!(attempt, %error, "retrying a call that did not reach its peer");
                tokio::time::sleep(BACKOFF[attempt]).await;
                attempt += 1;
            }
        })
    }
}

/// An answer whose connection broke after it began (its peer died mid-answer) fails
/// UNAVAILABLE, as gRPC's status codes say of data sent before a connection breaks, so
/// that callers retry it; tonic, finding no status in a broken connection, would say
/// UNKNOWN. What tonic can name (a stream the peer reset with a reason) is kept.
fn broken_is_unavailable(body: tonic::body::Body) -> tonic::body::Body {
    tonic::body::Body::new(body.map_err(|status| {
        if status.code() == tonic::Code::Unknown {
            tonic::Status::unavailable(format!(
                "the connection to a kefu service broke during its answer: {}",
                status.message()
            ))
        } else {
            status
        }
    }))
}

/// `grpc-timeout` header value: at most 8 digits, here in milliseconds.
pub(crate) fn grpc_timeout_value(deadline: Duration) -> HeaderValue {
    let millis = deadline.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m"))
        .expect("digits and a unit are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_timeouts() {
        let parse = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("m"), None);
        assert_eq!(parse("12x"), None);
        assert_eq!(parse("123456789m"), None, "at most 8 digits");
    }

    #[test]
    fn deadline_header_is_bounded() {
        assert_eq!(grpc_timeout_value(Duration::from_millis(250)), "250m");
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(10_000_000)),
            "99999999m"
        );
    }

    #[tokio::test]
    async fn the_remaining_deadline_is_the_callers() {
        assert_eq!(remaining(), None);
        let left = with_deadline(Instant::now() + Duration::from_secs(2), async {
            remaining()
        })
        .await;
        assert!(
            left.unwrap() <= Duration::from_secs(2) && left.unwrap() > Duration::from_millis(1500)
        );
        assert!(is_safe_to_repeat("/kefu.v1.TicketService/GetTicket"));
        assert!(!is_safe_to_repeat("/kefu.v1.TicketService/NextInQueue"));
        assert!(!is_safe_to_repeat(
            "/kefu.v1.TicketService/TransitionTicket"
        ));
    }
}

/// Answers RESOURCE_EXHAUSTED at once when `limit` kefu calls are already in flight,
/// instead of queueing more work into timeouts: the admitted calls keep their latency.
#[derive(Clone)]
pub(crate) struct ShedLayer {
    permits: Arc<tokio::sync::Semaphore>,
}

impl ShedLayer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit.max(1))),
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    permits: Arc<tokio::sync::Semaphore>,
}

/// How long a shed client should wait before trying again.
const SHED_RETRY_AFTER_MS: &str = "100";

impl<S, B, ResBody> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        // Health checks and reflection are never shed.
        if !is_kefu_rpc(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Box::pin(async move {
                let response = inner.call(request).await;
                drop(permit);
                response
            }),
            Err(_) => {
                let mut response = status_response(
                    tonic::Code::ResourceExhausted,
                    "the service is at capacity; retry shortly",
                );
                response.headers_mut().insert(
                    "retry-after-ms",
                    HeaderValue::from_static(SHED_RETRY_AFTER_MS),
                );
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
