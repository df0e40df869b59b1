//! The workflow of one customer message. Load the session, ask the router, then
//! sentiment and knowledge with the message's sentence embedding the router computed
//! (one forward pass of the encoder per turn), decide (`decision`), and commit: a turn
//! that needs a ticket is stored with its outbox entry and, for a hand-off, the session's
//! move to the queue, in one transaction; the ticket is opened right after (`outbox`).
//! While a human handles the session the bot stays silent: the message is stored with
//! the session's ticket and its mood can move the ticket up the queue.
use std::sync::Arc;

use kefu_proto::v1::*;
use kefu_runtime::Shutdown;
use kefu_storage::{
    now_millis, Cache, ConversationStore, EventBus, HandlerRecord, SessionStore, TicketTurn,
    TicketTurnOutcome, TurnRecord, Unanswered,
};
use prost::Message as _;
use tonic::Status;
use tracing::Instrument;

use crate::context::{conversation_so_far, follow_up_query};
use crate::decision::{decide, handoff_pending_reply, mood_priority, Decision, Retrieval};
use crate::downstream::Downstream;
use crate::outbox::TicketOpener;
use crate::session::turn_of;

pub(crate) const SERVICE: &str = "kefu-orchestrator";
/// Earlier turns given to the workflow as context.
const CONTEXT_TURNS: i64 = 6;

pub struct Orchestrator {
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) reports: kefu_storage::SqlReports,
    pub(crate) conversations: Arc<dyn ConversationStore>,
    pub(crate) bus: EventBus,
    pub(crate) shutdown: Shutdown,
    /// Recent turns per session, shared by replicas through Redis (the database stays the record).
    pub(crate) context: Cache,
    pub(crate) downstream: Downstream,
    pub(crate) opener: TicketOpener,
}

/// A message on its way through the workflow, with the ids it is stored under.
struct Incoming<'a> {
    request: &'a SendMessageRequest,
    message_id: String,
    session_id: String,
    opens_session: bool,
}

/// What the services made of a message.
struct Understanding {
    /// None when the router could not be reached.
    classification: Option<ClassifyResponse>,
    /// The language, from the router or, without it, read here.
    language: i32,
    sentiment: AnalyzeResponse,
    retrieval: Retrieval,
}

fn label_of(sentiment: &AnalyzeResponse) -> i32 {
    sentiment
        .sentiment
        .as_ref()
        .map(|s| s.label)
        .unwrap_or(SentimentLabel::Neutral as i32)
}

fn channel_name(channel: i32) -> String {
    kefu_proto::enum_label(
        Channel::try_from(channel).unwrap_or_default().as_str_name(),
        "CHANNEL_",
    )
}

fn another_customers() -> Status {
    Status::permission_denied("the session belongs to another customer")
}

