//! The gateway's typed configuration: environment variables, each also a flag.
use kefu_runtime::{ContentArgs, ServiceArgs, ServiceSpec};

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "KEFU_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    #[arg(long, env = "KEFU_ORCHESTRATOR_URL", default_value_t = ServiceSpec::ORCHESTRATOR.default_url())]
    pub orchestrator_url: String,
    #[arg(long, env = "KEFU_TICKET_URL", default_value_t = ServiceSpec::TICKET.default_url())]
    pub ticket_url: String,
    #[arg(long, env = "KEFU_KNOWLEDGE_URL", default_value_t = ServiceSpec::KNOWLEDGE.default_url())]
    pub knowledge_url: String,
    #[arg(long, env = "KEFU_ROUTER_URL", default_value_t = ServiceSpec::ROUTER.default_url())]
    pub router_url: String,
    #[arg(long, env = "KEFU_CHANNELS_URL", default_value_t = ServiceSpec::CHANNELS.default_url())]
    pub channels_url: String,
    #[command(flatten)]
    pub web: WebArgs,
    /// Redis (redis://…) for the per-tenant rate limits shared by gateway replicas;
    /// unset: each replica limits on its own.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "KEFU_REDIS_PREFIX", default_value = "kefu:")]
    pub redis_prefix: String,
    /// Calls handled at once; above it new calls get RESOURCE_EXHAUSTED at once rather
    /// than queueing into timeouts.
    #[arg(long, env = "KEFU_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
}

/// Where the pages are served and where they find the gateway.
#[derive(clap::Args, Clone, Debug)]
pub struct WebArgs {
    /// Port of the chat and console pages (0: do not serve them).
    #[arg(long, env = "KEFU_WEB_PORT", default_value_t = 8080)]
    pub web_port: u16,
    /// The gateway's URL as browsers reach it; empty: the pages' host name with the
    /// gateway's gRPC port.
    #[arg(long, env = "KEFU_PUBLIC_GATEWAY_URL", default_value = "")]
    pub public_gateway_url: String,
    /// More web origins allowed to call the gateway over gRPC-Web, comma-separated.
    /// The gateway's own pages always are: the web port on 127.0.0.1, localhost and the
    /// bind address, and the host of the public gateway URL. Tenants add their own
    /// with `web_origins`.
    #[arg(long, env = "KEFU_WEB_ORIGINS", value_delimiter = ',')]
    pub web_origins: Vec<String>,
}
