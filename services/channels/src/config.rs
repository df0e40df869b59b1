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
    /// Certificate chain (PEM) for the mail domain's MX name: with it the listener offers
    /// STARTTLS, so that sending servers can encrypt; without it, plaintext only.
    #[arg(long, env = "KEFU_CHANNELS_SMTP_TLS_CERT")]
    pub channels_smtp_tls_cert: Option<std::path::PathBuf>,
    /// The private key of KEFU_CHANNELS_SMTP_TLS_CERT (PEM).
    #[arg(long, env = "KEFU_CHANNELS_SMTP_TLS_KEY")]
    pub channels_smtp_tls_key: Option<std::path::PathBuf>,
}

impl SmtpArgs {
    /// The STARTTLS acceptor, when a certificate is given.
    pub fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        use anyhow::Context as _;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = match (&self.channels_smtp_tls_cert, &self.channels_smtp_tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) => return Ok(None),
            _ => anyhow::bail!(
                "KEFU_CHANNELS_SMTP_TLS_CERT and KEFU_CHANNELS_SMTP_TLS_KEY go together: set both or neither"
            ),
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let chain = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
        let key = PrivateKeyDer::from_pem_slice(&read(key)?)
            .with_context(|| format!("{} is not a PEM private key", key.display()))?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the SMTP certificate and key do not match")?;
        Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            config,
        ))))
    }
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
