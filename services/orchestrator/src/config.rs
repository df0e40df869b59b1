//! The orchestrator's configuration: flags with environment variables behind them.
use kefu_runtime::{DataArgs, ServiceArgs, ServiceSpec};

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub peers: Peers,
    #[command(flatten)]
    pub outbox: OutboxArgs,
}

/// Where the services the orchestrator calls are.
#[derive(clap::Args, Clone, Debug)]
pub struct Peers {
    #[arg(long, env = "KEFU_ROUTER_URL", default_value_t = ServiceSpec::ROUTER.default_url())]
    pub router_url: String,
    #[arg(long, env = "KEFU_SENTIMENT_URL", default_value_t = ServiceSpec::SENTIMENT.default_url())]
    pub sentiment_url: String,
    #[arg(long, env = "KEFU_KNOWLEDGE_URL", default_value_t = ServiceSpec::KNOWLEDGE.default_url())]
    pub knowledge_url: String,
    #[arg(long, env = "KEFU_TICKET_URL", default_value_t = ServiceSpec::TICKET.default_url())]
    pub ticket_url: String,
}

const DEFAULT_MAX_ATTEMPTS: i32 = 8;
const DEFAULT_BACKOFF_MS: i64 = 1000;

/// How the ticket outbox retries a ticket that could not be opened.
#[derive(clap::Args, Clone, Debug)]
pub struct OutboxArgs {
    /// Attempts at a ticket the ticket service refuses (an error other than being
    /// unreachable) before it goes to the dead letter; an unreachable ticket service is
    /// waited for without limit.
    #[arg(long, env = "KEFU_OUTBOX_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub outbox_max_attempts: i32,
    /// Wait before the second attempt, in milliseconds; it doubles with each attempt,
    /// up to five minutes.
    #[arg(long, env = "KEFU_OUTBOX_BACKOFF_MS", default_value_t = DEFAULT_BACKOFF_MS)]
    pub outbox_backoff_ms: i64,
}

impl Default for OutboxArgs {
    fn default() -> Self {
        Self {
            outbox_max_attempts: DEFAULT_MAX_ATTEMPTS,
            outbox_backoff_ms: DEFAULT_BACKOFF_MS,
        }
    }
}
