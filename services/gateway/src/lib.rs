//! Gateway: the only service exposed outside the cluster. It authenticates the caller,
//! resolves the tenant, validates and bounds every request, and forwards it: messages
//! to the orchestrator, ticket calls to the ticket service.
use std::sync::Arc;

use kefu_proto::v1::conversation_service_server::{ConversationService, ConversationServiceServer};
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::ticket_service_server::{TicketService, TicketServiceServer};
use kefu_proto::v1::*;
use kefu_runtime::health::DownstreamProbe;
use kefu_runtime::{
    with_retry, ClientArgs, ContentArgs, GrpcChannel, RunningServer, ServerArgs, ServiceSpec,
    Shutdown,
};
use kefu_tenant::Tenants;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::GATEWAY;
const SERVICE: &str = "kefu-gateway";
const MAX_ID_CHARS: usize = 128;

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
}

pub struct Gateway {
    tenants: Tenants,
    max_message_bytes: usize,
    orchestrator: OrchestratorServiceClient<GrpcChannel>,
    tickets: TicketServiceClient<GrpcChannel>,
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

impl Gateway {
    /// Resolves the tenant of a request and checks the caller's API key against it.
    fn authorize(&self, tenant_id: &str, metadata: &MetadataMap) -> Result<(), Status> {
        bounded_id(tenant_id, "tenant_id", true)?;
        let tenant = self
            .tenants
            .get(tenant_id)
            .ok_or_else(|| Status::not_found(format!("unknown tenant {tenant_id:?}")))?;
        if tenant.requires_key() {
            let key = api_key(metadata).ok_or_else(|| {
                Status::unauthenticated(
                    "an API key is required (authorization: Bearer <key> or x-api-key)",
                )
            })?;
            if !tenant.accepts_key(key) {
                return Err(Status::permission_denied(format!(
                    "the API key is not valid for tenant {tenant_id:?}"
                )));
            }
        }
        Ok(())
    }

    fn validate_message(&self, message: &SendMessageRequest) -> Result<(), Status> {
        bounded_id(&message.customer_id, "customer_id", true)?;
        bounded_id(&message.session_id, "session_id", false)?;
        bounded_id(&message.message_id, "message_id", false)?;
        if Channel::try_from(message.channel).is_err() {
            return Err(Status::invalid_argument(format!(
                "unknown channel {}",
                message.channel
            )));
        }
        if message.text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        if message.text.len() > self.max_message_bytes {
            return Err(Status::invalid_argument(format!(
                "text is {} bytes; the limit is {} bytes",
                message.text.len(),
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct GatewayHandle(Arc<Gateway>);

/// Forwards a validated request to a downstream client method, retrying only when the
/// downstream is briefly unavailable.
macro_rules! forward {
    ($self:ident . $client:ident . $method:ident ($request:expr)) => {{
        let request = $request;
        with_retry(|| {
            let mut client = $self.0.$client.clone();
            let request = request.clone();
            async move { client.$method(request).await }
        })
        .await
    }};
}

#[tonic::async_trait]
impl ConversationService for GatewayHandle {
    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        self.0.validate_message(&message)?;
        forward!(self.orchestrator.handle_message(message))
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.session_id, "session_id", true)?;
        forward!(self.orchestrator.get_session(message))
    }
}

#[tonic::async_trait]
impl TicketService for GatewayHandle {
    async fn create_ticket(
        &self,
        request: Request<CreateTicketRequest>,
    ) -> Result<Response<CreateTicketResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        if message.description.len() > self.0.max_message_bytes {
            return Err(Status::invalid_argument(format!(
                "description is longer than {} bytes",
                self.0.max_message_bytes
            )));
        }
        forward!(self.tickets.create_ticket(message))
    }

    async fn get_ticket(
        &self,
        request: Request<GetTicketRequest>,
    ) -> Result<Response<GetTicketResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        forward!(self.tickets.get_ticket(message))
    }

    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.customer_id, "customer_id", false)?;
        forward!(self.tickets.list_tickets(message))
    }

    async fn next_in_queue(
        &self,
        request: Request<NextInQueueRequest>,
    ) -> Result<Response<NextInQueueResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.assignee, "assignee", false)?;
        forward!(self.tickets.next_in_queue(message))
    }

    async fn transition_ticket(
        &self,
        request: Request<TransitionTicketRequest>,
    ) -> Result<Response<TransitionTicketResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.ticket_id, "ticket_id", true)?;
        bounded_id(&message.actor, "actor", true)?;
        forward!(self.tickets.transition_ticket(message))
    }

    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        self.0.authorize(&message.tenant_id, &metadata)?;
        bounded_id(&message.customer_id, "customer_id", true)?;
        forward!(self.tickets.get_customer(message))
    }

    async fn upsert_customer(
        &self,
        request: Request<UpsertCustomerRequest>,
    ) -> Result<Response<UpsertCustomerResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let customer = message
            .customer
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("customer is required"))?;
        self.0.authorize(&customer.tenant_id, &metadata)?;
        bounded_id(&customer.customer_id, "customer.customer_id", true)?;
        forward!(self.tickets.upsert_customer(message))
    }
}

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let tenants = Tenants::load_dir(&config.content.tenants_dir)?;
    tracing::info!(tenants = tenants.len(), "tenants loaded");
    let deadline = config.clients.call_timeout();
    let gateway = GatewayHandle(Arc::new(Gateway {
        tenants,
        max_message_bytes: config.max_message_bytes,
        orchestrator: OrchestratorServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-orchestrator",
            &config.orchestrator_url,
            deadline,
        )?),
        tickets: TicketServiceClient::new(kefu_runtime::channel(
            SERVICE,
            "kefu-ticket",
            &config.ticket_url,
            deadline,
        )?),
    }));
    kefu_runtime::Server::new(SPEC, config.server)
        .add_service(ConversationServiceServer::new(gateway.clone()))
        .add_service(TicketServiceServer::new(gateway))
        .probe(Arc::new(DownstreamProbe::new(
            "orchestrator",
            kefu_runtime::client::raw_channel(&config.orchestrator_url, deadline)?,
        )))
        .probe(Arc::new(DownstreamProbe::new(
            "ticket",
            kefu_runtime::client::raw_channel(&config.ticket_url, deadline)?,
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
