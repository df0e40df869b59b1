//! Gateway: the only service exposed outside the cluster. It authenticates every call
//! (customer, agent or admin of a tenant; see `auth`), validates and bounds the request,
//! assigns idempotency keys before anything can be retried, and forwards it with the
//! caller's principal: conversations to the orchestrator, tickets to the ticket
//! service, the tenant's knowledge and intents to the knowledge and router services.
use std::sync::Arc;

use futures::StreamExt as _;
use kefu_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use kefu_proto::v1::conversation_service_server::{ConversationService, ConversationServiceServer};
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::ticket_service_server::{TicketService, TicketServiceServer};
use kefu_proto::v1::*;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{
    ClientArgs, Connector, ContentArgs, GrpcChannel, Principal, RunningServer, ServerArgs,
    ServiceSpec, Shutdown,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tower::Layer as _;

mod auth;
mod tenants;
mod web;

pub use auth::{authenticate, Access, Credentials, Refusal};
use kefu_storage::{Rate, RateLimiter, Redis};
use tenants::LiveTenants;
pub use web::WebArgs;

pub const SPEC: ServiceSpec = ServiceSpec::GATEWAY;
const SERVICE: &str = "kefu-gateway";
const MAX_ID_CHARS: usize = 128;
const CUSTOMER_HASH_HEADER: &str = "x-kefu-customer-hash";

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "KEFU_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    #[arg(long, env = "KEFU_ORCHESTRATOR_URL", default_value_t = ServiceSpec::ORCHESTRATOR.default_url())]
    pub orchestrator_url: String,
    #[arg(long, env = "KEFU_TICKET_URL", default_value_t = ServiceSpec::TICKET.default_url())]
    pub ticket_url: String,
    #[arg(long, env = "KEFU_KNOWLEDGE_URL", default_value_t = ServiceSpec::KNOWLEDGE.default_url())]
    pub knowledge_url: String,
    #[arg(long, env = "KEFU_ROUTER_URL", default_value_t = ServiceSpec::ROUTER.default_url())]
    pub router_url: String,
    #[command(flatten)]
    pub web: WebArgs,
    /// Redis (redis://…) for the per-tenant rate limits shared by gateway replicas;
    /// unset: each replica limits on its own.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "KEFU_REDIS_PREFIX", default_value = "kefu:")]
    pub redis_prefix: String,
    /// Calls handled at once; above it new calls get RESOURCE_EXHAUSTED at once rather
    /// than queueing into timeouts.
    #[arg(long, env = "KEFU_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,
}

pub struct Gateway {
    tenants: Arc<LiveTenants>,
    limiter: RateLimiter,
    max_message_bytes: usize,
    orchestrator: OrchestratorServiceClient<GrpcChannel>,
    tickets: TicketServiceClient<GrpcChannel>,
    knowledge: KnowledgeServiceClient<GrpcChannel>,
    router: RouterServiceClient<GrpcChannel>,
    shutdown: Shutdown,
}

fn api_key(metadata: &MetadataMap) -> Option<&str> {
    if let Some(key) = metadata.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

fn bounded_id(value: &str, field: &str, required: bool) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.chars().count() > MAX_ID_CHARS || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} must be at most {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(())
}

fn known_channel(channel: i32) -> Result<(), Status> {
    Channel::try_from(channel)
        .map(drop)
        .map_err(|_| Status::invalid_argument(format!("unknown channel {channel}")))
}

