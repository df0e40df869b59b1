//! The services a turn asks, and what a turn does without each: no router hands the
//! customer to a person, no sentiment reads the message as neutral, no knowledge hands
//! off a question it should answer, no customer profile opens the ticket without a tier.
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::sentiment_service_client::SentimentServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_runtime::retry::is_transient;
use kefu_runtime::GrpcChannel;
use tonic::Status;
use tracing::Instrument;

use crate::decision::Retrieval;

#[derive(Clone)]
pub struct Downstream {
    pub router: RouterServiceClient<GrpcChannel>,
    pub sentiment: SentimentServiceClient<GrpcChannel>,
    pub knowledge: KnowledgeServiceClient<GrpcChannel>,
    pub tickets: TicketServiceClient<GrpcChannel>,
}

impl Downstream {
    /// The router's reading of a message with its embedding; None when the router
    /// cannot be reached.
    pub async fn classify(
        &self,
        request: ClassifyRequest,
    ) -> Result<Option<ClassifyResponse>, Status> {
        match self.router.clone().classify(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if is_transient(&status) => {
                tracing::warn!(error = %status.message(), "router unavailable; handing off");
                Ok(None)
            }
            Err(status) => Err(status),
        }
    }

    /// Sentiment of a message; neutral when the sentiment service is unavailable.
    pub async fn analyze(
        &self,
        text: &str,
        embedding: Option<Embedding>,
    ) -> Result<AnalyzeResponse, Status> {
        let request = AnalyzeRequest {
            text: text.to_owned(),
            embedding,
        };
        match self.sentiment.clone().analyze(request).await {
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

    /// Searches the tenant's knowledge; `Unavailable` when the service cannot be reached
    /// (the customer is then handed to a human rather than failed).
    pub async fn retrieve(
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
}
