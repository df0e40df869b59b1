//! The gRPC handlers: decode and validate the request, take the actor from the
//! authenticated principal, call the ticket operations, encode the answer.
use std::sync::Arc;

use kefu_proto::timestamp_from_millis as timestamp;
use kefu_proto::v1::ticket_service_server::TicketService;
use kefu_proto::v1::*;
use kefu_runtime::Principal;
use kefu_storage::conversations::SessionEntry;
use kefu_storage::{now_millis, AuditRecord, CustomerRecord, TicketRecord};
use prost::Message as _;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::rules::sla_breached;
use crate::tickets::Tickets;

/// The actor of changes that other kefu services make without a person behind them.
const SYSTEM_ACTOR: &str = "system";
const DEFAULT_PAGE_SIZE: i32 = 50;
const MAX_PAGE_SIZE: i32 = 500;

#[derive(Clone)]
pub struct TicketHandle(pub Arc<Tickets>);

/// The actor of a change: the authenticated caller the gateway passed on; for calls of
/// other kefu services without one, the platform itself. Never a field of the request.
fn actor_of(metadata: &MetadataMap) -> String {
    authenticated(metadata).unwrap_or_else(|| SYSTEM_ACTOR.to_owned())
}

/// The authenticated person calling, if any.
fn authenticated(metadata: &MetadataMap) -> Option<String> {
    Principal::from_metadata(metadata)
        .map(|p| p.actor)
        .filter(|actor| !actor.trim().is_empty())
}

fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

/// Both ids that name a ticket.
fn required_ticket(tenant_id: &str, ticket_id: &str) -> Result<(), Status> {
    required(tenant_id, "tenant_id")?;
    required(ticket_id, "ticket_id")
}

fn to_proto(record: TicketRecord, audit: Vec<AuditRecord>) -> Ticket {
    let breached = sla_breached(&record, now_millis());
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

fn customer_to_proto(customer: CustomerRecord) -> Customer {
    Customer {
        tenant_id: customer.tenant_id,
        customer_id: customer.customer_id,
        display_name: customer.display_name,
        vip_tier: customer.vip_tier,
    }
}

/// A customer's message becomes their entry and, when the bot answered, the bot's
/// entry with the answer's sources; an agent's reply is the agent's entry.
fn conversation_entries(session: Vec<SessionEntry>) -> Vec<ConversationEntry> {
    let mut entries = Vec::with_capacity(session.len());
    for entry in session {
        match entry {
            SessionEntry::Customer(turn) => {
                let at = Some(timestamp(turn.created_at));
                entries.push(ConversationEntry {
                    role: Role::Customer as i32,
                    author: turn.customer_id,
                    text: turn.text,
                    at,
                    intent: turn.intent,
                    sentiment: turn.sentiment,
                    sources: Vec::new(),
                });
                if !turn.reply.is_empty() {
                    let response =
                        SendMessageResponse::decode(turn.response.as_slice()).unwrap_or_default();
                    entries.push(ConversationEntry {
                        role: Role::Bot as i32,
                        author: "bot".into(),
                        text: turn.reply,
                        at,
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
    entries
}

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
        let (ticket, created) = self.0.open(request, priority, actor).await?;
        Ok(Response::new(CreateTicketResponse {
            ticket: Some(to_proto(ticket, Vec::new())),
            created,
        }))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<GetTicketResponse>, Status> {
        let request = request.into_inner();
        required_ticket(&request.tenant_id, &request.ticket_id)?;
        let (ticket, audit) = self
            .0
            .load_with_audit(&request.tenant_id, &request.ticket_id)
            .await?;
        Ok(Response::new(GetTicketResponse {
            ticket: Some(to_proto(ticket, audit)),
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
        let tickets = self
            .0
            .store()
            .list(&request.tenant_id, customer, status, limit as i64)
            .await?;
        Ok(Response::new(ListTicketsResponse {
            tickets: tickets
                .into_iter()
                .map(|t| to_proto(t, Vec::new()))
                .collect(),
        }))
    }

    async fn next_in_queue(
        &self,
        request: Request<NextInQueueRequest>,
    ) -> Result<Response<NextInQueueResponse>, Status> {
        let agent = authenticated(request.metadata());
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        let take = request.take || !request.assignee.trim().is_empty();
        let taker = match (take, agent.as_deref()) {
            (false, _) => None,
            (true, Some(agent)) => Some(agent),
            (true, None) => return Err(Status::invalid_argument("taking a ticket needs an agent")),
        };
        let (ticket, depth) = self.0.next_in_queue(&request.tenant_id, taker).await?;
        Ok(Response::new(NextInQueueResponse {
            ticket: ticket.map(|t| to_proto(t, Vec::new())),
            queue_depth: depth as i32,
        }))
    }

    async fn transition_ticket(
        &self,
        request: Request<TransitionTicketRequest>,
    ) -> Result<Response<TransitionTicketResponse>, Status> {
        let actor = actor_of(request.metadata());
        let request = request.into_inner();
        required_ticket(&request.tenant_id, &request.ticket_id)?;
        let to = match TicketStatus::try_from(request.to_status) {
            Ok(TicketStatus::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "to_status must be a ticket status",
                ))
            }
            Ok(status) => status,
        };
        let (tenant_id, ticket_id) = (&request.tenant_id, &request.ticket_id);
        let ticket = self
            .0
            .transition(tenant_id, ticket_id, to, None, &actor, &request.comment)
            .await?;
        let audit = self.0.store().audit_trail(tenant_id, ticket_id).await?;
        Ok(Response::new(TransitionTicketResponse {
            ticket: Some(to_proto(ticket, audit)),
        }))
    }

    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let request = request.into_inner();
        required(&request.tenant_id, "tenant_id")?;
        required(&request.customer_id, "customer_id")?;
        let stored = self
            .0
            .store()
            .get_customer(&request.tenant_id, &request.customer_id)
            .await?;
        // A customer without a profile is an ordinary one.
        let customer = stored.unwrap_or(CustomerRecord {
            tenant_id: request.tenant_id,
            customer_id: request.customer_id,
            display_name: String::new(),
            vip_tier: VipTier::None as i32,
        });
        Ok(Response::new(GetCustomerResponse {
            customer: Some(customer_to_proto(customer)),
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
            .store()
            .upsert_customer(CustomerRecord {
                tenant_id: customer.tenant_id,
                customer_id: customer.customer_id,
                display_name: customer.display_name,
                vip_tier: tier as i32,
            })
            .await?;
        Ok(Response::new(UpsertCustomerResponse {
            customer: Some(customer_to_proto(stored)),
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
        required_ticket(&request.tenant_id, &request.ticket_id)?;
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
            ticket: Some(to_proto(ticket, Vec::new())),
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let request = request.into_inner();
        required_ticket(&request.tenant_id, &request.ticket_id)?;
        let (ticket, audit) = self
            .0
            .load_with_audit(&request.tenant_id, &request.ticket_id)
            .await?;
        let (session, handler) = self.0.conversation(&ticket).await?;
        Ok(Response::new(GetConversationResponse {
            ticket: Some(to_proto(ticket, audit)),
            entries: conversation_entries(session),
            handler,
        }))
    }

    async fn raise_priority(
        &self,
        request: Request<RaisePriorityRequest>,
    ) -> Result<Response<RaisePriorityResponse>, Status> {
        let actor = actor_of(request.metadata());
        let request = request.into_inner();
        required_ticket(&request.tenant_id, &request.ticket_id)?;
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
            ticket: Some(to_proto(ticket, Vec::new())),
            raised,
        }))
    }
}
