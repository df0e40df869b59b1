//! Orchestrator: runs the workflow of one customer message. Load the session and the
//! customer's profile, ask the router, then sentiment and knowledge with the message's
//! sentence embedding the router computed (one forward pass of the encoder per turn),
//! decide between answering and handing off, open a ticket when needed, store the turn,
//! reply.
use std::sync::Arc;

use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_server::{OrchestratorService, OrchestratorServiceServer};
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::sentiment_service_client::SentimentServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{
    with_retry, ClientArgs, DataArgs, GrpcChannel, RunningServer, ServerArgs, ServiceSpec, Shutdown,
};
use kefu_storage::{now_millis, Cache, Database, Redis, SessionStore, SqlSessionStore, TurnRecord};
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::Instrument;

mod decision;

pub use decision::{decide, Decision, EscalationReason};

pub const SPEC: ServiceSpec = ServiceSpec::ORCHESTRATOR;
const SERVICE: &str = "kefu-orchestrator";
/// Earlier turns given to the workflow as context.
const CONTEXT_TURNS: i64 = 6;
const MAX_SESSION_TURNS: i64 = 1000;
/// How long a session's context stays in the cache after its last turn.
const SESSION_CONTEXT_TTL: std::time::Duration = std::time::Duration::from_secs(1800);

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
            };
            self.context
                .put(tenant_id, session_id, context.encode_to_vec())
                .await;
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
                .find_by_message_id(&tenant, &request.message_id)
                .await?
            {
                if turn.customer_id != request.customer_id {
                    return Err(Status::already_exists(
                        "message_id was already used by another customer",
                    ));
                }
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
        let session_id = if request.session_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            request.session_id.clone()
        };

        let (history, customer) = async {
            let history = self.recent_turns(&tenant, &session_id).await?;
            if history
                .iter()
                .any(|turn| turn.customer_id != request.customer_id)
            {
                return Err(Status::permission_denied(
                    "the session belongs to another customer",
                ));
            }
            let customer = with_retry(|| {
                let mut client = self.tickets.clone();
                let request = GetCustomerRequest {
                    tenant_id: tenant.clone(),
                    customer_id: request.customer_id.clone(),
                };
                async move { client.get_customer(request).await }
            })
            .await?
            .into_inner()
            .customer
            .unwrap_or_default();
            Ok::<_, Status>((history, customer))
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
        // The router embeds the message once; sentiment (and knowledge, below) reuse it.
        // Sentiment waits for the router: with the embedding at hand it takes about a
        // millisecond, far less than a second forward pass of the encoder.
        let (mut classification, sentiment) = async {
            let classification = with_retry(|| {
                let mut client = self.router.clone();
                let request = ClassifyRequest {
                    tenant_id: tenant.clone(),
                    text: request.text.clone(),
                    previous_intents: previous_intents.clone(),
                    include_embedding: true,
                };
                async move { client.classify(request).await }
            })
            .await?
            .into_inner();
            let sentiment = with_retry(|| {
                let mut client = self.sentiment.clone();
                let request = AnalyzeRequest {
                    text: request.text.clone(),
                    embedding: classification.embedding.clone(),
                };
                async move { client.analyze(request).await }
            })
            .await;
            let sentiment = match sentiment {
                Ok(response) => response.into_inner(),
                // Sentiment refines the decision; without it the message is still handled.
                Err(status) if is_transient(&status) => {
                    tracing::warn!(error = %status.message(), "sentiment unavailable; treating the message as neutral");
                    AnalyzeResponse { sentiment: Some(Sentiment { label: SentimentLabel::Neutral as i32, score: 0.0 }), ..Default::default() }
                }
                Err(status) => return Err(status),
            };
            Ok::<_, Status>((classification, sentiment))
        }
        .instrument(understand_span.clone())
        .await?;
        let label = sentiment
            .sentiment
            .as_ref()
            .map(|s| s.label)
            .unwrap_or(SentimentLabel::Neutral as i32);
        understand_span.record("kefu.intent", classification.intent.as_str());
        understand_span.record("kefu.intent_confidence", classification.confidence as f64);
        understand_span.record(
            "kefu.sentiment",
            SentimentLabel::try_from(label)
                .unwrap_or_default()
                .as_str_name(),
        );

        let embedding = classification.embedding.take();
        let needs_knowledge =
            classification.fixed_reply.is_empty() && classification.route != Route::Human as i32;
        let knowledge = if needs_knowledge {
            let (query, query_embedding) = match history.last() {
                // A short follow-up is searched together with the question it follows
                // (a text the router did not embed).
                Some(previous) if request.text.chars().count() <= 24 => {
                    (format!("{} {}", previous.text, request.text), None)
                }
                _ => (request.text.clone(), embedding),
            };
            let span = tracing::info_span!("workflow.retrieve", kefu.tenant = %tenant, kefu.confident = tracing::field::Empty, kefu.sources = tracing::field::Empty);
            let result = with_retry(|| {
                let mut client = self.knowledge.clone();
                let request = SearchRequest {
                    tenant_id: tenant.clone(),
                    query: query.clone(),
                    top_k: 3,
                    query_embedding: query_embedding.clone(),
                };
                async move { client.search(request).await }
            })
            .instrument(span.clone())
            .await;
            match result {
                Ok(response) => {
                    let response = response.into_inner();
                    span.record("kefu.confident", response.confident);
                    span.record("kefu.sources", response.sources.len());
                    Some(response)
                }
                // Without knowledge the customer is handed to a human rather than failed.
                Err(status) if is_transient(&status) => {
                    tracing::warn!(error = %status.message(), "knowledge unavailable; handing off");
                    None
                }
                Err(status) => return Err(status),
            }
        } else {
            None
        };

        let decision = {
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
                &classification,
                &sentiment,
                knowledge.as_ref(),
                customer.vip_tier,
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
        if decision.open_ticket {
            let span = tracing::info_span!("workflow.ticket", kefu.tenant = %tenant, kefu.priority = decision.priority.as_str_name(), kefu.ticket_created = tracing::field::Empty);
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
            let response = with_retry(|| {
                let mut client = self.tickets.clone();
                let request = create.clone();
                async move { client.create_ticket(request).await }
            })
            .instrument(span.clone())
            .await?
            .into_inner();
            span.record("kefu.ticket_created", response.created);
            ticket_id = response.ticket.map(|t| t.ticket_id).unwrap_or_default();
        }

        let language = Language::try_from(classification.language).unwrap_or(Language::En);
        let reply = decision.reply(&classification, knowledge.as_ref(), &ticket_id, language);
        let response = SendMessageResponse {
            session_id: session_id.clone(),
            reply,
            intent: classification.intent.clone(),
            intent_confidence: classification.confidence,
            sentiment: sentiment.sentiment,
            escalated: decision.escalated(),
            ticket_id: ticket_id.clone(),
            priority: decision.priority as i32,
            sources: if decision.answered_from_knowledge {
                knowledge.map(|k| k.sources).unwrap_or_default()
            } else {
                Vec::new()
            },
            escalation_reason: decision
                .reason
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            message_id: message_id.clone(),
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
        let session_id = turn.session_id.clone();
        let stored = self
            .sessions
            .append(turn)
            .instrument(tracing::info_span!("workflow.store_turn", kefu.tenant = %tenant))
            .await?;
        let recent: Vec<Turn> = self
            .sessions
            .recent_turns(&tenant, &session_id, CONTEXT_TURNS)
            .await?
            .into_iter()
            .map(turn_of)
            .collect();
        self.remember(&tenant, &session_id, &recent).await;
        if stored.response != response.encode_to_vec() {
            // The same message was handled concurrently and stored first: answer as it did.
            return SendMessageResponse::decode(stored.response.as_slice())
                .map_err(|error| Status::internal(error.to_string()));
        }

        metrics::counter!("kefu_messages_total", "service" => SERVICE, "tenant" => tenant.clone(), "outcome" => if response.escalated { "escalated" } else { "answered" }).increment(1);
        if let Some(reason) = decision.reason {
            metrics::counter!("kefu_escalations_total", "service" => SERVICE, "tenant" => tenant, "reason" => reason.as_str()).increment(1);
        }
        Ok(response)
    }

    async fn session(&self, request: GetSessionRequest) -> Result<GetSessionResponse, Status> {
        if request.tenant_id.trim().is_empty() || request.session_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "tenant_id and session_id are required",
            ));
        }
        let turns = self
            .sessions
            .recent_turns(&request.tenant_id, &request.session_id, MAX_SESSION_TURNS)
            .await?;
        if turns.is_empty() {
            return Err(Status::not_found(format!(
                "session {:?} not found",
                request.session_id
            )));
        }
        Ok(GetSessionResponse {
            session_id: request.session_id,
            turns: turns.into_iter().map(turn_of).collect(),
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
        self.0
            .session(request.into_inner())
            .await
            .map(Response::new)
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let deadline = config.clients.call_timeout();
    let peers = &config.peers;
    let orchestrator = Orchestrator {
        sessions: Arc::new(SqlSessionStore::new(db.clone())),
        context: Cache::new("session", SERVICE, SESSION_CONTEXT_TTL, redis.clone()),
        router: RouterServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-router",
            &peers.router_url,
            deadline,
        )?),
        sentiment: SentimentServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-sentiment",
            &peers.sentiment_url,
            deadline,
        )?),
        knowledge: KnowledgeServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-knowledge",
            &peers.knowledge_url,
            deadline,
        )?),
        tickets: TicketServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-ticket",
            &peers.ticket_url,
            deadline,
        )?),
    };
    let mut server = kefu_runtime::Server::new(SPEC, config.server)
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
            kefu_runtime::client::raw_channel(url, deadline)?,
        )));
    }
    server.start(shutdown).await
}
