//! Logs and traces. Spans always carry W3C trace ids (so they propagate and show in
//! logs); they are exported over OTLP/gRPC in batches when an endpoint is configured.
use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
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
        if let Err(error) = self.provider.shutdown() {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Builds a tracer provider for `service_name` (kefu-<service>), exporting to `endpoint` if set.
pub fn tracer_provider(service_name: &str, endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
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
    let format = args.log_format.unwrap_or(if std::io::stdout().is_terminal() { LogFormat::Pretty } else { LogFormat::Json });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn,tantivy=warn"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|error| anyhow::anyhow!("installing the log subscriber: {error}"))?;
    Ok(TelemetryGuard { provider })
}
