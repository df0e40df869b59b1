//! Ticket service: the ticket lifecycle as a validated state machine, priorities with
//! SLA deadlines (and a policy that raises tickets nobody answers), customer profiles
//! with VIP tiers, the human agents' queue, the agents' side of a handed-off
//! conversation, and an audit trail of every change with the authenticated actor.
//!
//! `rules` decides, `tickets` reads and writes through the stores, `service` speaks gRPC.
use std::sync::Arc;
use std::time::Duration;

mod config;
mod rules;
mod service;
mod tickets;

pub use config::{Config, SlaArgs};

use kefu_proto::v1::ticket_service_server::TicketServiceServer;
use kefu_runtime::{RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Database, SqlConversationStore, SqlSessionStore, SqlTicketStore};

use service::TicketHandle;
use tickets::Tickets;

pub const SPEC: ServiceSpec = ServiceSpec::TICKET;
const QUEUE_METRICS_INTERVAL: Duration = Duration::from_secs(5);

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let tickets = Arc::new(Tickets::new(
        Arc::new(SqlTicketStore::new(db.clone())),
        Arc::new(SqlConversationStore::new(db.clone())),
        Arc::new(SqlSessionStore::new(db.clone())),
        config.sla.clone(),
    ));
    let server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(TicketServiceServer::new(TicketHandle(tickets.clone())))
        .probe(Arc::new(db.probe()))
        .start(shutdown.clone())
        .await?;
    let metrics_tickets = tickets.clone();
    shutdown.every(QUEUE_METRICS_INTERVAL, move || {
        let tickets = metrics_tickets.clone();
        async move { tickets.publish_queue_metrics().await }
    });
    shutdown.every(config.sla.check_interval(), move || {
        let tickets = tickets.clone();
        async move { tickets.apply_sla_policy().await }
    });
    Ok(server)
}
