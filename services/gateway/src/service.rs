//! The public services' handlers. The access layer has admitted each call before it
//! gets here (`access`); a handler takes the caller's principal, checks and completes
//! the request (`validate`) and forwards it with the principal: conversations to the
//! orchestrator, tickets to the ticket service, the tenant's knowledge and intents to
//! the knowledge and router services, reports to the orchestrator (conversations) and the
//! knowledge service (gaps), channel deliveries to the channel service.
use std::sync::Arc;

use futures::StreamExt as _;
use kefu_proto::v1::admin_service_server::AdminService;
use kefu_proto::v1::channel_service_client::ChannelServiceClient;
use kefu_proto::v1::channel_service_server::ChannelService;
use kefu_proto::v1::conversation_service_server::ConversationService;
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::reports_service_server::ReportsService;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::ticket_service_server::TicketService;
use kefu_proto::v1::*;
use kefu_runtime::{GrpcChannel, Principal, Shutdown};
use tonic::{Request, Response, Status};

use crate::access::admitted;
use crate::validate::{Limits, Prepare};
use kefu_runtime::LiveTenants;

pub struct Gateway {
    pub tenants: Arc<LiveTenants>,
    pub limits: Limits,
    pub orchestrator: OrchestratorServiceClient<GrpcChannel>,
    pub tickets: TicketServiceClient<GrpcChannel>,
    pub knowledge: KnowledgeServiceClient<GrpcChannel>,
    pub router: RouterServiceClient<GrpcChannel>,
    pub channels: ChannelServiceClient<GrpcChannel>,
    pub shutdown: Shutdown,
}

#[derive(Clone)]
pub struct GatewayHandle(pub Arc<Gateway>);

impl Gateway {
    /// The admitted caller and their request, checked and completed for forwarding.
    fn prepared<T: Prepare>(&self, request: Request<T>) -> Result<(Principal, T), Status> {
        let (principal, mut message) = admitted(request)?;
        message.prepare(&self.limits)?;
        Ok((principal, message))
    }
}

/// Implements a public service whose RPCs forward to one call of an internal client,
/// plus the RPCs written out after it. The channel retries a call that did not reach
/// the service, for methods safe to repeat only (`kefu_runtime::resilience`); message
/// and reply ids are assigned in `prepare`, before it.
macro_rules! forwarding {
    (
        impl $service:ident {
            $($method:ident($request:ty) -> $response:ty => $client:ident.$call:ident;)*
        }
        $($own:tt)*
    ) => {
        #[tonic::async_trait]
        impl $service for GatewayHandle {
            $(async fn $method(
                &self,
                request: Request<$request>,
            ) -> Result<Response<$response>, Status> {
                let (principal, message) = self.0.prepared(request)?;
                self.0.$client.clone().$call(principal.request(message)).await
            })*
            $($own)*
        }
    };
}

forwarding! {
    impl ConversationService {
        send_message(SendMessageRequest) -> SendMessageResponse => orchestrator.handle_message;
        get_session(GetSessionRequest) -> GetSessionResponse => orchestrator.get_session;
        rate_conversation(RateConversationRequest) -> RateConversationResponse
            => orchestrator.rate_conversation;
    }

    type StreamEventsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<ConversationEvent, Status>> + Send + 'static>,
    >;

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let (principal, message) = self.0.prepared(request)?;
        let mut orchestrator = self.0.orchestrator.clone();
        let events = orchestrator.stream_events(principal.request(message)).await?;
        let events = events.into_inner();
        // On shutdown the stream ends; the client resumes with after_event_id elsewhere.
        let shutdown = self.0.shutdown.clone();
        let events = events.take_until(Box::pin(async move { shutdown.wait().await }));
        Ok(Response::new(Box::pin(events)))
    }
}

forwarding! {
    impl TicketService {
        create_ticket(CreateTicketRequest) -> CreateTicketResponse => tickets.create_ticket;
        get_ticket(GetTicketRequest) -> GetTicketResponse => tickets.get_ticket;
        list_tickets(ListTicketsRequest) -> ListTicketsResponse => tickets.list_tickets;
        next_in_queue(NextInQueueRequest) -> NextInQueueResponse => tickets.next_in_queue;
        transition_ticket(TransitionTicketRequest) -> TransitionTicketResponse
            => tickets.transition_ticket;
        get_customer(GetCustomerRequest) -> GetCustomerResponse => tickets.get_customer;
        upsert_customer(UpsertCustomerRequest) -> UpsertCustomerResponse
            => tickets.upsert_customer;
        reply_to_customer(ReplyToCustomerRequest) -> ReplyToCustomerResponse
            => tickets.reply_to_customer;
        get_conversation(GetConversationRequest) -> GetConversationResponse
            => tickets.get_conversation;
        raise_priority(RaisePriorityRequest) -> RaisePriorityResponse => tickets.raise_priority;
    }
}

forwarding! {
    impl AdminService {
        // Ingesting replaces documents by id: repeating it changes nothing.
        ingest_documents(IngestDocumentsRequest) -> IngestDocumentsResponse
            => knowledge.ingest_documents;
        delete_document(DeleteDocumentRequest) -> DeleteDocumentResponse
            => knowledge.delete_document;
        reindex(ReindexRequest) -> ReindexResponse => knowledge.reindex;
        list_dead_letters(ListDeadLettersRequest) -> ListDeadLettersResponse
            => orchestrator.list_dead_letters;
        retry_dead_letter(RetryDeadLetterRequest) -> RetryDeadLetterResponse
            => orchestrator.retry_dead_letter;
    }

    async fn reload_tenant(
        &self,
        request: Request<ReloadTenantRequest>,
    ) -> Result<Response<ReloadTenantResponse>, Status> {
        let (principal, message) = self.0.prepared(request)?;
        // The gateway's own copy first: key changes apply at once.
        if let Err(error) = self.0.tenants.reload() {
            return Err(Status::failed_precondition(format!(
                "the tenant files do not load: {error:#}"
            )));
        }
        self.0.router.clone().reload_tenant(principal.request(message)).await
    }
}

forwarding! {
    impl ReportsService {
        get_support_report(GetSupportReportRequest) -> GetSupportReportResponse
            => orchestrator.get_support_report;
        list_knowledge_gaps(ListKnowledgeGapsRequest) -> ListKnowledgeGapsResponse
            => knowledge.list_knowledge_gaps;
    }
}

forwarding! {
    impl ChannelService {
        list_deliveries(ListDeliveriesRequest) -> ListDeliveriesResponse
            => channels.list_deliveries;
    }
}