impl Orchestrator {
    pub async fn handle(&self, request: SendMessageRequest) -> Result<SendMessageResponse, Status> {
        if request.tenant_id.trim().is_empty() || request.customer_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "tenant_id and customer_id are required",
            ));
        }
        if request.text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        // A retried message gets the reply it got the first time; nothing runs twice.
        if let Some(stored) = self.stored_reply(&request).await? {
            tracing::info!("replaying the stored reply of a retried message");
            return Ok(stored);
        }
        let incoming = Incoming {
            request: &request,
            message_id: if request.message_id.is_empty() {
                uuid::Uuid::now_v7().to_string()
            } else {
                request.message_id.clone()
            },
            session_id: if request.session_id.is_empty() {
                uuid::Uuid::new_v4().to_string()
            } else {
                request.session_id.clone()
            },
            opens_session: request.session_id.is_empty(),
        };
        if let Some(handler) = self.human_handler(&incoming).await? {
            return self
                .handle_with_human(&request, handler, incoming.message_id)
                .instrument(
                    tracing::info_span!("workflow.with_human", kefu.tenant = %request.tenant_id),
                )
                .await;
        }
        let history = self
            .load_context(&incoming)
            .instrument(
                tracing::info_span!("workflow.load_context", kefu.tenant = %request.tenant_id),
            )
            .await?;
        let understanding = self.understand(&request, &history).await?;
        let decision = decide_traced(&request, &history, &understanding);
        self.commit(&incoming, &history, understanding, decision)
            .await
    }

    async fn stored_reply(
        &self,
        request: &SendMessageRequest,
    ) -> Result<Option<SendMessageResponse>, Status> {
        if request.message_id.is_empty() {
            return Ok(None);
        }
        self.sessions
            .find_by_message_id(
                &request.tenant_id,
                &request.customer_id,
                &request.message_id,
            )
            .await?
            .map(|turn| decode_response(&turn.response))
            .transpose()
    }

    /// The session's handler when a human has it (queued or with an agent).
    async fn human_handler(
        &self,
        incoming: &Incoming<'_>,
    ) -> Result<Option<HandlerRecord>, Status> {
        if incoming.opens_session {
            return Ok(None);
        }
        let request = incoming.request;
        let handler = self
            .conversations
            .handler(&request.tenant_id, &incoming.session_id)
            .await?
            .filter(|h| h.handler != Handler::Bot as i32);
        match handler {
            Some(handler) if handler.customer_id != request.customer_id => Err(another_customers()),
            handler => Ok(handler),
        }
    }

    /// The session's recent turns; a session this message opens has none.
    async fn load_context(&self, incoming: &Incoming<'_>) -> Result<Vec<Turn>, Status> {
        if incoming.opens_session {
            return Ok(Vec::new());
        }
        let request = incoming.request;
        let history = self
            .recent_turns(&request.tenant_id, &incoming.session_id)
            .await?;
        if history
            .iter()
            .any(|turn| turn.customer_id != request.customer_id)
        {
            return Err(another_customers());
        }
        Ok(history)
    }

    /// The router first (it embeds the message once), then sentiment and knowledge side
    /// by side with that embedding.
    async fn understand(
        &self,
        request: &SendMessageRequest,
        history: &[Turn],
    ) -> Result<Understanding, Status> {
        let span = tracing::info_span!(
            "workflow.understand",
            kefu.tenant = %request.tenant_id,
            kefu.intent = tracing::field::Empty,
            kefu.intent_confidence = tracing::field::Empty,
            kefu.sentiment = tracing::field::Empty,
        );
        let classify = ClassifyRequest {
            tenant_id: request.tenant_id.clone(),
            text: request.text.clone(),
            previous_intents: history.iter().map(|turn| turn.intent.clone()).collect(),
            include_embedding: true,
        };
        let mut classification = self
            .downstream
            .classify(classify)
            .instrument(span.clone())
            .await?;
        let embedding = classification.as_mut().and_then(|c| c.embedding.take());
        if let Some(classification) = &classification {
            span.record("kefu.intent", classification.intent.as_str());
            span.record("kefu.intent_confidence", classification.confidence as f64);
        }
        let retrieve = self.retrieve(request, history, classification.as_ref(), embedding.clone());
        let analyze = self
            .downstream
            .analyze(&request.text, embedding)
            .instrument(span.clone());
        let (sentiment, retrieval) = tokio::join!(analyze, retrieve);
        let sentiment = sentiment?;
        let label = SentimentLabel::try_from(label_of(&sentiment)).unwrap_or_default();
        span.record("kefu.sentiment", label.as_str_name());
        let language = classification.as_ref().map_or_else(
            || Language::from(kefu_nlp::text::detect_language(&request.text)) as i32,
            |c| c.language,
        );
        Ok(Understanding {
            classification,
            language,
            sentiment,
            retrieval: retrieval?,
        })
    }

    /// Knowledge for a message the bot may answer from it.
    async fn retrieve(
        &self,
        request: &SendMessageRequest,
        history: &[Turn],
        classification: Option<&ClassifyResponse>,
        embedding: Option<Embedding>,
    ) -> Result<Retrieval, Status> {
        let Some(classification) =
            classification.filter(|c| c.fixed_reply.is_empty() && c.route != Route::Human as i32)
        else {
            return Ok(Retrieval::NotNeeded);
        };
        let tenant = &request.tenant_id;
        match follow_up_query(history.last(), &request.text, &classification.intent) {
            // the joined text is one the router did not embed
            Some(query) => self.downstream.retrieve(tenant, query, None).await,
            None => {
                self.downstream
                    .retrieve(tenant, request.text.clone(), embedding)
                    .await
            }
        }
    }

    /// Stores the turn and, when the decision needs one, opens its ticket.
    async fn commit(
        &self,
        incoming: &Incoming<'_>,
        history: &[Turn],
        understanding: Understanding,
        decision: Decision,
    ) -> Result<SendMessageResponse, Status> {
        let request = incoming.request;
        let previous_reply = history.last().map_or("", |turn| turn.reply.as_str());
        let reply_for = |decision: &Decision, ticket_id: &str| {
            response_of(
                incoming,
                &understanding,
                decision,
                ticket_id,
                previous_reply,
            )
        };
        let stored = if decision.open_ticket {
            let span = tracing::info_span!(
                "workflow.ticket",
                kefu.tenant = %request.tenant_id,
                kefu.priority = tracing::field::Empty,
                kefu.ticket_created = tracing::field::Empty
            );
            let ticket = ticket_request(incoming, &understanding, &decision);
            self.commit_with_ticket(
                incoming,
                &understanding,
                ticket,
                &decision,
                &reply_for,
                span,
            )
            .await?
        } else {
            let response = reply_for(&decision, "");
            let turn = turn_record(incoming, &understanding, &decision, &response);
            self.store_turn(turn, incoming.opens_session).await?
        };
        let tenant = request.tenant_id.clone();
        let outcome = if stored.escalated {
            "escalated"
        } else {
            "answered"
        };
        metrics::counter!("kefu_messages_total", "service" => SERVICE, "tenant" => tenant.clone(), "outcome" => outcome).increment(1);
        if let Some(reason) = decision.reason.filter(|_| stored.escalated) {
            metrics::counter!("kefu_escalations_total", "service" => SERVICE, "tenant" => tenant, "reason" => reason.as_str()).increment(1);
        }
        Ok(stored)
    }

    /// The turn, its outbox entry and (for a hand-off) the session's move to the queue in
    /// one transaction, then the ticket at once; if that fails, the drainer opens it later
    /// and the customer is told so.
    async fn commit_with_ticket(
        &self,
        incoming: &Incoming<'_>,
        understanding: &Understanding,
        ticket: CreateTicketRequest,
        decision: &Decision,
        reply_for: &(dyn Fn(&Decision, &str) -> SendMessageResponse + Sync),
        ticket_span: tracing::Span,
    ) -> Result<SendMessageResponse, Status> {
        let mut pending = reply_for(decision, "");
        if decision.escalated() {
            pending.reply = handoff_pending_reply(
                Language::try_from(understanding.language).unwrap_or_default(),
            );
        }
        let committed = self
            .conversations_outbox()
            .commit_ticket_turn(TicketTurn {
                turn: turn_record(incoming, understanding, decision, &pending),
                hand_off: decision.escalated(),
                request: ticket.encode_to_vec(),
                lease_ms: self.opener.turn_lease_ms(),
            })
            .instrument(tracing::info_span!("workflow.store_turn", kefu.tenant = %incoming.request.tenant_id))
            .await?;
        let (turn, entry) = match committed {
            TicketTurnOutcome::Replayed(turn) => return decode_response(&turn.response),
            TicketTurnOutcome::Committed { turn, entry } => (turn, entry),
        };
        let mut response = pending;
        if let Some(entry) = entry {
            // The customer is told the ticket's priority, which the ticket service sets
            // (one step up for a VIP).
            let opened_reply = |ticket: &Ticket| SendMessageResponse {
                priority: ticket.priority,
                ..reply_for(decision, &ticket.ticket_id)
            };
            let named = |ticket: &Ticket| {
                let named = opened_reply(ticket);
                kefu_storage::OpenedReply {
                    reply: named.reply.clone(),
                    response: named.encode_to_vec(),
                }
            };
            let opened = self
                .opener
                .open(&entry, Some(&named))
                .instrument(ticket_span.clone())
                .await?;
            ticket_span.record("kefu.ticket_created", opened.is_some());
            let priority = opened.as_ref().map_or(decision.priority, Ticket::priority);
            ticket_span.record("kefu.priority", priority.as_str_name());
            if let Some(ticket) = opened {
                response = opened_reply(&ticket);
            }
        } else {
            // A human had the session already: this message joined that ticket.
            response.ticket_id = turn.ticket_id.clone();
        }
        self.refresh_context(&turn.tenant_id, &turn.session_id, None)
            .await?;
        Ok(response)
    }

    fn conversations_outbox(&self) -> &dyn kefu_storage::TicketOutbox {
        self.opener.outbox.as_ref()
    }

    /// A message while the session waits for or is with a human: no bot reply and no
    /// new ticket; the message joins the ticket's conversation, and a customer who grows
    /// angrier moves the ticket up the queue.
    async fn handle_with_human(
        &self,
        request: &SendMessageRequest,
        handler: HandlerRecord,
        message_id: String,
    ) -> Result<SendMessageResponse, Status> {
        let tenant = request.tenant_id.clone();
        let previous_label = self
            .recent_turns(&tenant, &handler.session_id)
            .await?
            .last()
            .map(|turn| turn.sentiment);
        let sentiment = self.downstream.analyze(&request.text, None).await?;
        let mood =
            mood_priority(previous_label, &sentiment).filter(|_| !handler.ticket_id.is_empty());
        if let Some(priority) = mood {
            let raise = RaisePriorityRequest {
                tenant_id: tenant.clone(),
                ticket_id: handler.ticket_id.clone(),
                priority: priority as i32,
                reason: "the customer's messages grew more negative".into(),
            };
            // The message is not lost for it: the agent still sees it in the conversation.
            if let Err(status) = self.downstream.tickets.clone().raise_priority(raise).await {
                tracing::warn!(error = %status.message(), "raising the ticket's priority failed");
            }
        }
        let response = SendMessageResponse {
            session_id: handler.session_id.clone(),
            sentiment: sentiment.sentiment,
            escalated: true,
            ticket_id: handler.ticket_id.clone(),
            message_id: message_id.clone(),
            handler: handler.handler,
            ..Default::default()
        };
        let turn = TurnRecord {
            tenant_id: tenant.clone(),
            session_id: handler.session_id,
            seq: 0,
            message_id,
            customer_id: request.customer_id.clone(),
            text: request.text.clone(),
            reply: String::new(),
            intent: String::new(),
            sentiment: label_of(&sentiment),
            escalated: true,
            ticket_id: handler.ticket_id,
            response: response.encode_to_vec(),
            created_at: now_millis(),
            channel: request.channel,
            language: Language::from(kefu_nlp::text::detect_language(&request.text)) as i32,
            unanswered: Unanswered::None,
        };
        let stored = self.store_turn(turn, false).await?;
        metrics::counter!("kefu_messages_total", "service" => SERVICE, "tenant" => tenant, "outcome" => "with_human").increment(1);
        Ok(stored)
    }

    /// The session's recent turns: from the shared cache, else from the database.
    pub(crate) async fn recent_turns(
        &self,
        tenant_id: &str,
        session_id: &str,
    ) -> Result<Vec<Turn>, Status> {
        if let Some(cached) = self
            .context
            .get(tenant_id, session_id)
            .await
            .and_then(|b| GetSessionResponse::decode(b.as_slice()).ok())
        {
            return Ok(cached.turns);
        }
        self.refresh_context(tenant_id, session_id, None).await
    }

    /// Reads the session's recent turns from the database (or takes `known` when the
    /// caller holds them all) into the shared cache; returns them.
    async fn refresh_context(
        &self,
        tenant_id: &str,
        session_id: &str,
        known: Option<Vec<Turn>>,
    ) -> Result<Vec<Turn>, Status> {
        let turns = match known {
            Some(turns) => turns,
            None => self
                .sessions
                .recent_turns(tenant_id, session_id, CONTEXT_TURNS)
                .await?
                .into_iter()
                .map(turn_of)
                .collect(),
        };
        if !turns.is_empty() {
            let context = GetSessionResponse {
                session_id: session_id.to_owned(),
                turns: turns.clone(),
                ..Default::default()
            };
            self.context
                .put(tenant_id, session_id, context.encode_to_vec())
                .await;
        }
        Ok(turns)
    }

    /// Stores a turn and refreshes the session's cached context; returns the response
    /// stored for the message, which is another one when a concurrent retry stored first.
    /// A session the turn opened holds only that turn, so it is not read back.
    async fn store_turn(
        &self,
        turn: TurnRecord,
        opens_session: bool,
    ) -> Result<SendMessageResponse, Status> {
        let (tenant, session_id) = (turn.tenant_id.clone(), turn.session_id.clone());
        let stored = self
            .sessions
            .append(turn)
            .instrument(tracing::info_span!("workflow.store_turn", kefu.tenant = %tenant))
            .await?;
        let response = decode_response(&stored.response)?;
        let known =
            (opens_session && stored.session_id == session_id).then(|| vec![turn_of(stored)]);
        self.refresh_context(&tenant, &session_id, known).await?;
        Ok(response)
    }
}

