//! Orchestrator: runs the workflow of one customer message. Load the session, ask the
//! router, then sentiment and knowledge with the message's sentence embedding the router
//! computed (one forward pass of the encoder per turn), decide between answering and
//! handing off, open a ticket when needed (at a priority that counts the customer's VIP
//! tier, read from their profile only then), store the turn, reply. While a human handles
//! the session the bot stays silent: the message is stored with the session's ticket and
//! its mood can move the ticket up the queue. It also streams a session's events to its
//! customer and takes their rating.
use std::sync::Arc;

use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer};
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::sentiment_service_client::SentimentServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{
    ClientArgs, Connector, DataArgs, GrpcChannel, Principal, RunningServer, ServerArgs,
    ServiceSpec, Shutdown,
};
use kefu_storage::conversations::{merge_session, SessionEntry};
use kefu_storage::{
    now_millis, Cache, ConversationStore, Database, EventBus, HandlerMove, HandlerOutcome,
    HandlerRecord, OutboxRecord, RatingRecord, Redis, SessionStore, SqlConversationStore,
    SqlSessionStore, TurnRecord,
};
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::Instrument;

mod decision;
mod events;

pub use decision::{
    decide, handoff_pending_reply, mood_priority, ticket_priority, Conversation, Decision,
    EscalationReason, Retrieval,
};

pub const SPEC: ServiceSpec = ServiceSpec::ORCHESTRATOR;
const SERVICE: &str = "kefu-orchestrator";
/// Earlier turns given to the workflow as context.
const CONTEXT_TURNS: i64 = 6;
const MAX_SESSION_TURNS: i64 = 1000;
/// How long a session's context stays in the cache after its last turn.
const SESSION_CONTEXT_TTL: std::time::Duration = std::time::Duration::from_secs(1800);
const MAX_COMMENT_BYTES: usize = 2048;

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub peers: Peers,
}

/// Where the services the orchestrator calls are.
#[derive(clap::Args, Clone, Debug)]
pub struct Peers {
    #[arg(long, env = "KEFU_ROUTER_URL", default_value_t = ServiceSpec::ROUTER.default_url())]
    pub router_url: String,
    #[arg(long, env = "KEFU_SENTIMENT_URL", default_value_t = ServiceSpec::SENTIMENT.default_url())]
    pub sentiment_url: String,
    #[arg(long, env = "KEFU_KNOWLEDGE_URL", default_value_t = ServiceSpec::KNOWLEDGE.default_url())]
    pub knowledge_url: String,
    #[arg(long, env = "KEFU_TICKET_URL", default_value_t = ServiceSpec::TICKET.default_url())]
    pub ticket_url: String,
}

pub struct Orchestrator {
    sessions: Arc<dyn SessionStore>,
    conversations: Arc<dyn ConversationStore>,
    bus: EventBus,
    shutdown: Shutdown,
    /// Recent turns per session, shared by replicas through Redis (the database stays the record).
    context: Cache,
    router: RouterServiceClient<GrpcChannel>,
    sentiment: SentimentServiceClient<GrpcChannel>,
    knowledge: KnowledgeServiceClient<GrpcChannel>,
    tickets: TicketServiceClient<GrpcChannel>,
}

fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
    )
}

fn channel_name(channel: i32) -> String {
    kefu_proto::enum_label(
        Channel::try_from(channel).unwrap_or_default().as_str_name(),
        "CHANNEL_",
    )
}

