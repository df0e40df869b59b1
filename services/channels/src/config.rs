//! The channel service's configuration: flags with environment variables behind them.
use kefu_runtime::{ServiceArgs, ServiceSpec};

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub data: kefu_runtime::DataArgs,
    /// Directory of tenant definitions (<id>/tenant.toml): their `[channels]`.
    #[arg(long, env = "KEFU_TENANTS_DIR", default_value = "./tenants")]
    pub tenants_dir: std::path::PathBuf,
    /// The gateway the channel service calls like any client.
    #[arg(long, env = "KEFU_GATEWAY_URL", default_value_t = ServiceSpec::GATEWAY.default_url())]
    pub gateway_url: String,
    /// Largest customer message taken from a channel, in bytes (the gateway's limit).
    #[arg(long, env = "KEFU_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub smtp: SmtpArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// The HTTP endpoints the channels call: /webhooks/<tenant> and /wechat/<tenant>.
#[derive(clap::Args, Clone, Debug)]
pub struct HttpArgs {
    /// Port of the channels' HTTP endpoints (0 picks a free port).
    #[arg(long, env = "KEFU_CHANNELS_HTTP_PORT", default_value_t = 8090)]
    pub channels_http_port: u16,
}

/// The SMTP listener that takes mail for the tenants' support addresses.
#[derive(clap::Args, Clone, Debug)]
pub struct SmtpArgs {
    /// Port of the SMTP listener (0 picks a free port); the domain's MX, or the mail
    /// provider's forwarding, points at it (the chart's Service maps port 25 to it).
    #[arg(long, env = "KEFU_CHANNELS_SMTP_PORT", default_value_t = 2525)]
    pub channels_smtp_port: u16,
    /// The name the listener greets with.
    #[arg(
        long,
        env = "KEFU_CHANNELS_SMTP_HOSTNAME",
        default_value = "kefu-channels"
    )]
    pub channels_smtp_hostname: String,
    /// Largest mail taken, in octets (attachments included); larger is refused with 552.
    #[arg(long, env = "KEFU_CHANNELS_MAX_MAIL_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub channels_max_mail_bytes: usize,
    /// SMTP sessions at once; more are told 421 and come back later.
    #[arg(long, env = "KEFU_CHANNELS_SMTP_SESSIONS", default_value_t = 100)]
    pub channels_smtp_sessions: usize,
}

/// How replies are delivered and retried.
#[derive(clap::Args, Clone, Debug)]
pub struct DeliveryArgs {
    /// Attempts at a message the receiver refuses before it becomes a dead letter; a
    /// receiver that cannot be reached is waited for without limit.
    #[arg(long, env = "KEFU_CHANNELS_MAX_ATTEMPTS", default_value_t = 8)]
    pub channels_max_attempts: i32,
    /// Wait before the second attempt, in milliseconds; it doubles with each attempt,
    /// up to five minutes.
    #[arg(long, env = "KEFU_CHANNELS_BACKOFF_MS", default_value_t = 1000)]
    pub channels_backoff_ms: i64,
    /// How long one delivery may take, in milliseconds.
    #[arg(
        long,
        env = "KEFU_CHANNELS_DELIVERY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub channels_delivery_timeout_ms: u64,
}