fn decode_response(bytes: &[u8]) -> Result<SendMessageResponse, Status> {
    SendMessageResponse::decode(bytes)
        .map_err(|error| Status::internal(format!("stored reply unreadable: {error}")))
}

/// The decision for a message, in a span that says what was decided and why.
fn decide_traced(
    request: &SendMessageRequest,
    history: &[Turn],
    understanding: &Understanding,
) -> Decision {
    let classification = understanding.classification.as_ref();
    let span = tracing::info_span!(
        "workflow.decide",
        kefu.tenant = %request.tenant_id,
        kefu.intent = %classification.map_or("", |c| c.intent.as_str()),
        kefu.escalated = tracing::field::Empty,
        kefu.escalation_reason = tracing::field::Empty,
        kefu.priority = tracing::field::Empty,
    );
    let _entered = span.enter();
    let says_not_helped = classification.is_some_and(|c| c.says_not_helped);
    let conversation =
        conversation_so_far(history.last(), says_not_helped, &understanding.retrieval);
    let decision = decide(
        classification,
        &understanding.sentiment,
        &understanding.retrieval,
        conversation,
    );
    span.record("kefu.escalated", decision.escalated());
    span.record(
        "kefu.escalation_reason",
        decision.reason.map(|r| r.as_str()).unwrap_or(""),
    );
    span.record("kefu.priority", decision.priority.as_str_name());
    decision
}