fn turn_of(record: TurnRecord) -> Turn {
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

/// What the session's last turn says about this message: whether the bot's last reply
/// missed (a turn without intent, see `Decision::missed`), and whether its last answer
/// from knowledge did not help (the customer says so, or the same answer would come again).
fn conversation_so_far(previous: Option<&Turn>, text: &str, retrieval: &Retrieval) -> Conversation {
    let Some(previous) = previous.filter(|turn| !turn.escalated) else {
        return Conversation::default();
    };
    let answered_from_knowledge = !previous.sources.is_empty();
    let would_repeat = retrieval
        .found()
        .is_some_and(|k| !k.answer.is_empty() && previous.reply.starts_with(&k.answer));
    let previous_missed = previous.intent.is_empty();
    // after a miss too: "still not working" after the next best try goes to a person;
    // the text is segmented only when the previous turn makes the question matter
    let says_so = || kefu_nlp::cues::says_not_helped(&kefu_nlp::cues::Message::new(text));
    Conversation {
        previous_missed,
        not_helped: (answered_from_knowledge && would_repeat)
            || ((answered_from_knowledge || previous_missed) && says_so()),
    }
}

fn label_of(sentiment: &AnalyzeResponse) -> i32 {
    sentiment
        .sentiment
        .as_ref()
        .map(|s| s.label)
        .unwrap_or(SentimentLabel::Neutral as i32)
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
    /// The session's recent turns: from the shared cache, else from the database.
    async fn recent_turns(&self, tenant_id: &str, session_id: &str) -> Result<Vec<Turn>, Status> {
        if let Some(cached) = self
            .context
            .get(tenant_id, session_id)
            .await
            .and_then(|b| GetSessionResponse::decode(b.as_slice()).ok())
        {
            return Ok(cached.turns);
        }
        let turns: Vec<Turn> = self
            .sessions
            .recent_turns(tenant_id, session_id, CONTEXT_TURNS)
            .await?
            .into_iter()
            .map(turn_of)
            .collect();
        self.remember(tenant_id, session_id, &turns).await;
        Ok(turns)
    }

    async fn remember(&self, tenant_id: &str, session_id: &str, turns: &[Turn]) {
        if !turns.is_empty() {
            let context = GetSessionResponse {
                session_id: session_id.to_owned(),
                turns: turns.to_vec(),
                ..Default::default()
            };
            self.context
                .put(tenant_id, session_id, context.encode_to_vec())
                .await;
        }
    }

    /// The customer's VIP tier, from their profile in the ticket service. Without the
    /// profile the ticket still opens, as for a customer without a tier.
    async fn vip_tier(&self, tenant_id: &str, customer_id: &str) -> Result<i32, Status> {
        let request = GetCustomerRequest {
            tenant_id: tenant_id.to_owned(),
            customer_id: customer_id.to_owned(),
        };
        match self.tickets.clone().get_customer(request).await {
            Ok(response) => Ok(response.into_inner().customer.unwrap_or_default().vip_tier),
            Err(status) if is_transient(&status) => {
                tracing::warn!(error = %status.message(), "customer profile unavailable; no VIP tier assumed");
                Ok(VipTier::None as i32)
            }
            Err(status) => Err(status),
        }
    }

    async fn handle(&self, request: SendMessageRequest) -> Result<SendMessageResponse, Status> {
        if request.tenant_id.trim().is_empty() || request.customer_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "tenant_id and customer_id are required",
            ));
        }
        if request.text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        let tenant = request.tenant_id.clone();

        // A retried message gets the reply it got the first time; nothing runs twice.
        if !request.message_id.is_empty() {
            if let Some(turn) = self
                .sessions
                .find_by_message_id(&tenant, &request.customer_id, &request.message_id)
                .await?
            {
                tracing::info!("replaying the stored reply of a retried message");
                return SendMessageResponse::decode(turn.response.as_slice()).map_err(|error| {
                    Status::internal(format!("stored reply unreadable: {error}"))
                });
            }
        }
        let message_id = if request.message_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            request.message_id.clone()
        };
        let opens_session = request.session_id.is_empty();
        let session_id = if opens_session {
            uuid::Uuid::new_v4().to_string()
        } else {
            request.session_id.clone()
        };
        if !request.session_id.is_empty() {
            if let Some(handler) = self
                .conversations
                .handler(&tenant, &session_id)
                .await?
                .filter(|h| h.handler != Handler::Bot as i32)
            {
                if handler.customer_id != request.customer_id {
                    return Err(Status::permission_denied(
                        "the session belongs to another customer",
                    ));
                }
                return self
                    .handle_with_human(&request, handler, message_id)
                    .instrument(tracing::info_span!("workflow.with_human", kefu.tenant = %tenant))
                    .await;
            }
        }

        let history = async {
            // A session this message opens has no turns yet: nothing to look up.
            let history = if opens_session {
                Vec::new()
            } else {
                self.recent_turns(&tenant, &session_id).await?
            };
            if history
                .iter()
                .any(|turn| turn.customer_id != request.customer_id)
            {
                return Err(Status::permission_denied(
                    "the session belongs to another customer",
                ));
            }
            Ok::<_, Status>(history)
        }
        .instrument(tracing::info_span!("workflow.load_context", kefu.tenant = %tenant))
        .await?;

        let previous_intents: Vec<String> =
            history.iter().map(|turn| turn.intent.clone()).collect();
        let understand_span = tracing::info_span!(
            "workflow.understand",
            kefu.tenant = %tenant,
            kefu.intent = tracing::field::Empty,
            kefu.intent_confidence = tracing::field::Empty,
            kefu.sentiment = tracing::field::Empty,
        );
        // The router embeds the message once; sentiment and knowledge reuse the embedding
        // and run side by side after it.
        let classified = async {
            let request = ClassifyRequest {
                tenant_id: tenant.clone(),
                text: request.text.clone(),
                previous_intents: previous_intents.clone(),
                include_embedding: true,
            };
            self.router.clone().classify(request).await
        }
        .instrument(understand_span.clone())
        .await;
        let understood = match classified {
            Ok(response) => Some(response.into_inner()),
            // Without the router nobody knows what the customer wants: a human does.
            Err(status) if is_transient(&status) => {
                tracing::warn!(error = %status.message(), "router unavailable; handing off");
                None
            }
            Err(status) => return Err(status),
        };
        let router_reached = understood.is_some();
        let mut classification = understood.unwrap_or_else(|| ClassifyResponse {
            language: kefu_nlp::text::detect_language(&request.text) as i32,
            ..Default::default()
        });
        understand_span.record("kefu.intent", classification.intent.as_str());
        understand_span.record("kefu.intent_confidence", classification.confidence as f64);

        let embedding = classification.embedding.take();
        let needs_knowledge = router_reached
            && classification.fixed_reply.is_empty()
            && classification.route != Route::Human as i32;
        let retrieve = async {
            if !needs_knowledge {
                return Ok(Retrieval::NotNeeded);
            }
            match history.last() {
                // A short follow-up on the same topic is searched together with the
                // question it follows (a text the router did not embed); one the router
                // reads as another intent is a new topic, searched alone.
                Some(previous)
                    if request.text.chars().count() <= 24
                        && previous.intent == classification.intent =>
                {
                    self.retrieve(&tenant, format!("{} {}", previous.text, request.text), None)
                        .await
                }
                _ => {
                    self.retrieve(&tenant, request.text.clone(), embedding.clone())
                        .await
                }
            }
        };
        let analyze = self
            .analyze(&request.text, embedding.clone())
            .instrument(understand_span.clone());
        let (sentiment, retrieval) = tokio::join!(analyze, retrieve);
        let (sentiment, retrieval) = (sentiment?, retrieval?);
        let label = label_of(&sentiment);
        understand_span.record(
            "kefu.sentiment",
            SentimentLabel::try_from(label)
                .unwrap_or_default()
                .as_str_name(),
        );
        let mut decision = {
            let span = tracing::info_span!(
                "workflow.decide",
                kefu.tenant = %tenant,
                kefu.intent = %classification.intent,
                kefu.escalated = tracing::field::Empty,
                kefu.escalation_reason = tracing::field::Empty,
                kefu.priority = tracing::field::Empty,
            );
            let _entered = span.enter();
            let decision = decide(
                router_reached.then_some(&classification),
                &sentiment,
                &retrieval,
                conversation_so_far(history.last(), &request.text, &retrieval),
            );
            span.record("kefu.escalated", decision.escalated());
            span.record(
                "kefu.escalation_reason",
                decision.reason.map(|r| r.as_str()).unwrap_or(""),
            );
            span.record("kefu.priority", decision.priority.as_str_name());
            decision
        };

        let mut ticket_id = String::new();
        let mut ticket_pending = false;
        if decision.open_ticket {
            let span = tracing::info_span!(
                "workflow.ticket",
                kefu.tenant = %tenant,
                kefu.priority = tracing::field::Empty,
                kefu.ticket_created = tracing::field::Empty
            );
            let vip_tier = self
                .vip_tier(&tenant, &request.customer_id)
                .instrument(span.clone())
                .await?;
            decision.priority = ticket_priority(decision.priority, vip_tier);
            span.record("kefu.priority", decision.priority.as_str_name());
            let create = CreateTicketRequest {
                tenant_id: tenant.clone(),
                customer_id: request.customer_id.clone(),
                session_id: session_id.clone(),
                subject: format!(
                    "{} ({})",
                    classification.intent,
                    channel_name(request.channel)
                ),
                description: request.text.clone(),
                priority: decision.priority as i32,
                intent: classification.intent.clone(),
                channel: request.channel,
                escalation_reason: decision
                    .reason
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
                idempotency_key: message_id.clone(),
                actor: String::new(),
            };
            let created = async {
                let request = create.clone();
                self.tickets.clone().create_ticket(request).await
            }
            .instrument(span.clone())
            .await;
            match created {
                Ok(response) => {
                    let response = response.into_inner();
                    span.record("kefu.ticket_created", response.created);
                    ticket_id = response.ticket.map(|t| t.ticket_id).unwrap_or_default();
                }
                // Never lose a ticket: it waits in the outbox and is opened (once, by its
                // idempotency key) when the ticket service is back.
                Err(status) if is_transient(&status) => {
                    tracing::warn!(error = %status.message(), "ticket service unavailable; the ticket waits in the outbox");
                    self.conversations
                        .enqueue_ticket(OutboxRecord {
                            tenant_id: tenant.clone(),
                            customer_id: request.customer_id.clone(),
                            message_id: message_id.clone(),
                            session_id: session_id.clone(),
                            request: create.encode_to_vec(),
                            created_at: now_millis(),
                        })
                        .await?;
                    ticket_pending = true;
                }
                Err(status) => return Err(status),
            }
            if decision.escalated() {
                ticket_id = self
                    .hand_off(&tenant, &session_id, &request.customer_id, ticket_id)
                    .instrument(span)
                    .await?;
            }
        }

        let language = Language::try_from(classification.language).unwrap_or(Language::En);
        let reply = if ticket_pending && decision.escalated() {
            handoff_pending_reply(language)
        } else {
            decision.reply(
                &classification.fixed_reply,
                retrieval.found(),
                &ticket_id,
                language,
                history.last().map_or("", |turn| turn.reply.as_str()),
            )
        };
        let response = SendMessageResponse {
            session_id: session_id.clone(),
            reply,
            // Not understood: no intent. An empty intent on a bot turn is also what marks
            // it as a miss in the session's history.
            intent: if decision.missed() {
                String::new()
            } else {
                classification.intent.clone()
            },
            intent_confidence: classification.confidence,
            sentiment: sentiment.sentiment,
            escalated: decision.escalated(),
            ticket_id: ticket_id.clone(),
            priority: decision.priority as i32,
            sources: if decision.answered_from_knowledge {
                match retrieval {
                    Retrieval::Found(response) => response.sources,
                    _ => Vec::new(),
                }
            } else {
                Vec::new()
            },
            escalation_reason: decision
                .reason
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            message_id: message_id.clone(),
            handler: if decision.escalated() {
                Handler::Queued as i32
            } else {
                Handler::Bot as i32
            },
        };

        let turn = TurnRecord {
            tenant_id: tenant.clone(),
            session_id,
            seq: 0,
            message_id,
            customer_id: request.customer_id.clone(),
            text: request.text.clone(),
            reply: response.reply.clone(),
            intent: response.intent.clone(),
            sentiment: label,
            escalated: response.escalated,
            ticket_id,
            response: response.encode_to_vec(),
            created_at: now_millis(),
        };
        let stored = self.store_turn(turn, opens_session).await?;
        if stored != response {
            // The same message was handled concurrently and stored first: answer as it did.
            return Ok(stored);
        }

        metrics::counter!("kefu_messages_total", "service" => SERVICE, "tenant" => tenant.clone(), "outcome" => if response.escalated { "escalated" } else { "answered" }).increment(1);
        if let Some(reason) = decision.reason {
            metrics::counter!("kefu_escalations_total", "service" => SERVICE, "tenant" => tenant, "reason" => reason.as_str()).increment(1);
        }
        Ok(response)
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
        let response = SendMessageResponse::decode(stored.response.as_slice())
            .map_err(|error| Status::internal(format!("stored reply unreadable: {error}")))?;
        let recent: Vec<Turn> = if opens_session && stored.session_id == session_id {
            vec![turn_of(stored)]
        } else {
            self.sessions
                .recent_turns(&tenant, &session_id, CONTEXT_TURNS)
                .await?
                .into_iter()
                .map(turn_of)
                .collect()
        };
        self.remember(&tenant, &session_id, &recent).await;
        Ok(response)
    }

    /// Moves the session to the queue with its ticket; returns the session's ticket.
    /// Two messages of one session handed off at the same moment open two tickets: the
    /// session keeps the first, and the second is closed as its duplicate.
    async fn hand_off(
        &self,
        tenant: &str,
        session_id: &str,
        customer_id: &str,
        ticket_id: String,
    ) -> Result<String, Status> {
        let outcome = self
            .conversations
            .move_session(
                tenant,
                session_id,
                HandlerMove::HandOff {
                    customer_id: customer_id.to_owned(),
                    ticket_id: ticket_id.clone(),
                },
            )
            .await?;
        let existing = match outcome {
            HandlerOutcome::Unchanged(Some(existing))
                if existing.handler != Handler::Bot as i32 && existing.ticket_id != ticket_id =>
            {
                existing.ticket_id
            }
            _ => return Ok(ticket_id),
        };
        let close = TransitionTicketRequest {
            tenant_id: tenant.to_owned(),
            ticket_id: ticket_id.clone(),
            to_status: TicketStatus::Closed as i32,
            comment: format!("duplicate of {existing}, opened for the same session"),
            ..Default::default()
        };
        if let Err(status) = self.tickets.clone().transition_ticket(close).await {
            tracing::warn!(error = %status.message(), %ticket_id, "closing a duplicate hand-off ticket failed");
        }
        Ok(existing)
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
        let sentiment = self.analyze(&request.text, None).await?;
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
            if let Err(status) = self.tickets.clone().raise_priority(raise).await {
                tracing::warn!(error = %status.message(), "raising the ticket's priority failed");
            }
        }
        let label = label_of(&sentiment);
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
            sentiment: label,
            escalated: true,
            ticket_id: handler.ticket_id,
            response: response.encode_to_vec(),
            created_at: now_millis(),
        };
        let stored = self.store_turn(turn, false).await?;
        metrics::counter!("kefu_messages_total", "service" => SERVICE, "tenant" => tenant, "outcome" => "with_human").increment(1);
        Ok(stored)
    }

    /// Sentiment of a message; neutral when the sentiment service is unavailable.
    /// Searches the tenant's knowledge; `Unavailable` when the service cannot be reached
    /// (the customer is then handed to a human rather than failed).
    async fn retrieve(
        &self,
        tenant: &str,
        query: String,
        query_embedding: Option<Embedding>,
    ) -> Result<Retrieval, Status> {
        let span = tracing::info_span!("workflow.retrieve", kefu.tenant = %tenant, kefu.confident = tracing::field::Empty, kefu.sources = tracing::field::Empty);
        let request = SearchRequest {
            tenant_id: tenant.to_owned(),
            query,
            top_k: 3,
            query_embedding,
        };
        let result = self
            .knowledge
            .clone()
            .search(request)
            .instrument(span.clone())
            .await;
        match result {
            Ok(response) => {
                let response = response.into_inner();
                span.record("kefu.confident", response.confident);
                span.record("kefu.sources", response.sources.len());
                Ok(Retrieval::Found(response))
            }
            Err(status) if is_transient(&status) => {
                tracing::warn!(error = %status.message(), "knowledge unavailable; handing off");
                Ok(Retrieval::Unavailable)
            }
            Err(status) => Err(status),
        }
    }

    async fn analyze(
        &self,
        text: &str,
        embedding: Option<Embedding>,
    ) -> Result<AnalyzeResponse, Status> {
        let result = async {
            let request = AnalyzeRequest {
                text: text.to_owned(),
                embedding: embedding.clone(),
            };
            self.sentiment.clone().analyze(request).await
        }
        .await;
        match result {
            Ok(response) => Ok(response.into_inner()),
            // Sentiment refines the decision; without it the message is still handled.
            Err(status) if is_transient(&status) => {
                tracing::warn!(error = %status.message(), "sentiment unavailable; treating the message as neutral");
                Ok(AnalyzeResponse {
                    sentiment: Some(Sentiment {
                        label: SentimentLabel::Neutral as i32,
                        score: 0.0,
                    }),
                    ..Default::default()
                })
            }
            Err(status) => Err(status),
        }
    }

    /// Opens the tickets waiting in the outbox; a session handed off meanwhile gets its
    /// ticket. Replicas may run this together: the idempotency key makes one ticket.
    async fn open_pending_tickets(&self) -> Result<usize, Status> {
        let mut opened = 0;
        for pending in self.conversations.pending_tickets(50).await? {
            let create = CreateTicketRequest::decode(pending.request.as_slice())
                .map_err(|error| Status::internal(format!("outbox entry unreadable: {error}")))?;
            let response = self
                .tickets
                .clone()
                .create_ticket(create)
                .await?
                .into_inner();
            let ticket_id = response.ticket.map(|t| t.ticket_id).unwrap_or_default();
            self.conversations
                .ticket_opened(&pending, &ticket_id)
                .await?;
            opened += 1;
        }
        Ok(opened)
    }

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

    async fn session(
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

    async fn stream_events(
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

    async fn rate(
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
            self.tickets.clone().get_ticket(request).await
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

#[derive(Clone)]
pub struct OrchestratorHandle(Arc<Orchestrator>);

#[tonic::async_trait]
impl OrchestratorService for OrchestratorHandle {
    async fn handle_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        self.0.handle(request.into_inner()).await.map(Response::new)
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let principal = Principal::from_metadata(request.metadata());
        self.0
            .session(request.into_inner(), principal.as_ref())
            .await
            .map(Response::new)
    }

    type StreamEventsStream = events::EventStream;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let principal = Principal::from_metadata(request.metadata());
        self.0
            .stream_events(request.into_inner(), principal.as_ref())
            .await
            .map(Response::new)
    }

    async fn rate_conversation(
        &self,
        request: Request<RateConversationRequest>,
    ) -> Result<Response<RateConversationResponse>, Status> {
        self.0.rate(request.into_inner()).await.map(Response::new)
    }
}

/// How often waiting tickets are tried again.
const OUTBOX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

fn spawn_outbox(orchestrator: Arc<Orchestrator>, shutdown: Shutdown) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(OUTBOX_INTERVAL) => {}
                _ = shutdown.wait() => return,
            }
            match orchestrator.open_pending_tickets().await {
                Ok(0) => {}
                Ok(opened) => tracing::info!(opened, "tickets from the outbox opened"),
                Err(status) => {
                    tracing::debug!(error = %status.message(), "outbox waits for the ticket service")
                }
            }
        }
    });
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let connect = Connector::new(SERVICE, &config.clients, &config.server.tls)?;
    let peers = &config.peers;
    let conversations = SqlConversationStore::new(db.clone());
    let orchestrator = Orchestrator {
        sessions: Arc::new(SqlSessionStore::new(db.clone())),
        bus: conversations.bus().clone(),
        conversations: Arc::new(conversations),
        shutdown: shutdown.clone(),
        context: Cache::new("session", SERVICE, SESSION_CONTEXT_TTL, redis.clone()),
        router: RouterServiceClient::new(connect.channel("kefu-router", &peers.router_url)?),
        sentiment: SentimentServiceClient::new(
            connect.channel("kefu-sentiment", &peers.sentiment_url)?,
        ),
        knowledge: KnowledgeServiceClient::new(
            connect.channel("kefu-knowledge", &peers.knowledge_url)?,
        ),
        tickets: TicketServiceClient::new(connect.channel("kefu-ticket", &peers.ticket_url)?),
    };
    let orchestrator = Arc::new(orchestrator);
    spawn_outbox(orchestrator.clone(), shutdown.clone());
    let mut server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(OrchestratorServiceServer::new(OrchestratorHandle(
            orchestrator,
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