impl Gateway {
    /// Authenticates a call of `access` on `tenant_id`, for `customer_id` where a
    /// customer acts. Refusals are counted and logged with the peer, never the key.
    async fn admit<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        tenant_id: &str,
        access: Access,
        customer_id: &str,
    ) -> Result<Principal, Status> {
        bounded_id(tenant_id, "tenant_id", true)?;
        bounded_id(customer_id, "customer_id", false)?;
        let metadata = request.metadata();
        let credentials = Credentials {
            key: api_key(metadata),
            customer_hash: metadata
                .get(CUSTOMER_HASH_HEADER)
                .and_then(|v| v.to_str().ok()),
        };
        let tenants = self.tenants.current();
        let principal = authenticate(
            &tenants,
            tenant_id,
            credentials,
            access,
            customer_id,
            |variable| std::env::var(variable).ok(),
        )
        .map_err(|refusal| {
            metrics::counter!("kefu_auth_failures_total", "service" => SERVICE, "reason" => refusal.reason()).increment(1);
            tracing::warn!(
                peer = ?request.remote_addr(),
                rpc,
                reason = refusal.reason(),
                "authentication failed"
            );
            Status::from(refusal)
        })?;
        if principal.role == kefu_runtime::Role::Customer && customer_id.trim().is_empty() {
            return Err(Status::invalid_argument("customer_id is required"));
        }
        // Counted once the caller is known, so nobody spends another tenant's budget.
        if let Some(limit) = tenants.get(tenant_id).and_then(|t| t.rate_limit) {
            let rate = Rate {
                per_second: limit.requests_per_second,
                burst: limit.burst,
            };
            if let Err(wait) = self.limiter.admit(tenant_id, rate).await {
                metrics::counter!("kefu_requests_shed_total", "service" => SERVICE, "reason" => "rate_limit").increment(1);
                let mut status = Status::resource_exhausted(format!(
                    "tenant {tenant_id:?} is over its rate limit; retry after {} ms",
                    wait.as_millis()
                ));
                if let Ok(value) = wait.as_millis().max(1).to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", value);
                }
                return Err(status);
            }
        }
        Ok(principal)
    }

    fn bounded_text(&self, text: &str, field: &str) -> Result<(), Status> {
        if text.trim().is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field} must not be empty"
            )));
        }
        if text.len() > self.max_message_bytes {
            return Err(Status::invalid_argument(format!(
                "{field} is {} bytes; the limit is {} bytes",
                text.len(),
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    fn validate_message(&self, message: &SendMessageRequest) -> Result<(), Status> {
        bounded_id(&message.customer_id, "customer_id", true)?;
        bounded_id(&message.session_id, "session_id", false)?;
        bounded_id(&message.message_id, "message_id", false)?;
        known_channel(message.channel)?;
        self.bounded_text(&message.text, "text")
    }

    /// Every field of a ticket is shown in lists and the console: all are bounded.
    fn validate_new_ticket(&self, ticket: &CreateTicketRequest) -> Result<(), Status> {
        bounded_id(&ticket.customer_id, "customer_id", true)?;
        bounded_id(&ticket.session_id, "session_id", false)?;
        bounded_id(&ticket.idempotency_key, "idempotency_key", false)?;
        bounded_id(&ticket.intent, "intent", false)?;
        bounded_id(&ticket.escalation_reason, "escalation_reason", false)?;
        self.bounded_text(&ticket.subject, "subject")?;
        if ticket.description.len() > self.max_message_bytes {
            return Err(Status::invalid_argument(format!(
                "description is longer than {} bytes",
                self.max_message_bytes
            )));
        }
        known_channel(ticket.channel)?;
        if Priority::try_from(ticket.priority).is_err() {
            return Err(Status::invalid_argument(format!(
                "unknown priority {}",
                ticket.priority
            )));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct GatewayHandle(Arc<Gateway>);

/// Forwards a validated request with the caller's principal. The channel retries a
/// call that did not reach the service, for methods safe to repeat only
/// (`kefu_runtime::resilience`); message and reply ids are assigned above, before it.
macro_rules! forward {
    ($self:ident . $client:ident . $method:ident ($principal:expr, $request:expr)) => {{
        $self
            .0
            .$client
            .clone()
            .$method($principal.request($request))
            .await
    }};
}

#[tonic::async_trait]
impl ConversationService for GatewayHandle {
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "SendMessage",
                &message.tenant_id,
                Access::Customer,
                &message.customer_id,
            )
            .await?;
        let mut message = request.into_inner();
        self.0.validate_message(&message)?;
        // Assigned here, before the first attempt, so a retry is the same message.
        if message.message_id.is_empty() {
            message.message_id = uuid::Uuid::now_v7().to_string();
        }
        forward!(self.orchestrator.handle_message(principal, message))
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "GetSession",
                &message.tenant_id,
                Access::CustomerOrStaff,
                &message.customer_id,
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.session_id, "session_id", true)?;
        forward!(self.orchestrator.get_session(principal, message))
    }

    type StreamEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<ConversationEvent, Status>> + Send + 'static>,
    >;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "StreamEvents",
                &message.tenant_id,
                Access::Customer,
                &message.customer_id,
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.session_id, "session_id", true)?;
        let events = forward!(self.orchestrator.stream_events(principal, message))?.into_inner();
        // On shutdown the stream ends; the client resumes with after_event_id elsewhere.
        let shutdown = self.0.shutdown.clone();
        let events = events.take_until(Box::pin(async move { shutdown.wait().await }));
        Ok(Response::new(Box::pin(events)))
    }

    async fn rate_conversation(
        &self,
        request: Request<RateConversationRequest>,
    ) -> Result<Response<RateConversationResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "RateConversation",
                &message.tenant_id,
                Access::Customer,
                &message.customer_id,
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        forward!(self.orchestrator.rate_conversation(principal, message))
    }
}

