//! Ticket service: the ticket lifecycle as a validated state machine, priorities with
//! SLA deadlines, customer profiles with VIP tiers, the human agents' queue and an
//! audit trail of every change.
use std::sync::Arc;
use std::time::Duration;

use kefu_proto::v1::ticket_service_server::{TicketService, TicketServiceServer};
use kefu_proto::v1::*;
use kefu_proto::{enum_label as label, timestamp_from_millis as timestamp};
use kefu_runtime::{DataArgs, RunningServer, ServerArgs, ServiceSpec, Shutdown};
use kefu_storage::{
    now_millis, AuditRecord, CustomerRecord, Database, SqlTicketStore, TicketChange, TicketRecord,
    TicketStore, UpdateOutcome,
};
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::TICKET;
const SERVICE: &str = "kefu-ticket";
const SYSTEM_ACTOR: &str = "system";
/// Optimistic updates that lose a race re-read the ticket and try again this often.
const UPDATE_ATTEMPTS: usize = 8;
const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 500;
const QUEUE_METRICS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Time allowed to resolve a ticket of each priority.
pub fn sla(priority: Priority) -> Duration {
    const HOUR: u64 = 3600;
    Duration::from_secs(match priority {
        Priority::Urgent => HOUR,
        Priority::High => 4 * HOUR,
        Priority::Medium | Priority::Unspecified => 24 * HOUR,
        Priority::Low => 72 * HOUR,
    })
}

/// The lifecycle: which status may follow which. Reopening is resolved/closed -> open.
pub fn can_transition(from: TicketStatus, to: TicketStatus) -> bool {
    use TicketStatus::*;
    matches!(
        (from, to),
        (Open, InProgress | Pending | Resolved | Closed)
            | (InProgress, Open | Pending | Resolved | Closed)
            | (Pending, InProgress | Resolved | Closed)
            | (Resolved, Closed | Open)
            | (Closed, Open)
    )
}

fn status_name(status: i32) -> &'static str {
    TicketStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn to_proto(record: TicketRecord, audit: Vec<AuditRecord>, now: i64) -> Ticket {
    let open = !matches!(
        TicketStatus::try_from(record.status),
        Ok(TicketStatus::Resolved | TicketStatus::Closed)
    );
    let breached = match record.resolved_at {
        Some(resolved) => resolved > record.sla_due_at,
        None => open && now > record.sla_due_at,
    };
    Ticket {
        ticket_id: record.ticket_id,
        tenant_id: record.tenant_id,
        customer_id: record.customer_id,
        session_id: record.session_id,
        subject: record.subject,
        description: record.description,
        status: record.status,
        priority: record.priority,
        intent: record.intent,
        channel: record.channel,
        assignee: record.assignee,
        vip_tier: record.vip_tier,
        escalation_reason: record.escalation_reason,
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        sla_due_at: Some(timestamp(record.sla_due_at)),
        resolved_at: record.resolved_at.map(timestamp),
        sla_breached: breached,
        audit: audit
            .into_iter()
            .map(|a| AuditEntry {
                actor: a.actor,
                at: Some(timestamp(a.at)),
                action: a.action,
                from_status: a.from_status,
                to_status: a.to_status,
                comment: a.comment,
            })
            .collect(),
    }
}

fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

pub struct Tickets {
    store: Arc<dyn TicketStore>,
}

impl Tickets {
    pub fn new(store: Arc<dyn TicketStore>) -> Self {
        Self { store }
    }

