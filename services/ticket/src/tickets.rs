//! The operations on stored tickets: each reads the ticket, asks the rules what to
//! change, and writes the change with its audit row, deciding again when a concurrent
//! writer got there first. Also the two rounds that run in the background: the SLA
//! policy and the queue gauges.
use std::sync::Arc;

use kefu_proto::v1::{CreateTicketRequest, Handler, Priority, TicketStatus, VipTier};
use kefu_storage::conversations::{merge_session, SessionEntry};
use kefu_storage::{
    now_millis, AuditRecord, ConversationStore, HandlerOutcome, SessionStore, TicketRecord,
    TicketStore, UpdateOutcome,
};
use tonic::Status;

use crate::config::SlaArgs;
use crate::rules::{self, priority_label, Decision, Refusal};

pub(crate) const SERVICE: &str = "kefu-ticket";
/// Optimistic updates that lose a race re-read the ticket and try again this often.
const UPDATE_ATTEMPTS: usize = 8;
/// Entries of one conversation returned at most (a conversation is far shorter).
const MAX_CONVERSATION_ENTRIES: i64 = 5000;
/// Tickets the SLA policy looks at per round; the next round takes the rest.
const SLA_ROUND_SIZE: i64 = 100;

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        Status::failed_precondition(refusal.to_string())
    }
}

pub struct Tickets {
    store: Arc<dyn TicketStore>,
    conversations: Arc<dyn ConversationStore>,
    sessions: Arc<dyn SessionStore>,
    sla: SlaArgs,
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

    pub fn store(&self) -> &dyn TicketStore {
        self.store.as_ref()
    }