/// What the customer is told for a decision, naming `ticket_id` when there is one.
fn response_of(
    incoming: &Incoming<'_>,
    understanding: &Understanding,
    decision: &Decision,
    ticket_id: &str,
    previous_reply: &str,
) -> SendMessageResponse {
    let classification = understanding.classification.clone().unwrap_or_default();
    let knowledge = understanding.retrieval.found();
    let language = Language::try_from(understanding.language).unwrap_or(Language::En);
    SendMessageResponse {
        session_id: incoming.session_id.clone(),
        reply: decision.reply(
            &classification.fixed_reply,
            knowledge,
            ticket_id,
            language,
            previous_reply,
        ),
        // Not understood: no intent. An empty intent on a bot turn is also what marks
        // it as a miss in the session's history.
        intent: if decision.missed() {
            String::new()
        } else {
            classification.intent.clone()
        },
        intent_confidence: classification.confidence,
        sentiment: understanding.sentiment.sentiment,
        escalated: decision.escalated(),
        ticket_id: ticket_id.to_owned(),
        priority: decision.priority as i32,
        sources: match knowledge {
            Some(found) if decision.answered_from_knowledge => found.sources.clone(),
            _ => Vec::new(),
        },
        escalation_reason: decision
            .reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        message_id: incoming.message_id.clone(),
        handler: if decision.escalated() {
            Handler::Queued as i32
        } else {
            Handler::Bot as i32
        },
    }
}

