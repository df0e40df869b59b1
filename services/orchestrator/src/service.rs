//! The gRPC face of the orchestrator: decode, hand to the workflow, encode. Called only
//! by the gateway, which has authenticated the caller and sends its principal along.
use std::sync::Arc;

use kefu_proto::v1::orchestrator_service_server::OrchestratorService;
use kefu_proto::v1::*;
use kefu_runtime::Principal;
use tonic::{Request, Response, Status};

use crate::events;
use crate::workflow::Orchestrator;

#[derive(Clone)]
pub struct OrchestratorHandle(pub Arc<Orchestrator>);

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

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        self.0
            .opener
            .list_dead_letters(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn retry_dead_letter(
        &self,
        request: Request<RetryDeadLetterRequest>,
    ) -> Result<Response<RetryDeadLetterResponse>, Status> {
        self.0
            .opener
            .retry_dead_letter(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_support_report(
        &self,
        request: Request<GetSupportReportRequest>,
    ) -> Result<Response<GetSupportReportResponse>, Status> {
        let request = request.into_inner();
        let scope = crate::reports::scope_of(&request, kefu_storage::now_millis())?;
        let rows = self.0.reports.rows(&scope).await?;
        Ok(Response::new(crate::reports::report(&scope, &rows)))
    }
}
