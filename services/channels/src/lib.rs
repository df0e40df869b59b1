//! Channel service: customers' messages from outside channels (signed webhooks, WeChat
//! Official Accounts) into kefu through the gateway, like any client, and the bot's and
//! agents' replies back out on the channel each customer used. The protocols are in
//! `webhook` and `wechat` (pure), the endpoints in `http`, the way through the gateway
//! and the persisted retries in `relay`, delivery in `delivery`, agents' replies in
//! `follow`, the delivery status for the console in `service`. This file wires them.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::channel_service_server::ChannelServiceServer;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{LiveTenants, RetryPolicy, RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Database, SqlChannels};

mod config;
mod delivery;
mod follow;
mod http;
mod relay;
mod service;
pub mod webhook;
pub mod wechat;

pub use config::{Config, DeliveryArgs, HttpArgs};

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
    };
    relay.clone().spawn_drainer(&shutdown);
    follow::Follower::spawn(relay.clone(), &shutdown);
    let server = &config.service.server;
    let bind = std::net::SocketAddr::new(server.bind_host, config.http.channels_http_port);
    let endpoints = http::router(http::Endpoints {
        relay,
        max_message_bytes: config.max_message_bytes,
    });
    let bound = kefu_runtime::serve_http("channels", bind, endpoints, shutdown.clone()).await?;
    tracing::info!(%bound, "channel endpoints listening (/webhooks/<tenant>, /wechat/<tenant>)");
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