#[tonic::async_trait]
impl TicketService for GatewayHandle {
    async fn create_ticket(
        &self,
        request: Request<CreateTicketRequest>,
    ) -> Result<Response<CreateTicketResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "CreateTicket",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let mut message = request.into_inner();
        self.0.validate_new_ticket(&message)?;
        if message.idempotency_key.is_empty() {
            message.idempotency_key = uuid::Uuid::now_v7().to_string();
        }
        forward!(self.tickets.create_ticket(principal, message))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<GetTicketResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(&request, "GetTicket", &message.tenant_id, Access::Staff, "")
            .await?;
        let message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        forward!(self.tickets.get_ticket(principal, message))
    }

    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "ListTickets",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.customer_id, "customer_id", false)?;
        forward!(self.tickets.list_tickets(principal, message))
    }

    async fn next_in_queue(
        &self,
        request: Request<NextInQueueRequest>,
    ) -> Result<Response<NextInQueueResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "NextInQueue",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.assignee, "assignee", false)?;
        forward!(self.tickets.next_in_queue(principal, message))
    }

    async fn transition_ticket(
        &self,
        request: Request<TransitionTicketRequest>,
    ) -> Result<Response<TransitionTicketResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "TransitionTicket",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        if message.comment.len() > self.0.max_message_bytes {
            return Err(Status::invalid_argument("comment is too long"));
        }
        forward!(self.tickets.transition_ticket(principal, message))
    }

    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "GetCustomer",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.customer_id, "customer_id", true)?;
        forward!(self.tickets.get_customer(principal, message))
    }

    async fn upsert_customer(
        &self,
        request: Request<UpsertCustomerRequest>,
    ) -> Result<Response<UpsertCustomerResponse>, Status> {
        let tenant_id = request
            .get_ref()
            .customer
            .as_ref()
            .map(|c| c.tenant_id.clone())
            .ok_or_else(|| Status::invalid_argument("customer is required"))?;
        let principal = self
            .0
            .admit(&request, "UpsertCustomer", &tenant_id, Access::Admin, "")
            .await?;
        let message = request.into_inner();
        let customer = message.customer.as_ref().expect("checked above");
        bounded_id(&customer.customer_id, "customer.customer_id", true)?;
        bounded_id(&customer.display_name, "customer.display_name", false)?;
        forward!(self.tickets.upsert_customer(principal, message))
    }

    async fn reply_to_customer(
        &self,
        request: Request<ReplyToCustomerRequest>,
    ) -> Result<Response<ReplyToCustomerResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "ReplyToCustomer",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let mut message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        bounded_id(&message.request_id, "request_id", false)?;
        self.0.bounded_text(&message.text, "text")?;
        // With a key assigned before the first attempt, a retried reply is stored once.
        if message.request_id.is_empty() {
            message.request_id = uuid::Uuid::now_v7().to_string();
        }
        forward!(self.tickets.reply_to_customer(principal, message))
    }

    async fn get_conversation(
        &self,
        request: Request<GetConversationRequest>,
    ) -> Result<Response<GetConversationResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "GetConversation",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        forward!(self.tickets.get_conversation(principal, message))
    }

    async fn raise_priority(
        &self,
        request: Request<RaisePriorityRequest>,
    ) -> Result<Response<RaisePriorityResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "RaisePriority",
                &message.tenant_id,
                Access::Staff,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        if message.reason.len() > self.0.max_message_bytes {
            return Err(Status::invalid_argument("reason is too long"));
        }
        forward!(self.tickets.raise_priority(principal, message))
    }
}

