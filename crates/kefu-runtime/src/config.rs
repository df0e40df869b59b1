//! Configuration shared by every service: where it listens and how it calls others.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Identity and default ports of one kefu service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Short name: gateway, orchestrator, router, knowledge, ticket, sentiment.
    pub name: &'static str,
    pub grpc_port: u16,
    pub metrics_port: u16,
}

impl ServiceSpec {
    const fn new(name: &'static str, grpc_port: u16, metrics_port: u16) -> Self {
        Self {
            name,
            grpc_port,
            metrics_port,
        }
    }

    pub const GATEWAY: Self = Self::new("gateway", 50051, 9101);
    pub const ORCHESTRATOR: Self = Self::new("orchestrator", 50052, 9102);
    pub const ROUTER: Self = Self::new("router", 50053, 9103);
    pub const KNOWLEDGE: Self = Self::new("knowledge", 50054, 9104);
    pub const TICKET: Self = Self::new("ticket", 50055, 9105);
    pub const SENTIMENT: Self = Self::new("sentiment", 50056, 9106);
    pub const CHANNELS: Self = Self::new("channels", 50057, 9107);

    /// `kefu-<name>`: the binary, the OpenTelemetry service.name and the metrics label.
    pub fn full_name(&self) -> String {
        format!("kefu-{}", self.name)
    }

    pub fn default_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
}

/// How a server listens. Every field has an environment variable and a flag.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Address to bind the gRPC and metrics ports to.
    #[arg(long, env = "KEFU_BIND_HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_host: IpAddr,
    /// gRPC port (default: the service's own, e.g. 50053 for the router; 0 picks a free port).
    #[arg(long, env = "KEFU_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Prometheus /metrics port (default: the service's own, e.g. 9103; 0 picks a free port).
    #[arg(long, env = "KEFU_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Deadline for handling one request when the caller sets none, in milliseconds.
    #[arg(long, env = "KEFU_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Requests handled at once per connection; more wait.
    #[arg(long, env = "KEFU_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl ServerArgs {
    pub fn grpc_addr(&self, spec: ServiceSpec) -> SocketAddr {
        SocketAddr::new(self.bind_host, self.grpc_port.unwrap_or(spec.grpc_port))
    }

    pub fn metrics_addr(&self, spec: ServiceSpec) -> SocketAddr {
        SocketAddr::new(
            self.bind_host,
            self.metrics_port.unwrap_or(spec.metrics_port),
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Defaults for tests and the all-in-one binary: loopback, given ports.
    pub fn local(grpc_port: u16, metrics_port: u16) -> Self {
        Self {
            bind_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            grpc_port: Some(grpc_port),
            metrics_port: Some(metrics_port),
            request_timeout_ms: 10_000,
            max_concurrency: 256,
            tls: Default::default(),
        }
    }
}

/// How a service calls the others.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// Deadline of each outgoing call, in milliseconds.
    #[arg(long, env = "KEFU_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub call_timeout_ms: u64,
    /// How often the replicas behind each service's host name are looked up again, in
    /// milliseconds (a headless Service's DNS name lists every ready pod).
    #[arg(long, env = "KEFU_DNS_REFRESH_MS", default_value_t = 5_000)]
    pub dns_refresh_ms: u64,
}

impl ClientArgs {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub fn dns_refresh(&self) -> Duration {
        Duration::from_millis(self.dns_refresh_ms.max(100))
    }
}

impl Default for ClientArgs {
    fn default() -> Self {
        Self {
            call_timeout_ms: 5_000,
            dns_refresh_ms: 5_000,
        }
    }
}

/// How a service that calls others listens and calls them.
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
}

impl ServiceArgs {
    /// The connector of `caller` (its full name): the client settings, and the server's
    /// TLS settings, which are also the ones its calls present.
    pub fn connector(&self, caller: &str) -> anyhow::Result<crate::Connector> {
        crate::Connector::new(caller, &self.clients, &self.server.tls)
    }
}

/// The whole configuration of a service that serves what it derives from the tenants'
/// content (the router's intent models, the knowledge indexes), kept in the database.
#[derive(clap::Args, Clone, Debug)]
pub struct ContentServiceArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Where persistent state lives.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Directory for embedded state (the SQLite file, learned models).
    #[arg(long, env = "KEFU_DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    /// Database URL: sqlite://… (default: a file in the data directory) or postgres://….
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Redis URL (redis://…) for the cache shared by replicas and change notification;
    /// unset: in-process cache only.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel (lets deployments share a Redis).
    #[arg(long, env = "KEFU_REDIS_PREFIX", default_value = "kefu:")]
    pub redis_prefix: String,
}

impl DataArgs {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => format!("sqlite://{}/kefu.db?mode=rwc", self.data_dir.display()),
        }
    }
}

/// Where tenant definitions and model files are read from.
#[derive(clap::Args, Clone, Debug)]
pub struct ContentArgs {
    /// Directory of tenant definitions (<id>/tenant.toml and <id>/docs/).
    #[arg(long, env = "KEFU_TENANTS_DIR", default_value = "./tenants")]
    pub tenants_dir: std::path::PathBuf,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Where model files are read from.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Directory of model files (all-MiniLM-L6-v2/ …), filled by `make models`.
    #[arg(long, env = "KEFU_MODELS_DIR", default_value = "./models")]
    pub models_dir: std::path::PathBuf,
}
