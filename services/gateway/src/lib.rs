//! Gateway: the only service exposed outside the cluster. Every call passes the access
//! layer first (`access`: one table of who may call what, checked against the tenant's
//! keys by `auth`, and the tenant's rate limit); the handlers (`service`) then validate
//! and bound the request, assign idempotency keys before anything can be retried
//! (`validate`), and forward it with the caller's principal. Browsers reach the same
//! services over gRPC-Web from the pages it serves (`web`).
use std::sync::Arc;

use kefu_proto::v1::admin_service_server::AdminServiceServer;
use kefu_proto::v1::channel_service_client::ChannelServiceClient;
use kefu_proto::v1::channel_service_server::ChannelServiceServer;
use kefu_proto::v1::conversation_service_server::ConversationServiceServer;
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::reports_service_server::ReportsServiceServer;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::ticket_service_server::TicketServiceServer;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{LiveTenants, RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{RateLimiter, Redis};

mod access;
mod auth;
mod config;
mod service;
mod validate;
mod web;

pub use auth::{authenticate, Access, Credentials, Refusal};
pub use config::{Config, WebArgs};
use service::{Gateway, GatewayHandle};
use validate::Limits;

pub const SPEC: ServiceSpec = ServiceSpec::GATEWAY;
const SERVICE: &str = "kefu-gateway";

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let tenants = LiveTenants::load(&config.content.tenants_dir)?;
    tracing::info!(tenants = tenants.current().len(), "tenants loaded");
    tenants.clone().watch(&shutdown);
    // The gateway's own certificate is for its public port; calls inward use TLS only
    // where the cluster's CA is named.
    let connect = config.service.connector(SERVICE)?;
    let client = |target: &str, url: &str| connect.channel(target, url);
    let redis = match config.redis_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Some(Redis::connect(url, &config.redis_prefix)?),
        _ => None,
    };
    let access = access::AccessLayer::new(tenants.clone(), RateLimiter::new(redis, SERVICE));
    let gateway = GatewayHandle(Arc::new(Gateway {
        tenants: tenants.clone(),
        limits: Limits {
            max_message_bytes: config.max_message_bytes,
        },
        orchestrator: OrchestratorServiceClient::new(client(
            "kefu-orchestrator",
            &config.orchestrator_url,
        )?),
        tickets: TicketServiceClient::new(client("kefu-ticket", &config.ticket_url)?),
        knowledge: KnowledgeServiceClient::new(client("kefu-knowledge", &config.knowledge_url)?),
        router: RouterServiceClient::new(client("kefu-router", &config.router_url)?),
        channels: ChannelServiceClient::new(client("kefu-channels", &config.channels_url)?),
        shutdown: shutdown.clone(),
    }));
    if config.web.web_port != 0 {
        let bind = std::net::SocketAddr::new(config.service.server.bind_host, config.web.web_port);
        let grpc_port = config.service.server.grpc_addr(SPEC).port();
        let tls = config.service.server.tls.tls_cert.is_some();
        web::serve(bind, &config.web, grpc_port, tls, shutdown.clone()).await?;
    }
    // Browsers call the same services over gRPC-Web; either way the access layer
    // admits a call before its handler runs.
    let public = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(access);
    let cors = web::cors(&config.web, config.service.server.bind_host, tenants);
    // Readiness follows what customers and agents need; the admin calls to knowledge
    // and router fail on their own while those are down.
    kefu_runtime::Server::new(SPEC, config.service.server)
        .shed_above(config.max_in_flight)
        .browser_access(cors)
        .add_service(public.service(ConversationServiceServer::new(gateway.clone())))
        .add_service(public.service(TicketServiceServer::new(gateway.clone())))
        .add_service(public.service(AdminServiceServer::new(gateway.clone())))
        .add_service(public.service(ReportsServiceServer::new(gateway.clone())))
        .add_service(public.service(ChannelServiceServer::new(gateway)))
        .probe(Arc::new(DownstreamProbe::new(
            "orchestrator",
            connect.raw_channel(&config.orchestrator_url)?,
        )))
        .probe(Arc::new(DownstreamProbe::new(
            "ticket",
            connect.raw_channel(&config.ticket_url)?,
        )))
        .start(shutdown)
        .await
}