#[tonic::async_trait]
impl AdminService for GatewayHandle {
    async fn ingest_documents(
        &self,
        request: Request<IngestDocumentsRequest>,
    ) -> Result<Response<IngestDocumentsResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "IngestDocuments",
                &message.tenant_id,
                Access::Admin,
                "",
            )
            .await?;
        let message = request.into_inner();
        for document in &message.documents {
            bounded_id(&document.document_id, "document_id", false)?;
        }
        // Ingesting replaces documents by id: repeating it changes nothing.
        forward!(self.knowledge.ingest_documents(principal, message))
    }

    async fn delete_document(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "DeleteDocument",
                &message.tenant_id,
                Access::Admin,
                "",
            )
            .await?;
        let message = request.into_inner();
        bounded_id(&message.document_id, "document_id", true)?;
        forward!(self.knowledge.delete_document(principal, message))
    }

    async fn reindex(
        &self,
        request: Request<ReindexRequest>,
    ) -> Result<Response<ReindexResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(&request, "Reindex", &message.tenant_id, Access::Admin, "")
            .await?;
        let message = request.into_inner();
        forward!(self.knowledge.reindex(principal, message))
    }

    async fn reload_tenant(
        &self,
        request: Request<ReloadTenantRequest>,
    ) -> Result<Response<ReloadTenantResponse>, Status> {
        let message = request.get_ref();
        let principal = self
            .0
            .admit(
                &request,
                "ReloadTenant",
                &message.tenant_id,
                Access::Admin,
                "",
            )
            .await?;
        let message = request.into_inner();
        // The gateway's own copy first: key changes apply at once.
        if let Err(error) = self.0.tenants.reload() {
            return Err(Status::failed_precondition(format!(
                "the tenant files do not load: {error:#}"
            )));
        }
        forward!(self.router.reload_tenant(principal, message))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let tenants = LiveTenants::load(&config.content.tenants_dir)?;
    tracing::info!(tenants = tenants.current().len(), "tenants loaded");
    tenants.clone().watch(shutdown.clone());
    // The gateway's own certificate is for its public port; calls inward use TLS only
    // where the cluster's CA is named.
    let connect = Connector::new(SERVICE, &config.clients, &config.server.tls)?;
    let client = |target: &str, url: &str| connect.channel(target, url);
    let redis = match config.redis_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Some(Redis::connect(url, &config.redis_prefix)?),
        _ => None,
    };
    let gateway = GatewayHandle(Arc::new(Gateway {
        tenants,
        limiter: RateLimiter::new(redis),
        max_message_bytes: config.max_message_bytes,
        orchestrator: OrchestratorServiceClient::new(client(
            "kefu-orchestrator",
            &config.orchestrator_url,
        )?),
        tickets: TicketServiceClient::new(client("kefu-ticket", &config.ticket_url)?),
        knowledge: KnowledgeServiceClient::new(client("kefu-knowledge", &config.knowledge_url)?),
        router: RouterServiceClient::new(client("kefu-router", &config.router_url)?),
        shutdown: shutdown.clone(),
    }));
    if config.web.web_port != 0 {
        let bind = std::net::SocketAddr::new(config.server.bind_host, config.web.web_port);
        let grpc_port = config.server.grpc_addr(SPEC).port();
        let tls = config.server.tls.tls_cert.is_some();
        web::serve(bind, &config.web, grpc_port, tls, shutdown.clone()).await?;
    }
    // Browsers call the same services over gRPC-Web, with the same authentication.
    let browsers = tonic_web::GrpcWebLayer::new();
    let cors = web::cors(&config.web, gateway.0.tenants.clone());
    // Readiness follows what customers and agents need; the admin calls to knowledge
    // and router fail on their own while those are down.
    kefu_runtime::Server::new(SPEC, config.server)
        .shed_above(config.max_in_flight)
        .browser_access(cors)
        .add_service(browsers.layer(ConversationServiceServer::new(gateway.clone())))
        .add_service(browsers.layer(TicketServiceServer::new(gateway.clone())))
        .add_service(browsers.layer(AdminServiceServer::new(gateway)))
        .probe(Arc::new(DownstreamProbe::new(
            "orchestrator",
            connect.raw_channel(&config.orchestrator_url)?,
        )))
        .probe(Arc::new(DownstreamProbe::new(
            "ticket",
            connect.raw_channel(&config.ticket_url)?,
        )))
        .start(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_api_keys_from_either_header() {
        let mut metadata = MetadataMap::new();
        assert_eq!(api_key(&metadata), None);
        metadata.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(api_key(&metadata), Some("abc"));
        metadata.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(api_key(&metadata), Some("xyz"));
    }

    #[test]
    fn bounds_identifiers() {
        assert!(bounded_id("", "customer_id", true).is_err());
        assert!(bounded_id("", "session_id", false).is_ok());
        assert!(bounded_id(&"x".repeat(129), "customer_id", true).is_err());
        assert!(bounded_id("a\u{0}b", "customer_id", true).is_err());
        assert!(bounded_id("c-42", "customer_id", true).is_ok());
    }
}
