//! Logs and traces. Spans always carry W3C trace ids (so they propagate and show in
//! logs: JSON lines have `trace_id` and `span_id`); they are exported over OTLP/gRPC in
//! batches when an endpoint is configured.
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with trace and span ids.
    Json,
    /// Human-readable lines for a terminal.
    Pretty,
}

/// Telemetry settings shared by every binary.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TelemetryArgs {
    /// Log format; default: pretty in a terminal, JSON otherwise.
    #[arg(long, env = "KEFU_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// OTLP/gRPC endpoint for traces, e.g. http://jaeger:4317; unset disables export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Flushes buffered spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Shutting down waits (at most 5 s) for the last export, whose gRPC connection is
        // driven by the Tokio runtime: keep the runtime's other workers free to do it.
        let provider = self.provider.clone();
        let shutdown = move || provider.shutdown();
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(shutdown)
            }
            _ => shutdown(),
        };
        if let Err(error) = result {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Builds a tracer provider for `service_name` (kefu-<service>), exporting to `endpoint` if set.
///
/// Spans are exported by the SDK's batch processor: ending a span only queues it (a full
/// queue drops spans rather than wait), and a background thread sends the batches over
/// the tonic channel, so a slow or missing collector never holds up a request. The
/// channel is built here and driven by the Tokio runtime: call this inside one.
pub fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> anyhow::Result<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance_id()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_owned())
            .build()
            .map_err(|error| anyhow::anyhow!("OTLP exporter for {endpoint}: {error}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// Installs the global subscriber: logs to stdout, spans to OpenTelemetry.
pub fn init(service_name: &str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = tracer_provider(service_name, args.otlp_endpoint.as_deref())?;
    let tracer = provider.tracer(service_name.to_owned());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let format = args
        .log_format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,tantivy=warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(log_layer(format, std::io::stdout))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|error| anyhow::anyhow!("installing the log subscriber: {error}"))?;
    Ok(TelemetryGuard { provider })
}

/// The log lines of `format`, written to `writer`.
fn log_layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => {
            let dispatch = Arc::new(OnceLock::new());
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine {
                    dispatch: dispatch.clone(),
                })
                .with_writer(writer)
                .and_then(DispatchSlot(dispatch))
                .boxed()
        }
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(writer)
            .boxed(),
    }
}

/// One JSON object per event: timestamp, level, target, message and the event's fields
/// at the top level, the current span (name and fields) under "span", and the
/// OpenTelemetry `trace_id` and `span_id` of that span, so that a log line leads to its
/// trace (the same id a client gets back in `x-trace-id`).
struct JsonLine {
    /// The dispatcher this line's subscriber runs in, which holds the OpenTelemetry data.
    /// (While an event is being dispatched, `tracing` hides the current dispatcher.)
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

/// Hands [`JsonLine`] its dispatcher when the subscriber is installed; weakly, since the
/// dispatcher owns the formatter.
struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchSlot {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = Map::new();
        event.record(&mut JsonVisitor(&mut line));
        let metadata = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            let mut fields = span
                .extensions()
                .get::<FormattedFields<N>>()
                .and_then(|formatted| {
                    serde_json::from_str::<Map<String, Value>>(&formatted.fields).ok()
                })
                .unwrap_or_default();
            fields.insert("name".into(), span.name().into());
            line.insert("span".into(), fields.into());
            // The SDK's own diagnostics may be emitted while it holds a span's OpenTelemetry
            // data; looking that data up again from here would wait on that very lock.
            if !metadata.target().starts_with("opentelemetry") {
                let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
                if let Some(span_context) =
                    dispatch.and_then(|dispatch| otel_span_context(&span.id(), &dispatch))
                {
                    line.insert(
                        "trace_id".into(),
                        span_context.trace_id().to_string().into(),
                    );
                    line.insert("span_id".into(), span_context.span_id().to_string().into());
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The OpenTelemetry span context of a tracing span, if it has a valid one.
fn otel_span_context(
    id: &tracing::span::Id,
    dispatch: &Dispatch,
) -> Option<opentelemetry::trace::SpanContext> {
    let context = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Collects an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use opentelemetry::trace::{SpanId, SpanKind, TraceId};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tower::{Layer as _, ServiceExt as _};

    use super::*;
    use crate::layers::{ClientTelemetryLayer, ServerTelemetryLayer, TRACE_ID_HEADER};

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"))
                })
                .collect()
        }

        fn line(&self, message: &str) -> Value {
            self.lines()
                .into_iter()
                .find(|line| line["message"] == message)
                .unwrap_or_else(|| panic!("no log line {message:?}"))
        }
    }

