//! Orchestrator: runs the workflow of one customer message (`workflow`, deciding with
//! the pure rules of `decision` and `context`), opens the tickets it needs from a
//! transactional outbox (`outbox`), streams a session's events to its customer and takes
//! their rating (`session`, `events`), and reports on the stored conversations
//! (`reports`). This file only wires them together.
use std::sync::Arc;

use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_server::OrchestratorServiceServer;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::sentiment_service_client::SentimentServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Cache, Database, Redis, SqlConversationStore, SqlReports, SqlSessionStore};

mod config;
mod context;
mod decision;
mod downstream;
mod events;
mod outbox;
pub mod reports;
mod service;
mod session;
mod workflow;

pub use config::{Config, OutboxArgs, Peers};
pub use decision::{
    decide, handoff_pending_reply, mood_priority, Conversation, Decision, EscalationReason,
    Retrieval,
};
/// How long an outbox entry may wait after its worker lost it (the worker died, or the
/// database went away before the attempt was recorded): its lease, then a drain. The
/// lease of an entry a turn commits ends with the customer's call, plus a margin.
pub use outbox::{DRAIN_INTERVAL, LEASE_MS, TURN_LEASE_MARGIN_MS};
pub use service::OrchestratorHandle;
pub use workflow::Orchestrator;

pub const SPEC: ServiceSpec = ServiceSpec::ORCHESTRATOR;
/// How long a session's context stays in the cache after its last turn.
const SESSION_CONTEXT_TTL: std::time::Duration = std::time::Duration::from_secs(1800);

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let connect = config.service.connector(workflow::SERVICE)?;
    let peers = &config.peers;
    let conversations = Arc::new(SqlConversationStore::new(db.clone()));
    let downstream = downstream::Downstream {
        router: RouterServiceClient::new(connect.channel("kefu-router", &peers.router_url)?),
        sentiment: SentimentServiceClient::new(
            connect.channel("kefu-sentiment", &peers.sentiment_url)?,
        ),
        knowledge: KnowledgeServiceClient::new(
            connect.channel("kefu-knowledge", &peers.knowledge_url)?,
        ),
        tickets: TicketServiceClient::new(connect.channel("kefu-ticket", &peers.ticket_url)?),
    };
    let opener = outbox::TicketOpener {
        outbox: conversations.clone(),
        tickets: downstream.tickets.clone(),
        policy: outbox::retry_policy(&config.outbox),
        lease_ms: LEASE_MS,
    };
    opener.clone().spawn_drainer(&shutdown);
    let orchestrator = Orchestrator {
        sessions: Arc::new(SqlSessionStore::new(db.clone())),
        reports: SqlReports::new(db.clone()),
        bus: conversations.bus().clone(),
        conversations,
        shutdown: shutdown.clone(),
        context: Cache::new(
            "session",
            workflow::SERVICE,
            SESSION_CONTEXT_TTL,
            redis.clone(),
        ),
        downstream,
        opener,
    };
    let mut server = kefu_runtime::Server::new(SPEC, config.service.server)
        .add_service(OrchestratorServiceServer::new(OrchestratorHandle(
            Arc::new(orchestrator),
        )))
        .probe(Arc::new(db.probe()));
    if let Some(redis) = redis {
        server = server.probe(Arc::new(redis.probe()));
    }
    for (name, url) in [
        ("router", &peers.router_url),
        ("sentiment", &peers.sentiment_url),
        ("knowledge", &peers.knowledge_url),
        ("ticket", &peers.ticket_url),
    ] {
        server = server.probe(Arc::new(DownstreamProbe::new(
            name,
            connect.raw_channel(url)?,
        )));
    }
    server.start(shutdown).await
}
