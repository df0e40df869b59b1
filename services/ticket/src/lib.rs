//! Ticket service: the ticket lifecycle as a validated state machine, priorities with
//! SLA deadlines (and a policy that raises tickets nobody answers), customer profiles
//! with VIP tiers, the human agents' queue, the agents' side of a handed-off
//! conversation, and an audit trail of every change with the authenticated actor.
use std::sync::Arc;
use std::time::Duration;

mod policy;

pub use policy::{can_transition, is_unresolved, one_step_up, SlaArgs};

use kefu_proto::v1::ticket_service_server::{TicketService, TicketServiceServer};
use kefu_proto::v1::*;
use kefu_proto::{enum_label as label, timestamp_from_millis as timestamp};
use kefu_runtime::{DataArgs, Principal, RunningServer, ServerArgs, ServiceSpec, Shutdown};
use kefu_storage::conversations::{merge_session, SessionEntry};
use kefu_storage::{
    now_millis, AuditRecord, ConversationStore, CustomerRecord, Database, HandlerMove,
    HandlerOutcome, SessionStore, SqlConversationStore, SqlSessionStore, SqlTicketStore,
    TicketChange, TicketRecord, TicketStore, UpdateOutcome,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::TICKET;
const SERVICE: &str = "kefu-ticket";
const SYSTEM_ACTOR: &str = "system";
const SLA_POLICY_ACTOR: &str = "sla-policy";
/// Entries of one conversation returned at most (a conversation is far shorter).
const MAX_CONVERSATION_ENTRIES: i64 = 5000;
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
    #[command(flatten)]
    pub sla: SlaArgs,
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
    conversations: Arc<dyn ConversationStore>,
    sessions: Arc<dyn SessionStore>,
    sla: SlaArgs,
}

/// The actor of a change: the authenticated caller the gateway passed on; for calls of
/// other kefu services without one, the platform itself.
fn actor_of(metadata: &tonic::metadata::MetadataMap) -> String {
    Principal::from_metadata(metadata)
        .map(|p| p.actor)
        .filter(|actor| !actor.trim().is_empty())
        .unwrap_or_else(|| SYSTEM_ACTOR.to_owned())
}

fn priority_label(priority: i32) -> String {
    label(
        Priority::try_from(priority)
            .unwrap_or_default()
            .as_str_name(),
        "PRIORITY_",
    )
}