    /// Finished spans kept in memory.
    #[derive(Clone, Debug, Default)]
    struct Exported(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Exported {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    impl Exported {
        fn named(&self, kind: SpanKind) -> SpanData {
            let spans = self.0.lock().unwrap();
            let found: Vec<&SpanData> =
                spans.iter().filter(|span| span.span_kind == kind).collect();
            assert_eq!(found.len(), 1, "one {kind:?} span expected in {spans:#?}");
            found[0].clone()
        }
    }

    /// The subscriber of a service, logging JSON into memory and exporting spans into memory.
    fn subscriber(logs: &Captured, spans: &Exported) -> impl Subscriber + Send + Sync {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        tracing_subscriber::registry()
            .with(log_layer(LogFormat::Json, logs.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kefu-test")))
    }

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    #[tokio::test]
    async fn json_log_lines_inside_a_server_span_carry_its_trace_and_span_ids() {
        let (logs, spans) = (Captured::default(), Exported::default());
        let _default = tracing::subscriber::set_default(subscriber(&logs, &spans));
        let service = ServerTelemetryLayer::new("kefu-test", Duration::from_secs(10)).layer(
            tower::service_fn(|_request: http::Request<()>| async {
                tracing::info!(ticket_id = "T-1", attempt = 2u64, "handling");
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }),
        );
        let request = http::Request::builder()
            .uri("/kefu.v1.TicketService/CreateTicket")
            .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
            .body(())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        tracing::info!("outside any request");

        let server = spans.named(SpanKind::Server);
        assert_eq!(
            server.span_context.trace_id().to_string(),
            CALLER_TRACE,
            "the caller's trace continues"
        );
        assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN);
        assert_eq!(response.headers()[TRACE_ID_HEADER], CALLER_TRACE);

        let line = logs.line("handling");
        assert_eq!(line["trace_id"], CALLER_TRACE, "{line}");
        assert_eq!(
            line["span_id"],
            server.span_context.span_id().to_string(),
            "{line}"
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["ticket_id"], "T-1");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["span"]["name"], "grpc.server");
        assert_eq!(line["span"]["rpc.method"], "CreateTicket");
        assert!(
            line["timestamp"].as_str().is_some_and(|t| t.len() >= 20),
            "{line}"
        );

        let outside = logs.line("outside any request");
        assert!(
            outside.get("trace_id").is_none() && outside.get("span").is_none(),
            "{outside}"
        );
    }

    #[tokio::test]
    async fn the_client_span_is_the_parent_of_the_server_span_it_calls() {
        let (logs, spans) = (Captured::default(), Exported::default());
        let _default = tracing::subscriber::set_default(subscriber(&logs, &spans));
        let handler = tower::service_fn(|_request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        // The client layer of the calling service in front of the server layer of the callee.
        let server =
            ServerTelemetryLayer::new("kefu-router", Duration::from_secs(10)).layer(handler);
        let client = ClientTelemetryLayer::new("kefu-orchestrator", "kefu-router").layer(server);
        let request = http::Request::builder()
            .uri("/kefu.v1.RouterService/Classify")
            .body(())
            .unwrap();
        let response = client.oneshot(request).await.unwrap();

        let (client_span, server_span) =
            (spans.named(SpanKind::Client), spans.named(SpanKind::Server));
        assert_eq!(
            client_span.parent_span_id,
            SpanId::INVALID,
            "the call starts a trace"
        );
        assert_ne!(client_span.span_context.trace_id(), TraceId::INVALID);
        assert_eq!(
            server_span.span_context.trace_id(),
            client_span.span_context.trace_id()
        );
        assert_eq!(
            server_span.parent_span_id,
            client_span.span_context.span_id(),
            "the server span hangs under the client span"
        );
        assert!(server_span.parent_span_is_remote);
        assert_eq!(
            response.headers()[TRACE_ID_HEADER],
            client_span.span_context.trace_id().to_string().as_str()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresponsive_collector_neither_slows_requests_nor_hangs_shutdown() {
        // Accepts connections at the TCP level and never answers: every export hangs.
        let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", collector.local_addr().unwrap());
        let provider = tracer_provider("kefu-test", Some(&endpoint)).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("kefu-test")));
        let started = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            // More spans than the export queue holds.
            for index in 0..5_000 {
                let span = tracing::info_span!("grpc.server", index);
                let _entered = span.enter();
            }
        });
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "ending 5000 spans took {elapsed:?}"
        );

        let started = Instant::now();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(8),
            "shutdown with an unresponsive collector took {elapsed:?}"
        );
    }
}
