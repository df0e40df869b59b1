//! The all-in-one stack: the seven kefu services in one process, each on its own port and
//! talking to the others over gRPC, as `kefu up` runs them (and the end-to-end tests).

pub mod bench;
pub mod escalation_eval;
pub mod report_bench;
pub mod stack;
mod webhook_driver;

use std::net::IpAddr;

use clap::Parser;
use kefu_runtime::{
    ClientArgs, ContentArgs, DataArgs, ServerArgs, ServiceArgs, ServiceSpec, Shutdown,
    TelemetryArgs,
};

#[derive(Parser, Clone, Debug)]
#[command(name = "kefu up")]
pub struct UpArgs {
    /// Address every service binds to.
    #[arg(long, env = "KEFU_BIND_HOST", default_value = "127.0.0.1")]
    pub bind_host: IpAddr,
    #[arg(long, env = "KEFU_GATEWAY_PORT", default_value_t = ServiceSpec::GATEWAY.grpc_port)]
    pub gateway_port: u16,
    #[arg(long, env = "KEFU_ORCHESTRATOR_PORT", default_value_t = ServiceSpec::ORCHESTRATOR.grpc_port)]
    pub orchestrator_port: u16,
    #[arg(long, env = "KEFU_ROUTER_PORT", default_value_t = ServiceSpec::ROUTER.grpc_port)]
    pub router_port: u16,
    #[arg(long, env = "KEFU_KNOWLEDGE_PORT", default_value_t = ServiceSpec::KNOWLEDGE.grpc_port)]
    pub knowledge_port: u16,
    #[arg(long, env = "KEFU_TICKET_PORT", default_value_t = ServiceSpec::TICKET.grpc_port)]
    pub ticket_port: u16,
    #[arg(long, env = "KEFU_SENTIMENT_PORT", default_value_t = ServiceSpec::SENTIMENT.grpc_port)]
    pub sentiment_port: u16,
    #[arg(long, env = "KEFU_CHANNELS_PORT", default_value_t = ServiceSpec::CHANNELS.grpc_port)]
    pub channels_port: u16,
    /// First of seven consecutive /metrics ports (gateway, orchestrator, router, knowledge, ticket, sentiment, channels).
    #[arg(long, env = "KEFU_METRICS_BASE_PORT", default_value_t = ServiceSpec::GATEWAY.metrics_port)]
    pub metrics_base_port: u16,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "KEFU_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    #[arg(long, env = "KEFU_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Calls the gateway handles at once; more get RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "KEFU_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
    #[command(flatten)]
    pub clients: ClientArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub sla: kefu_ticket::SlaArgs,
    #[command(flatten)]
    pub outbox: kefu_orchestrator::OutboxArgs,
    #[command(flatten)]
    pub web: kefu_gateway::WebArgs,
    #[command(flatten)]
    pub channels_http: kefu_channels::HttpArgs,
    #[command(flatten)]
    pub channels_smtp: kefu_channels::SmtpArgs,
    #[command(flatten)]
    pub channels_delivery: kefu_channels::DeliveryArgs,
    /// TLS of the gateway's public port (KEFU_TLS_CERT, KEFU_TLS_KEY); the services
    /// behind it talk plaintext on the loopback interface.
    #[command(flatten)]
    pub gateway_tls: kefu_runtime::TlsArgs,
}

impl UpArgs {
    fn server(&self, port: u16, metrics_offset: u16) -> ServerArgs {
        ServerArgs {
            bind_host: self.bind_host,
            grpc_port: Some(port),
            metrics_port: Some(if self.metrics_base_port == 0 {
                0
            } else {
                self.metrics_base_port + metrics_offset
            }),
            request_timeout_ms: self.request_timeout_ms,
            max_concurrency: 256,
            tls: Default::default(),
        }
    }

    fn url(&self, port: u16) -> String {
        let host = if self.bind_host.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            self.bind_host.to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("http://{host}:{port}")
    }
}

/// Starts the seven services; returns once all listen.
pub async fn up(
    args: UpArgs,
    shutdown: Shutdown,
) -> anyhow::Result<Vec<kefu_runtime::RunningServer>> {
    let peers = kefu_orchestrator::Config {
        service: ServiceArgs {
            server: args.server(args.orchestrator_port, 1),
            clients: args.clients.clone(),
        },
        data: args.data.clone(),
        peers: kefu_orchestrator::Peers {
            router_url: args.url(args.router_port),
            sentiment_url: args.url(args.sentiment_port),
            knowledge_url: args.url(args.knowledge_port),
            ticket_url: args.url(args.ticket_port),
        },
        outbox: args.outbox.clone(),
    };
    let servers = vec![
        kefu_ticket::start(
            kefu_ticket::Config {
                server: args.server(args.ticket_port, 4),
                data: args.data.clone(),
                sla: args.sla.clone(),
            },
            shutdown.clone(),
        )
        .await?,
        kefu_sentiment::start(
            kefu_sentiment::Config {
                server: args.server(args.sentiment_port, 5),
                models: args.content.models.clone(),
            },
            shutdown.clone(),
        )
        .await?,
        kefu_router::start(
            kefu_router::Config {
                server: args.server(args.router_port, 2),
                content: args.content.clone(),
                data: args.data.clone(),
            },
            shutdown.clone(),
        )
        .await?,
        kefu_knowledge::start(
            kefu_knowledge::Config {
                server: args.server(args.knowledge_port, 3),
                content: args.content.clone(),
                data: args.data.clone(),
            },
            shutdown.clone(),
        )
        .await?,
        kefu_orchestrator::start(peers, shutdown.clone()).await?,
        kefu_gateway::start(
            kefu_gateway::Config {
                service: ServiceArgs {
                    server: ServerArgs {
                        tls: args.gateway_tls.clone(),
                        ..args.server(args.gateway_port, 0)
                    },
                    clients: args.clients.clone(),
                },
                content: args.content.clone(),
                max_message_bytes: args.max_message_bytes,
                orchestrator_url: args.url(args.orchestrator_port),
                ticket_url: args.url(args.ticket_port),
                knowledge_url: args.url(args.knowledge_port),
                router_url: args.url(args.router_port),
                channels_url: args.url(args.channels_port),
                web: args.web.clone(),
                redis_url: args.data.redis_url.clone(),
                redis_prefix: args.data.redis_prefix.clone(),
                max_in_flight: args.max_in_flight,
            },
            shutdown.clone(),
        )
        .await?,
        kefu_channels::start(
            kefu_channels::Config {
                service: ServiceArgs {
                    // Calls to a TLS gateway trust the CA the gateway's certificate names.
                    server: ServerArgs {
                        tls: kefu_runtime::TlsArgs {
                            tls_ca: args.gateway_tls.tls_ca.clone(),
                            ..Default::default()
                        },
                        ..args.server(args.channels_port, 6)
                    },
                    clients: args.clients.clone(),
                },
                data: args.data.clone(),
                tenants_dir: args.content.tenants_dir.clone(),
                gateway_url: gateway_url(&args),
                max_message_bytes: args.max_message_bytes,
                http: args.channels_http.clone(),
                smtp: args.channels_smtp.clone(),
                delivery: args.channels_delivery.clone(),
            },
            shutdown,
        )
        .await?,
    ];
    Ok(servers)
}

/// The gateway as the channel service reaches it: over TLS with the gateway's own
/// certificate when its public port has one.
fn gateway_url(args: &UpArgs) -> String {
    let url = args.url(args.gateway_port);
    if args.gateway_tls.tls_cert.is_some() {
        url.replacen("http://", "https://", 1)
    } else {
        url
    }
}
