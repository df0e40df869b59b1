//! Channel service: customers' messages from outside channels (signed webhooks, WeChat
//! Official Accounts, email) into kefu through the gateway, like any client, and the
//! bot's and agents' replies back out on the channel each customer used. The protocols
//! are in `webhook`, `wechat` and `email` (pure), the endpoints in `http` and `smtp`
//! (with `mail` taking what the SMTP listener receives), the way through the gateway and
//! the persisted retries in `relay`, delivery in `delivery`, agents' replies in `follow`,
//! the delivery status for the console in `service`. This file wires them.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::channel_service_server::ChannelServiceServer;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{LiveTenants, RetryPolicy, RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Database, SqlChannels};

mod config;
mod delivery;
pub mod email;
mod follow;
mod http;
mod mail;
mod relay;
mod service;
pub mod smtp;
pub mod webhook;
pub mod wechat;

pub use config::{Config, DeliveryArgs, HttpArgs, SmtpArgs};

pub const SPEC: ServiceSpec = ServiceSpec::CHANNELS;

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let tenants = LiveTenants::load(&config.tenants_dir)?;
    tenants.clone().watch(&shutdown);
    let connect = config.service.connector(relay::SERVICE)?;
    let store = SqlChannels::new(db.clone());
    let delivery = &config.delivery;
    let relay = relay::Relay {
        store: store.clone(),
        tenants,
        gateway: ConversationServiceClient::new(
            connect.channel("kefu-gateway", &config.gateway_url)?,
        ),
        deliverer: delivery::Deliverer::new(Duration::from_millis(
            delivery.channels_delivery_timeout_ms,
        ))?,
        policy: RetryPolicy::new(delivery.channels_max_attempts, delivery.channels_backoff_ms),
        lease_ms: relay::LEASE_MS,
    };
    relay.clone().spawn_drainer(&shutdown);
    follow::Follower::spawn(relay.clone(), &shutdown);
    let server = &config.service.server;
    let bind = std::net::SocketAddr::new(server.bind_host, config.http.channels_http_port);
    let endpoints = http::router(http::Endpoints {
        relay: relay.clone(),
        max_message_bytes: config.max_message_bytes,
    });
    let bound = kefu_runtime::serve_http("channels", bind, endpoints, shutdown.clone()).await?;
    tracing::info!(%bound, "channel endpoints listening (/webhooks/<tenant>, /wechat/<tenant>)");
    let smtp = &config.smtp;
    let listener = tokio::net::TcpListener::bind((server.bind_host, smtp.channels_smtp_port))
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "the SMTP listener cannot bind port {}: {error}",
                smtp.channels_smtp_port
            )
        })?;
    tracing::info!(bound = %listener.local_addr()?, "SMTP listener taking mail for the tenants' support addresses");
    tokio::spawn(smtp::serve(
        listener,
        Arc::new(mail::Mailroom {
            relay,
            max_message_bytes: config.max_message_bytes,
        }),
        smtp::Limits {
            hostname: smtp.channels_smtp_hostname.clone(),
            max_mail_bytes: smtp.channels_max_mail_bytes,
            max_sessions: smtp.channels_smtp_sessions,
            tls: smtp.tls()?,
        },
        shutdown.clone(),
    ));
    kefu_runtime::Server::new(SPEC, config.service.server)
        .add_service(ChannelServiceServer::new(service::Deliveries(store)))
        .probe(Arc::new(db.probe()))
        .probe(Arc::new(DownstreamProbe::new(
            "gateway",
            connect.raw_channel(&config.gateway_url)?,
        )))
        .start(shutdown)
        .await
}