    async fn load(&self, tenant_id: &str, ticket_id: &str) -> Result<TicketRecord, Status> {
        self.store
            .get(tenant_id, ticket_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("ticket {ticket_id:?} not found")))
    }

    async fn vip_tier(&self, tenant_id: &str, customer_id: &str) -> Result<i32, Status> {
        Ok(self
            .store
            .get_customer(tenant_id, customer_id)
            .await?
            .map(|c| c.vip_tier)
            .unwrap_or(VipTier::None as i32))
    }

    /// Moves a ticket to `to`, re-validating against the latest state if a concurrent
    /// writer got there first, so no update is lost and no invalid move slips through.
    async fn transition(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        to: TicketStatus,
        assignee: Option<&str>,
        actor: &str,
        comment: &str,
    ) -> Result<TicketRecord, Status> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.load(tenant_id, ticket_id).await?;
            let from = TicketStatus::try_from(current.status).unwrap_or(TicketStatus::Unspecified);
            if !can_transition(from, to) {
                return Err(Status::failed_precondition(format!(
                    "ticket {ticket_id} cannot move from {} to {}",
                    status_name(current.status),
                    to.as_str_name()
                )));
            }
            let now = now_millis();
            let resolved_at = match to {
                TicketStatus::Resolved => Some(now),
                TicketStatus::Closed => current.resolved_at.or(Some(now)),
                _ => None,
            };
            let assignee = match (to, assignee) {
                (_, Some(agent)) => agent.to_owned(),
                (TicketStatus::Open, None) => String::new(),
                _ => current.assignee.clone(),
            };
            let change = TicketChange {
                status: to as i32,
                assignee: assignee.clone(),
                updated_at: now,
                resolved_at,
            };
            let action = if matches!(from, TicketStatus::Resolved | TicketStatus::Closed)
                && to == TicketStatus::Open
            {
                "reopened"
            } else if assignee != current.assignee && !assignee.is_empty() {
                "assigned"
            } else {
                "transition"
            };
            let audit = AuditRecord {
                actor: actor.to_owned(),
                action: action.to_owned(),
                from_status: from as i32,
                to_status: to as i32,
                comment: comment.to_owned(),
                at: now,
            };
            match self
                .store
                .update(tenant_id, ticket_id, current.version, change, audit)
                .await?
            {
                UpdateOutcome::Updated(ticket) => {
                    if to == TicketStatus::Resolved {
                        metrics::histogram!(
                            "kefu_ticket_resolution_seconds",
                            "service" => SERVICE,
                            "tenant" => tenant_id.to_owned(),
                            "priority" => label(Priority::try_from(ticket.priority).unwrap_or_default().as_str_name(), "PRIORITY_"),
                        )
                        .record((now - ticket.created_at).max(0) as f64 / 1000.0);
                    }
                    return Ok(*ticket);
                }
                UpdateOutcome::Conflict => continue,
            }
        }
        Err(Status::aborted(format!(
            "ticket {ticket_id} is being changed concurrently; retry"
        )))
    }

    async fn publish_queue_metrics(&self) {
        let tenants = match self.store.tenants_with_tickets().await {
            Ok(tenants) => tenants,
            Err(error) => {
                tracing::warn!(%error, "queue metrics unavailable");
                return;
            }
        };
        let now = now_millis();
        for tenant in tenants {
            if let Ok(stats) = self
                .store
                .queue_stats(&tenant, TicketStatus::Open as i32, now)
                .await
            {
                let age = stats
                    .oldest_created_at
                    .map(|oldest| (now - oldest).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("kefu_ticket_queue_depth", "service" => SERVICE, "tenant" => tenant.clone()).set(stats.depth as f64);
                metrics::gauge!("kefu_ticket_queue_oldest_age_seconds", "service" => SERVICE, "tenant" => tenant.clone()).set(age);
                metrics::gauge!("kefu_ticket_queue_overdue", "service" => SERVICE, "tenant" => tenant).set(stats.overdue as f64);
            }
        }
    }
}

#[derive(Clone)]
pub struct TicketHandle(Arc<Tickets>);

