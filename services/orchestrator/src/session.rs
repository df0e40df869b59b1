//! The session as its customer and agents read it: its turns and agents' replies in
//! order, the stream of its events, and the customer's rating once a ticket is resolved.
use kefu_proto::v1::*;
use kefu_runtime::Principal;
use kefu_storage::conversations::{merge_session, SessionEntry};
use kefu_storage::{now_millis, RatingRecord, TurnRecord};
use prost::Message as _;
use tonic::Status;

use crate::events;
use crate::workflow::{Orchestrator, SERVICE};

const MAX_SESSION_TURNS: i64 = 1000;
const MAX_COMMENT_BYTES: usize = 2048;

pub(crate) fn turn_of(record: TurnRecord) -> Turn {
    let sources = SendMessageResponse::decode(record.response.as_slice())
        .map(|response| response.sources)
        .unwrap_or_default();
    Turn {
        message_id: record.message_id,
        customer_id: record.customer_id,
        text: record.text,
        reply: record.reply,
        intent: record.intent,
        sentiment: record.sentiment,
        escalated: record.escalated,
        ticket_id: record.ticket_id,
        created_at: Some(kefu_proto::timestamp_from_millis(record.created_at)),
        role: Role::Customer as i32,
        author: String::new(),
        sources,
    }
}

fn entry_turn(entry: SessionEntry, customer_id: &str) -> Turn {
    match entry {
        SessionEntry::Customer(turn) => turn_of(turn),
        SessionEntry::Agent { author, text, at } => Turn {
            customer_id: customer_id.to_owned(),
            text,
            escalated: true,
            created_at: Some(kefu_proto::timestamp_from_millis(at)),
            role: Role::Agent as i32,
            author,
            ..Default::default()
        },
    }
}

/// A customer may only read and follow their own sessions; agents read any.
fn may_read(principal: Option<&Principal>, owner: &str) -> Result<(), Status> {
    match principal {
        Some(principal) if !principal.is_staff() && principal.actor != owner => Err(
            Status::permission_denied("the session belongs to another customer"),
        ),
        _ => Ok(()),
    }
}

impl Orchestrator {
    /// Whose session this is; None when it does not exist.
    async fn session_owner(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<String>, Status> {
        if let Some(handler) = self.conversations.handler(tenant, session_id).await? {
            return Ok(Some(handler.customer_id));
        }
        Ok(self
            .sessions
            .recent_turns(tenant, session_id, 1)
            .await?
            .pop()
            .map(|turn| turn.customer_id))
    }

    pub async fn session(
        &self,
        request: GetSessionRequest,
        principal: Option<&Principal>,
    ) -> Result<GetSessionResponse, Status> {
        if request.tenant_id.trim().is_empty() || request.session_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "tenant_id and session_id are required",
            ));
        }
        let (tenant, session_id) = (request.tenant_id.as_str(), request.session_id.as_str());
        let Some(owner) = self.session_owner(tenant, session_id).await? else {
            return Err(Status::not_found(format!(
                "session {session_id:?} not found"
            )));
        };
        may_read(principal, &owner)?;
        let turns = self
            .sessions
            .recent_turns(tenant, session_id, MAX_SESSION_TURNS)
            .await?;
        let events = self
            .conversations
            .events_after(tenant, session_id, 0, MAX_SESSION_TURNS)
            .await?;
        let handler = self.conversations.handler(tenant, session_id).await?;
        Ok(GetSessionResponse {
            session_id: request.session_id.clone(),
            turns: merge_session(turns, events)
                .into_iter()
                .map(|entry| entry_turn(entry, &owner))
                .collect(),
            handler: handler
                .as_ref()
                .map(|h| h.handler)
                .unwrap_or(Handler::Bot as i32),
            ticket_id: handler.map(|h| h.ticket_id).unwrap_or_default(),
        })
    }

    pub async fn stream_events(
        &self,
        request: StreamEventsRequest,
        principal: Option<&Principal>,
    ) -> Result<events::EventStream, Status> {
        if request.tenant_id.trim().is_empty()
            || request.session_id.trim().is_empty()
            || request.customer_id.trim().is_empty()
        {
            return Err(Status::invalid_argument(
                "tenant_id, customer_id and session_id are required",
            ));
        }
        if request.after_event_id < 0 {
            return Err(Status::invalid_argument(
                "after_event_id must not be negative",
            ));
        }
        let owner = self
            .session_owner(&request.tenant_id, &request.session_id)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!("session {:?} not found", request.session_id))
            })?;
        // Only the session's own customer follows it (agents read it with GetConversation).
        let customer = principal
            .filter(|p| !p.is_staff())
            .map(|p| p.actor.as_str())
            .unwrap_or(request.customer_id.as_str());
        if owner != customer || owner != request.customer_id {
            return Err(Status::permission_denied(
                "the session belongs to another customer",
            ));
        }
        Ok(events::follow(
            self.conversations.clone(),
            &self.bus,
            request.tenant_id,
            request.session_id,
            request.after_event_id,
            self.shutdown.clone(),
        ))
    }

    pub async fn rate(
        &self,
        request: RateConversationRequest,
    ) -> Result<RateConversationResponse, Status> {
        if request.tenant_id.trim().is_empty()
            || request.customer_id.trim().is_empty()
            || request.ticket_id.trim().is_empty()
        {
            return Err(Status::invalid_argument(
                "tenant_id, customer_id and ticket_id are required",
            ));
        }
        if !(1..=5).contains(&request.score) {
            return Err(Status::invalid_argument("score must be from 1 to 5"));
        }
        if request.comment.len() > MAX_COMMENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "comment must be at most {MAX_COMMENT_BYTES} bytes"
            )));
        }
        let ticket = async {
            let request = GetTicketRequest {
                tenant_id: request.tenant_id.clone(),
                ticket_id: request.ticket_id.clone(),
            };
            self.downstream.tickets.clone().get_ticket(request).await
        }
        .await?
        .into_inner()
        .ticket
        .unwrap_or_default();
        if ticket.customer_id != request.customer_id {
            return Err(Status::permission_denied(
                "only the ticket's customer may rate it",
            ));
        }
        if !matches!(
            TicketStatus::try_from(ticket.status),
            Ok(TicketStatus::Resolved | TicketStatus::Closed)
        ) {
            return Err(Status::failed_precondition(
                "a conversation is rated once its ticket is resolved",
            ));
        }
        let stored = self
            .conversations
            .rate(RatingRecord {
                tenant_id: request.tenant_id.clone(),
                ticket_id: request.ticket_id.clone(),
                customer_id: request.customer_id,
                score: request.score,
                comment: request.comment,
                at: now_millis(),
            })
            .await?;
        if !stored {
            return Err(Status::failed_precondition(
                "this conversation was already rated",
            ));
        }
        metrics::histogram!("kefu_csat_score", "service" => SERVICE, "tenant" => request.tenant_id)
            .record(request.score as f64);
        Ok(RateConversationResponse {
            ticket_id: request.ticket_id,
            score: request.score,
        })
    }
}