    pub async fn load(&self, tenant_id: &str, ticket_id: &str) -> Result<TicketRecord, Status> {
        self.store
            .get(tenant_id, ticket_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("ticket {ticket_id:?} not found")))
    }

    /// The ticket with its audit trail, oldest entry first.
    pub async fn load_with_audit(
        &self,
        tenant_id: &str,
        ticket_id: &str,
    ) -> Result<(TicketRecord, Vec<AuditRecord>), Status> {
        let ticket = self.load(tenant_id, ticket_id).await?;
        let audit = self.store.audit_trail(tenant_id, ticket_id).await?;
        Ok((ticket, audit))
    }

    /// Opens a ticket for the request (validated by the caller) with the customer's VIP
    /// tier, the priority that tier gives (`rules::opening_priority`) and its SLA
    /// deadline; a repeated idempotency key returns the first ticket and false.
    pub async fn open(
        &self,
        request: CreateTicketRequest,
        requested: Priority,
        actor: String,
    ) -> Result<(TicketRecord, bool), Status> {
        let now = now_millis();
        let vip_tier = self
            .store
            .get_customer(&request.tenant_id, &request.customer_id)
            .await?
            .map_or(VipTier::None as i32, |customer| customer.vip_tier);
        let priority = rules::opening_priority(requested, vip_tier);
        let record = TicketRecord {
            tenant_id: request.tenant_id,
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
            sla_due_at: self.sla.due_at(priority, now),
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
        let (ticket, created) = self.store.create(record, audit).await?;
        if created {
            metrics::counter!("kefu_tickets_created_total", "service" => SERVICE, "tenant" => ticket.tenant_id.clone(), "priority" => priority_label(ticket.priority)).increment(1);
            tracing::info!(ticket_id = %ticket.ticket_id, priority = priority.as_str_name(), "ticket created");
        }
        Ok((ticket, created))
    }

    /// Applies the change `decide` makes of the latest state, re-reading and deciding
    /// again when a concurrent writer got there first, so no update is lost and no
    /// invalid change slips through. `decide` returning None leaves the ticket as is;
    /// the flag says whether it changed.
    async fn update<F>(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        mut decide: F,
    ) -> Result<(TicketRecord, bool), Status>
    where
        F: FnMut(&TicketRecord, i64) -> Result<Option<Decision>, Refusal>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.load(tenant_id, ticket_id).await?;
            let Some((change, audit)) = decide(&current, now_millis())? else {
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
    pub async fn transition(
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
                rules::transition(current, to, assignee, actor, comment, now).map(Some)
            })
            .await?;
        if to == TicketStatus::Resolved {
            metrics::histogram!(
                "kefu_ticket_resolution_seconds",
                "service" => SERVICE,
                "tenant" => tenant_id.to_owned(),
                "priority" => priority_label(ticket.priority),
            )
            .record(seconds_between(ticket.created_at, ticket.updated_at));
        }
        if let Some(change) = rules::session_move(&ticket, to) {
            if let HandlerOutcome::Moved(event) = self
                .conversations
                .move_session(&ticket.tenant_id, &ticket.session_id, change)
                .await?
            {
                tracing::info!(ticket_id = %ticket.ticket_id, event_id = event.event_id, "session handler changed");
            }
        }
        Ok(ticket)
    }

    /// The queue's depth and its next ticket: the open, unassigned one with the highest
    /// VIP tier, then priority, then the oldest. With `taker`, that agent takes it
    /// (should another agent take it first, the next one).
    pub async fn next_in_queue(
        &self,
        tenant_id: &str,
        taker: Option<&str>,
    ) -> Result<(Option<TicketRecord>, i64), Status> {
        let open = TicketStatus::Open as i32;
        let depth = self
            .store
            .queue_stats(tenant_id, open, now_millis())
            .await?
            .depth;
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(next) = self.store.next_in_queue(tenant_id, open).await? else {
                return Ok((None, depth));
            };
            let Some(agent) = taker else {
                return Ok((Some(next), depth));
            };
            let taken = self
                .transition(
                    tenant_id,
                    &next.ticket_id,
                    TicketStatus::InProgress,
                    Some(agent),
                    agent,
                    "taken from the queue",
                )
                .await;
            match taken {
                Ok(ticket) if ticket.assignee == agent => return Ok((Some(ticket), depth)),
                Ok(_) => continue,
                Err(status) if status.code() == tonic::Code::FailedPrecondition => continue,
                Err(status) => return Err(status),
            }
        }
        Err(Status::aborted("the queue is contended; retry"))
    }

    /// Raises a ticket to at least `priority`; false when it already was.
    pub async fn raise_priority(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        priority: Priority,
        actor: &str,
        reason: &str,
    ) -> Result<(TicketRecord, bool), Status> {
        self.update(tenant_id, ticket_id, |current, now| {
            Ok(rules::raise_priority(current, priority, actor, reason, now))
        })
        .await
    }

    /// One round of the SLA policy over the tickets at risk, logged. Replicas may run
    /// it at the same time: the versioned update lets exactly one of them act on each.
    pub async fn apply_sla_policy(&self) {
        match self.raise_tickets_at_risk().await {
            Ok(0) => {}
            Ok(raised) => tracing::info!(raised, "SLA policy raised tickets nobody answered"),
            Err(status) => tracing::warn!(error = %status.message(), "SLA policy check failed"),
        }
    }

    async fn raise_tickets_at_risk(&self) -> Result<usize, Status> {
        let mut raised = 0;
        for ticket in self.store.sla_at_risk(now_millis(), SLA_ROUND_SIZE).await? {
            let (tenant_id, ticket_id) = (ticket.tenant_id, ticket.ticket_id);
            let result = self
                .update(&tenant_id, &ticket_id, |current, now| {
                    Ok(rules::sla_raise(current, now))
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
    /// Returns the event's id and the ticket as it is after the reply.
    pub async fn reply(
        &self,
        tenant_id: &str,
        ticket_id: &str,
        agent: &str,
        text: &str,
        request_id: Option<&str>,
    ) -> Result<(i64, TicketRecord), Status> {
        let mut ticket = self.load(tenant_id, ticket_id).await?;
        rules::may_reply(&ticket)?;
        if rules::reply_takes_ticket(&ticket) {
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
            .record(seconds_between(ticket.created_at, event.at));
            ticket.first_response_at = Some(event.at);
        }
        Ok((event.event_id, ticket))
    }

    /// The ticket's session, oldest first, and who handles it now; empty for a ticket
    /// without a session.
    pub async fn conversation(
        &self,
        ticket: &TicketRecord,
    ) -> Result<(Vec<SessionEntry>, i32), Status> {
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
            .map_or(Handler::Bot as i32, |h| h.handler);
        Ok((merge_session(turns, events), handler))
    }

    /// Sets the queue gauges of every tenant: depth, age of the oldest ticket, overdue.
    pub async fn publish_queue_metrics(&self) {
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
                    .map_or(0.0, |oldest| seconds_between(oldest, now));
                metrics::gauge!("kefu_ticket_queue_depth", "service" => SERVICE, "tenant" => tenant.clone()).set(stats.depth as f64);
                metrics::gauge!("kefu_ticket_queue_oldest_age_seconds", "service" => SERVICE, "tenant" => tenant.clone()).set(age);
                metrics::gauge!("kefu_ticket_queue_overdue", "service" => SERVICE, "tenant" => tenant).set(stats.overdue as f64);
            }
        }
    }
}

/// Seconds from one millisecond timestamp to a later one (never negative).
fn seconds_between(from: i64, to: i64) -> f64 {
    (to - from).max(0) as f64 / 1000.0
}