#[tonic::async_trait]
impl TicketService for TicketHandle {
    async fn create_ticket(
        &self,
        request: Request<CreateTicketRequest>,
    ) -> Result<Response<CreateTicketResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.customer_id, "customer_id")?;
        required(&request.subject, "subject")?;
        let priority = match Priority::try_from(request.priority) {
            Ok(Priority::Unspecified) => Priority::Medium,
            Ok(priority) => priority,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown priority {}",
                    request.priority
                )))
            }
        };
        let now = now_millis();
        let actor = if request.actor.trim().is_empty() {
            SYSTEM_ACTOR.to_owned()
        } else {
            request.actor.clone()
        };
        let vip_tier = self
            .0
            .vip_tier(&request.tenant_id, &request.customer_id)
            .await?;
        let record = TicketRecord {
            tenant_id: request.tenant_id.clone(),
            ticket_id: uuid::Uuid::now_v7().to_string(),
            customer_id: request.customer_id,
            session_id: request.session_id,
            subject: request.subject,
            description: request.description,
            status: TicketStatus::Open as i32,
            priority: priority as i32,
            intent: request.intent,
            channel: request.channel,
            assignee: String::new(),
            vip_tier,
            escalation_reason: request.escalation_reason,
            idempotency_key: Some(request.idempotency_key).filter(|key| !key.trim().is_empty()),
            created_at: now,
            updated_at: now,
            sla_due_at: now + sla(priority).as_millis() as i64,
            resolved_at: None,
            version: 0,
        };
        let audit = AuditRecord {
            actor,
            action: "created".into(),
            from_status: 0,
            to_status: TicketStatus::Open as i32,
            comment: String::new(),
            at: now,
        };
        let (ticket, created) = self.0.store.create(record, audit).await?;
        if created {
            metrics::counter!("kefu_tickets_created_total", "service" => SERVICE, "tenant" => ticket.tenant_id.clone(), "priority" => label(priority.as_str_name(), "PRIORITY_")).increment(1);
            tracing::info!(ticket_id = %ticket.ticket_id, priority = priority.as_str_name(), "ticket created");
        }
        Ok(Response::new(CreateTicketResponse {
            ticket: Some(to_proto(ticket, Vec::new(), now)),
            created,
        }))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<GetTicketResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
        let ticket = self.0.load(&request.tenant_id, &request.ticket_id).await?;
        let audit = self
            .0
            .store
            .audit_trail(&request.tenant_id, &request.ticket_id)
            .await?;
        Ok(Response::new(GetTicketResponse {
            ticket: Some(to_proto(ticket, audit, now_millis())),
        }))
    }

    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        if !(0..=MAX_PAGE_SIZE).contains(&request.page_size) {
            return Err(Status::invalid_argument(format!(
                "page_size must be between 0 and {MAX_PAGE_SIZE}"
            )));
        }
        let status = TicketStatus::try_from(request.status)
            .map_err(|_| Status::invalid_argument(format!("unknown status {}", request.status)))?;
        let limit = if request.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            request.page_size
        };
        let customer = Some(request.customer_id.as_str()).filter(|c| !c.is_empty());
        let status = (status != TicketStatus::Unspecified).then_some(status as i32);
        let now = now_millis();
        let tickets = self
            .0
            .store
            .list(&request.tenant_id, customer, status, limit as i64)
            .await?;
        Ok(Response::new(ListTicketsResponse {
            tickets: tickets
                .into_iter()
                .map(|t| to_proto(t, Vec::new(), now))
                .collect(),
        }))
    }

    async fn next_in_queue(
        &self,
        request: Request<NextInQueueRequest>,
    ) -> Result<Response<NextInQueueResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        let tenant = request.tenant_id.as_str();
        let depth = self
            .0
            .store
            .queue_stats(tenant, TicketStatus::Open as i32, now_millis())
            .await?
            .depth as i32;
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(next) = self
                .0
                .store
                .next_in_queue(tenant, TicketStatus::Open as i32)
                .await?
            else {
                return Ok(Response::new(NextInQueueResponse {
                    ticket: None,
                    queue_depth: depth,
                }));
            };
            if request.assignee.trim().is_empty() {
                return Ok(Response::new(NextInQueueResponse {
                    ticket: Some(to_proto(next, Vec::new(), now_millis())),
                    queue_depth: depth,
                }));
            }
            // Another agent may claim the same ticket at the same moment: then take the next one.
            match self
                .0
                .transition(
                    tenant,
                    &next.ticket_id,
                    TicketStatus::InProgress,
                    Some(&request.assignee),
                    &request.assignee,
                    "taken from the queue",
                )
                .await
            {
                Ok(ticket) if ticket.assignee == request.assignee => {
                    return Ok(Response::new(NextInQueueResponse {
                        ticket: Some(to_proto(ticket, Vec::new(), now_millis())),
                        queue_depth: depth,
                    }));
                }
                Ok(_) => continue,
                Err(status) if status.code() == tonic::Code::FailedPrecondition => continue,
                Err(status) => return Err(status),
            }
        }
        Err(Status::aborted("the queue is contended; retry"))
    }

    async fn transition_ticket(
        &self,
        request: Request<TransitionTicketRequest>,
    ) -> Result<Response<TransitionTicketResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
        required(&request.actor, "actor")?;
        let to = match TicketStatus::try_from(request.to_status) {
            Ok(TicketStatus::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "to_status must be a ticket status",
                ))
            }
            Ok(status) => status,
        };
        let ticket = self
            .0
            .transition(
                &request.tenant_id,
                &request.ticket_id,
                to,
                None,
                &request.actor,
                &request.comment,
            )
            .await?;
        let audit = self
            .0
            .store
            .audit_trail(&request.tenant_id, &request.ticket_id)
            .await?;
        Ok(Response::new(TransitionTicketResponse {
            ticket: Some(to_proto(ticket, audit, now_millis())),
        }))
    }

    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.customer_id, "customer_id")?;
        let customer = self
            .0
            .store
            .get_customer(&request.tenant_id, &request.customer_id)
            .await?;
        let customer = match customer {
            Some(c) => Customer {
                tenant_id: c.tenant_id,
                customer_id: c.customer_id,
                display_name: c.display_name,
                vip_tier: c.vip_tier,
            },
            None => Customer {
                tenant_id: request.tenant_id,
                customer_id: request.customer_id,
                display_name: String::new(),
                vip_tier: VipTier::None as i32,
            },
        };
        Ok(Response::new(GetCustomerResponse {
            customer: Some(customer),
        }))
    }

    async fn upsert_customer(
        &self,
        request: Request<UpsertCustomerRequest>,
    ) -> Result<Response<UpsertCustomerResponse>, Status> {
        let customer = request
            .into_inner()
            .customer
            .ok_or_else(|| Status::invalid_argument("customer is required"))?;
        required(&customer.tenant_id, "customer.tenant_id")?;
        required(&customer.customer_id, "customer.customer_id")?;
        let tier = match VipTier::try_from(customer.vip_tier) {
            Ok(VipTier::Unspecified) => VipTier::None,
            Ok(tier) => tier,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown vip_tier {}",
                    customer.vip_tier
                )))
            }
        };
        let stored = self
            .0
            .store
            .upsert_customer(CustomerRecord {
                tenant_id: customer.tenant_id,
                customer_id: customer.customer_id,
                display_name: customer.display_name,
                vip_tier: tier as i32,
            })
            .await?;
        Ok(Response::new(UpsertCustomerResponse {
            customer: Some(Customer {
                tenant_id: stored.tenant_id,
                customer_id: stored.customer_id,
                display_name: stored.display_name,
                vip_tier: stored.vip_tier,
            }),
        }))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let tickets = Arc::new(Tickets::new(Arc::new(SqlTicketStore::new(db.clone()))));
    let server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(TicketServiceServer::new(TicketHandle(tickets.clone())))
        .probe(Arc::new(db.probe()))
        .start(shutdown.clone())
        .await?;
    tokio::spawn(async move {
        loop {
            tickets.publish_queue_metrics().await;
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_METRICS_INTERVAL) => {}
                _ = shutdown.wait() => return,
            }
        }
    });
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_allows_only_valid_moves() {
        use TicketStatus::*;
        assert!(can_transition(Open, InProgress));
        assert!(can_transition(Resolved, Open), "reopen");
        assert!(can_transition(Closed, Open), "reopen");
        assert!(!can_transition(Closed, Resolved));
        assert!(!can_transition(Open, Open));
        assert!(!can_transition(Pending, Open));
        assert!(!can_transition(Unspecified, Open));
    }

    #[test]
    fn higher_priority_gets_a_shorter_sla() {
        assert!(sla(Priority::Urgent) < sla(Priority::High));
        assert!(sla(Priority::High) < sla(Priority::Medium));
        assert!(sla(Priority::Medium) < sla(Priority::Low));
    }
}