impl Tickets {
    pub fn new(
        store: Arc<dyn TicketStore>,
        conversations: Arc<dyn ConversationStore>,
        sessions: Arc<dyn SessionStore>,
        sla: SlaArgs,
    ) -> Self {
        Self {
            store,
            conversations,
            sessions,
            sla,
        }
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

    /// Applies the change `decide` makes of the latest state, re-reading and deciding
    /// again when a concurrent writer got there first, so no update is lost and no
    /// invalid change slips through. `decide` returning None leaves the ticket as is.
    async fn update<F>(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        mut decide: F,
    ) -> Result<(TicketRecord, bool), Status>
    where
        F: FnMut(&TicketRecord, i64) -> Result<Option<(TicketChange, AuditRecord)>, Status>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.load(tenant_id, ticket_id).await?;
            let now = now_millis();
            let Some((change, audit)) = decide(&current, now)? else {
                return Ok((current, false));
            };
            match self
                .store
                .update(tenant_id, ticket_id, current.version, change, audit)
                .await?
            {
                UpdateOutcome::Updated(ticket) => return Ok((*ticket, true)),
                UpdateOutcome::Conflict => continue,
            }
        }
        Err(Status::aborted(format!(
            "ticket {ticket_id} is being changed concurrently; retry"
        )))
    }

    /// Moves a ticket to `to` (assigning it when `assignee` is given) and the session it
    /// came from along: to the agent when taken, back to the bot when resolved.
    async fn transition(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        to: TicketStatus,
        assignee: Option<&str>,
        actor: &str,
        comment: &str,
    ) -> Result<TicketRecord, Status> {
        let (ticket, _) = self
            .update(tenant_id, ticket_id, |current, now| {
                let from =
                    TicketStatus::try_from(current.status).unwrap_or(TicketStatus::Unspecified);
                if !can_transition(from, to) {
                    return Err(Status::failed_precondition(format!(
                        "ticket {ticket_id} cannot move from {} to {}",
                        status_name(current.status),
                        to.as_str_name()
                    )));
                }
                let mut change = TicketChange::from_current(current, now);
                change.status = to as i32;
                change.resolved_at = match to {
                    TicketStatus::Resolved => Some(now),
                    TicketStatus::Closed => current.resolved_at.or(Some(now)),
                    _ => None,
                };
                change.assignee = match (to, assignee) {
                    (_, Some(agent)) => agent.to_owned(),
                    (TicketStatus::Open, None) => String::new(),
                    (TicketStatus::InProgress, None) if current.assignee.is_empty() => {
                        actor.to_owned()
                    }
                    _ => current.assignee.clone(),
                };
                let action = if !is_unresolved(from) && to == TicketStatus::Open {
                    "reopened"
                } else if change.assignee != current.assignee && !change.assignee.is_empty() {
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
                Ok(Some((change, audit)))
            })
            .await?;
        if to == TicketStatus::Resolved {
            metrics::histogram!(
                "kefu_ticket_resolution_seconds",
                "service" => SERVICE,
                "tenant" => tenant_id.to_owned(),
                "priority" => priority_label(ticket.priority),
            )
            .record((ticket.updated_at - ticket.created_at).max(0) as f64 / 1000.0);
        }
        self.follow_session(&ticket, to).await?;
        Ok(ticket)
    }

    /// The session of a handed-off ticket goes with it: to the agent who took it, and
    /// back to the bot once it is resolved or closed.
    async fn follow_session(&self, ticket: &TicketRecord, to: TicketStatus) -> Result<(), Status> {
        if ticket.session_id.is_empty() {
            return Ok(());
        }
        let change = match to {
            TicketStatus::InProgress => HandlerMove::Take {
                ticket_id: ticket.ticket_id.clone(),
            },
            TicketStatus::Resolved | TicketStatus::Closed => HandlerMove::Release {
                ticket_id: ticket.ticket_id.clone(),
            },
            _ => return Ok(()),
        };
        if let HandlerOutcome::Moved(event) = self
            .conversations
            .move_session(&ticket.tenant_id, &ticket.session_id, change)
            .await?
        {
            tracing::info!(ticket_id = %ticket.ticket_id, event_id = event.event_id, "session handler changed");
        }
        Ok(())
    }

    /// Raises a ticket to at least `priority`; false when it already was.
    async fn raise_priority(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        priority: Priority,
        actor: &str,
        reason: &str,
    ) -> Result<(TicketRecord, bool), Status> {
        self.update(tenant_id, ticket_id, |current, now| {
            let status = TicketStatus::try_from(current.status).unwrap_or_default();
            if !is_unresolved(status) || current.priority >= priority as i32 {
                return Ok(None);
            }
            let mut change = TicketChange::from_current(current, now);
            change.priority = priority as i32;
            Ok(Some((
                change,
                AuditRecord {
                    actor: actor.to_owned(),
                    action: "priority_raised".into(),
                    from_status: current.status,
                    to_status: current.status,
                    comment: format!(
                        "{} -> {}: {reason}",
                        priority_label(current.priority),
                        priority_label(priority as i32)
                    ),
                    at: now,
                },
            )))
        })
        .await
    }

    /// The SLA policy: a ticket that reaches 80% of its SLA without an agent's reply is
    /// raised one priority step, once. Replicas may run this at the same time: the
    /// versioned update lets exactly one of them act on each ticket.
    async fn apply_sla_policy(&self) -> Result<usize, Status> {
        let mut raised = 0;
        for ticket in self.store.sla_at_risk(now_millis(), 100).await? {
            let (tenant_id, ticket_id) = (ticket.tenant_id.clone(), ticket.ticket_id.clone());
            let result = self
                .update(&tenant_id, &ticket_id, |current, now| {
                    if current.sla_raised || current.first_response_at.is_some() {
                        return Ok(None);
                    }
                    let from = Priority::try_from(current.priority).unwrap_or_default();
                    let mut change = TicketChange::from_current(current, now);
                    change.priority = one_step_up(from) as i32;
                    change.sla_raised = true;
                    Ok(Some((
                        change,
                        AuditRecord {
                            actor: SLA_POLICY_ACTOR.into(),
                            action: "priority_raised".into(),
                            from_status: current.status,
                            to_status: current.status,
                            comment: format!(
                                "{} -> {}: 80% of the SLA passed without a reply",
                                priority_label(current.priority),
                                priority_label(one_step_up(from) as i32)
                            ),
                            at: now,
                        },
                    )))
                })
                .await;
            match result {
                Ok((ticket, true)) => {
                    raised += 1;
                    metrics::counter!("kefu_sla_priority_raises_total", "service" => SERVICE, "tenant" => tenant_id, "to_priority" => priority_label(ticket.priority)).increment(1);
                }
                Ok((_, false)) => {}
                // Lost to another replica or a concurrent change: the next round decides again.
                Err(status) if status.code() == tonic::Code::Aborted => {}
                Err(status) => return Err(status),
            }
        }
        Ok(raised)
    }

    /// An agent's reply to the customer of a handed-off ticket: stored as an event of
    /// the session (which delivers it), with the first one timed against the hand-off.
    async fn reply(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        agent: &str,
        text: &str,
        request_id: Option<&str>,
    ) -> Result<(i64, TicketRecord), Status> {
        let mut ticket = self.load(tenant_id, ticket_id).await?;
        if ticket.session_id.is_empty() {
            return Err(Status::failed_precondition(
                "the ticket has no conversation to reply to",
            ));
        }
        let status = TicketStatus::try_from(ticket.status).unwrap_or_default();
        if !is_unresolved(status) {
            return Err(Status::failed_precondition(format!(
                "ticket {ticket_id} is {}; reopen it to write to the customer",
                status_name(ticket.status)
            )));
        }
        if status == TicketStatus::Open && ticket.assignee.is_empty() {
            ticket = self
                .transition(
                    tenant_id,
                    ticket_id,
                    TicketStatus::InProgress,
                    Some(agent),
                    agent,
                    "replied to the customer",
                )
                .await?;
        }
        let event = self
            .conversations
            .append_agent_reply(
                tenant_id,
                &ticket.session_id,
                ticket_id,
                agent,
                text,
                request_id,
            )
            .await?;
        if ticket.first_response_at.is_none()
            && self
                .store
                .record_first_response(tenant_id, ticket_id, event.at)
                .await?
        {
            let vip = ticket.vip_tier > VipTier::None as i32;
            metrics::histogram!(
                "kefu_handoff_first_response_seconds",
                "service" => SERVICE,
                "tenant" => tenant_id.to_owned(),
                "priority" => priority_label(ticket.priority),
                "vip" => if vip { "true" } else { "false" },
            )
            .record((event.at - ticket.created_at).max(0) as f64 / 1000.0);
            ticket.first_response_at = Some(event.at);
        }
        Ok((event.event_id, ticket))
    }

    /// The ticket's session, oldest first: customer messages, bot replies, agent replies.
    async fn conversation(
        &self,
        ticket: &TicketRecord,
    ) -> Result<(Vec<ConversationEntry>, i32), Status> {
        if ticket.session_id.is_empty() {
            return Ok((Vec::new(), Handler::Unspecified as i32));
        }
        let (tenant, session) = (ticket.tenant_id.as_str(), ticket.session_id.as_str());
        let turns = self
            .sessions
            .recent_turns(tenant, session, MAX_CONVERSATION_ENTRIES)
            .await?;
        let events = self
            .conversations
            .events_after(tenant, session, 0, MAX_CONVERSATION_ENTRIES)
            .await?;
        let handler = self
            .conversations
            .handler(tenant, session)
            .await?
            .map(|h| h.handler)
            .unwrap_or(Handler::Bot as i32);
        let mut entries = Vec::new();
        for entry in merge_session(turns, events) {
            match entry {
                SessionEntry::Customer(turn) => {
                    let response =
                        SendMessageResponse::decode(turn.response.as_slice()).unwrap_or_default();
                    entries.push(ConversationEntry {
                        role: Role::Customer as i32,
                        author: turn.customer_id.clone(),
                        text: turn.text,
                        at: Some(timestamp(turn.created_at)),
                        intent: turn.intent,
                        sentiment: turn.sentiment,
                        sources: Vec::new(),
                    });
                    if !turn.reply.is_empty() {
                        entries.push(ConversationEntry {
                            role: Role::Bot as i32,
                            author: "bot".into(),
                            text: turn.reply,
                            at: Some(timestamp(turn.created_at)),
                            sources: response.sources,
                            ..Default::default()
                        });
                    }
                }
                SessionEntry::Agent { author, text, at } => entries.push(ConversationEntry {
                    role: Role::Agent as i32,
                    author,
                    text,
                    at: Some(timestamp(at)),
                    ..Default::default()
                }),
            }
        }
        Ok((entries, handler))
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
        let actor = actor_of(request.metadata());
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
            sla_due_at: now + self.0.sla.sla(priority).as_millis() as i64,
            resolved_at: None,
            version: 0,
            first_response_at: None,
            sla_raised: false,
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
        // Without a principal (another kefu service calling) the assignee names the agent.
        let agent = Principal::from_metadata(request.metadata())
            .map(|p| p.actor)
            .unwrap_or_else(|| request.get_ref().assignee.clone());
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        let take = request.take || !request.assignee.trim().is_empty();
        if take && agent.trim().is_empty() {
            return Err(Status::invalid_argument("taking a ticket needs an agent"));
        }
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
            if !take {
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
                    Some(&agent),
                    &agent,
                    "taken from the queue",
                )
                .await
            {
                Ok(ticket) if ticket.assignee == agent => {
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
        let actor = match Principal::from_metadata(request.metadata()) {
            Some(principal) => principal.actor,
            None if !request.get_ref().actor.trim().is_empty() => request.get_ref().actor.clone(),
            None => SYSTEM_ACTOR.to_owned(),
        };
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
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
                &actor,
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

    async fn reply_to_customer(
        &self,
        request: Request<ReplyToCustomerRequest>,
    ) -> Result<Response<ReplyToCustomerResponse>, Status> {
        let principal = Principal::from_metadata(request.metadata())
            .filter(Principal::is_staff)
            .ok_or_else(|| Status::permission_denied("only an agent may reply to a customer"))?;
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
        required(&request.text, "text")?;
        let request_id = Some(request.request_id.as_str()).filter(|id| !id.trim().is_empty());
        let (event_id, ticket) = self
            .0
            .reply(
                &request.tenant_id,
                &request.ticket_id,
                &principal.actor,
                &request.text,
                request_id,
            )
            .await?;
        Ok(Response::new(ReplyToCustomerResponse {
            event_id,
            ticket: Some(to_proto(ticket, Vec::new(), now_millis())),
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
        let ticket = self.0.load(&request.tenant_id, &request.ticket_id).await?;
        let audit = self
            .0
            .store
            .audit_trail(&request.tenant_id, &request.ticket_id)
            .await?;
        let (entries, handler) = self.0.conversation(&ticket).await?;
        Ok(Response::new(GetConversationResponse {
            ticket: Some(to_proto(ticket, audit, now_millis())),
            entries,
            handler,
        }))
    }

    async fn raise_priority(
        &self,
        request: Request<RaisePriorityRequest>,
    ) -> Result<Response<RaisePriorityResponse>, Status> {
        let actor = actor_of(request.metadata());
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.ticket_id, "ticket_id")?;
        let priority = match Priority::try_from(request.priority) {
            Ok(Priority::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument("priority must be a priority"))
            }
            Ok(priority) => priority,
        };
        let reason = if request.reason.trim().is_empty() {
            "raised"
        } else {
            request.reason.as_str()
        };
        let (ticket, raised) = self
            .0
            .raise_priority(
                &request.tenant_id,
                &request.ticket_id,
                priority,
                &actor,
                reason,
            )
            .await?;
        Ok(Response::new(RaisePriorityResponse {
            ticket: Some(to_proto(ticket, Vec::new(), now_millis())),
            raised,
        }))
    }
}

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
    let metrics_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            metrics_tickets.publish_queue_metrics().await;
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_METRICS_INTERVAL) => {}
                _ = metrics_shutdown.wait() => return,
            }
        }
    });
    let interval = config.sla.check_interval();
    tokio::spawn(async move {
        loop {
            match tickets.apply_sla_policy().await {
                Ok(0) => {}
                Ok(raised) => tracing::info!(raised, "SLA policy raised tickets nobody answered"),
                Err(status) => tracing::warn!(error = %status.message(), "SLA policy check failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait() => return,
            }
        }
    });
    Ok(server)
}
