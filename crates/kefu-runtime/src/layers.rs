//! Tower layers wrapped around every server and every client channel: one span per
//! call (W3C trace context carried in gRPC metadata), Prometheus metrics, and the
//! `grpc-timeout` deadline on outgoing calls.
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::resilience::{parse_grpc_timeout, status_response, with_deadline};

/// How much earlier than the call's deadline a server answers DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// tonic answers a request body that does not decode (bad protobuf, a frame cut short,
/// no message at all) with INTERNAL; the fault is the caller's, so it is INVALID_ARGUMENT. A compressed
/// frame without an encoding stays INTERNAL, as the gRPC compression spec requires.
fn request_decode_error_is_invalid_argument<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let undecodable = grpc_code(headers) == tonic::Code::Internal
        && headers
            .get("grpc-message")
            .and_then(|message| message.to_str().ok())
            .is_some_and(|message| {
                message.starts_with("failed%20to%20decode")
                    || message.starts_with("failed to decode")
                    || message.starts_with("Unexpected%20EOF")
                    || message.starts_with("Unexpected EOF")
                    || message.starts_with("Missing%20request%20message")
                    || message.starts_with("Missing request message")
            });
    if undecodable {
        headers.insert(
            "grpc-status",
            HeaderValue::from(tonic::Code::InvalidArgument as i32),
        );
    }
    response
}

/// The service that `poll_ready` readied, for a call's future to own; a fresh clone
/// (not yet ready) takes its place for the next `poll_ready`, as tower requires.
pub(crate) fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}

/// Response metadata key carrying the trace id, so a user can look the call up in Jaeger.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Only kefu's own RPCs are traced and counted; health checks and reflection are noise.
pub(crate) fn is_kefu_rpc(path: &str) -> bool {
    path.starts_with("/kefu.")
}

/// "/kefu.v1.RouterService/Classify" -> ("kefu.v1.RouterService", "Classify").
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

/// The gRPC status of a unary response: in the headers for errors (trailers-only
/// responses), absent (OK, sent in the trailers) for successes.
fn grpc_code(headers: &HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok)
}

/// Puts a call's gRPC status on its span; anything but OK marks the span as an error.
fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

fn code_label(code: tonic::Code) -> String {
    format!("{code:?}")
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[derive(Clone)]
pub(crate) struct ServerTelemetryLayer {
    service: Arc<str>,
    /// The deadline of a call whose caller sets none (or a longer one).
    request_timeout: Duration,
}

impl ServerTelemetryLayer {
    pub(crate) fn new(service: &str, request_timeout: Duration) -> Self {
        Self {
            service: service.into(),
            request_timeout,
        }
    }
}

impl<S> Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry {
            inner,
            service: self.service.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ServerTelemetry<S> {
    inner: S,
    service: Arc<str>,
    request_timeout: Duration,
}

impl<S, B, ResBody> Service<Request<B>> for ServerTelemetry<S>
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
        let path = request.uri().path().to_owned();
        if !is_kefu_rpc(&path) {
            return Box::pin(inner.call(request));
        }
        let service = self.service.clone();
        let (rpc_service, rpc_method) = split_path(&path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
        let method_label = format!("{rpc_service}/{rpc_method}");
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(parse_grpc_timeout)
            .map_or(self.request_timeout, |asked| {
                asked.min(self.request_timeout)
            });
        Box::pin(async move {
            let started = Instant::now();
            let in_flight = metrics::gauge!("kefu_grpc_server_requests_in_flight", "service" => service.to_string());
            in_flight.increment(1.0);
            // Calls this handler makes get what is left of this deadline, and the handler
            // is dropped (its work stops) when it passes. The answer comes a moment before
            // the transport's own timer would cancel the call with a vaguer CANCELLED.
            let deadline = started + timeout;
            let result = tokio::time::timeout(
                timeout.saturating_sub(DEADLINE_MARGIN),
                with_deadline(deadline, inner.call(request)),
            )
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| {
                Ok(status_response(
                    tonic::Code::DeadlineExceeded,
                    "the call's deadline passed before it was answered",
                ))
            })
            .map(request_decode_error_is_invalid_argument);
            in_flight.decrement(1.0);
            let code = match &result {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            record_status(&span, code);
            metrics::counter!(
                "kefu_grpc_server_requests_total",
                "service" => service.to_string(),
                "grpc_method" => method_label.clone(),
                "grpc_code" => code_label(code),
            )
            .increment(1);
            metrics::histogram!(
                "kefu_grpc_server_request_duration_seconds",
                "service" => service.to_string(),
                "grpc_method" => method_label,
            )
            .record(started.elapsed().as_secs_f64());
            result.map(|mut response| {
                let trace_id = span.context().span().span_context().trace_id();
                if trace_id != opentelemetry::trace::TraceId::INVALID {
                    if let Ok(value) = HeaderValue::from_str(&trace_id.to_string()) {
                        response.headers_mut().insert(TRACE_ID_HEADER, value);
                    }
                }
                response
            })
        })
    }
}

#[derive(Clone)]
pub(crate) struct ClientTelemetryLayer {
    service: Arc<str>,
    target: Arc<str>,
}

impl ClientTelemetryLayer {
    pub(crate) fn new(service: &str, target: &str) -> Self {
        Self {
            service: service.into(),
            target: target.into(),
        }
    }
}

impl<S> Layer<S> for ClientTelemetryLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTelemetry {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    layer: ClientTelemetryLayer,
}

impl<S, B, ResBody> Service<Request<B>> for ClientTelemetry<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let layer = self.layer.clone();
        let path = request.uri().path().to_owned();
        let (rpc_service, rpc_method) = split_path(&path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            peer.service = %layer.target,
        );
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
        });
        let method_label = format!("{rpc_service}/{rpc_method}");
        Box::pin(async move {
            let result = inner.call(request).instrument(span.clone()).await;
            let code = match &result {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => tonic::Code::Unavailable,
            };
            record_status(&span, code);
            metrics::counter!(
                "kefu_grpc_client_requests_total",
                "service" => layer.service.to_string(),
                "target" => layer.target.to_string(),
                "grpc_method" => method_label,
                "grpc_code" => code_label(code),
            )
            .increment(1);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_grpc_paths() {
        assert_eq!(
            split_path("/kefu.v1.RouterService/Classify"),
            ("kefu.v1.RouterService", "Classify")
        );
        assert!(is_kefu_rpc("/kefu.v1.TicketService/GetTicket"));
        assert!(!is_kefu_rpc("/grpc.health.v1.Health/Check"));
    }

    #[test]
    fn reads_status_from_trailers_only_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_code(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        assert_eq!(grpc_code(&headers), tonic::Code::NotFound);
    }
}