fn turn_record(
    incoming: &Incoming<'_>,
    understanding: &Understanding,
    decision: &Decision,
    response: &SendMessageResponse,
) -> TurnRecord {
    let request = incoming.request;
    TurnRecord {
        tenant_id: request.tenant_id.clone(),
        session_id: incoming.session_id.clone(),
        seq: 0,
        message_id: incoming.message_id.clone(),
        customer_id: request.customer_id.clone(),
        text: request.text.clone(),
        reply: response.reply.clone(),
        intent: response.intent.clone(),
        sentiment: label_of(&understanding.sentiment),
        escalated: response.escalated,
        ticket_id: response.ticket_id.clone(),
        response: response.encode_to_vec(),
        created_at: now_millis(),
        channel: request.channel,
        language: understanding.language,
        unanswered: decision.unanswered,
    }
}

/// The ticket a decision opens; the message id is its idempotency key, so it is opened
/// once however often it is tried.
fn ticket_request(
    incoming: &Incoming<'_>,
    understanding: &Understanding,
    decision: &Decision,
) -> CreateTicketRequest {
    let request = incoming.request;
    let intent = understanding
        .classification
        .as_ref()
        .map_or("", |c| c.intent.as_str());
    CreateTicketRequest {
        tenant_id: request.tenant_id.clone(),
        customer_id: request.customer_id.clone(),
        session_id: incoming.session_id.clone(),
        subject: format!("{intent} ({})", channel_name(request.channel)),
        description: request.text.clone(),
        priority: decision.priority as i32,
        intent: intent.to_owned(),
        channel: request.channel,
        escalation_reason: decision
            .reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        idempotency_key: incoming.message_id.clone(),
        actor: String::new(),
    }
}
