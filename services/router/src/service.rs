//! The router's gRPC handlers: validate, look up the tenant's model, answer from the
//! cache or classify.
use std::sync::Arc;

use kefu_proto::v1::router_service_server::RouterService;
use kefu_proto::v1::{
    ClassifyRequest, ClassifyResponse, ReloadTenantRequest, ReloadTenantResponse,
};
use kefu_storage::fingerprint;
use kefu_tenant::Tenants;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::model::Router;
use crate::{INTENTS_TOPIC, SERVICE};

#[derive(Clone)]
pub struct RouterHandle(pub(crate) Arc<Router>);

#[tonic::async_trait]
impl RouterService for RouterHandle {
    async fn classify(
        &self,
        request: Request<ClassifyRequest>,
    ) -> Result<Response<ClassifyResponse>, Status> {
        let request = request.into_inner();
        if request.text.trim().is_empty() {
            return Err(Status::invalid_argument("text must not be empty"));
        }
        let tenant_model = self.0.model(&request.tenant_id)?;
        // Replies with and without the embedding are cached apart.
        let variant = if request.include_embedding {
            "embedding"
        } else {
            ""
        };
        let key = fingerprint(&[
            &tenant_model.fingerprint,
            &request.previous_intents.join(","),
            &request.text,
            variant,
        ]);
        let cached = self
            .0
            .cache
            .get(&request.tenant_id, &key)
            .await
            .and_then(|bytes| ClassifyResponse::decode(bytes.as_slice()).ok());
        let response = match cached {
            Some(response) => response,
            None => {
                // The encoder runs on its own compute threads; the rest of the
                // classification (sparse features, a linear layer) is brief.
                let response = self
                    .0
                    .classify(
                        &tenant_model,
                        &request.text,
                        &request.previous_intents,
                        request.include_embedding,
                    )
                    .await?;
                self.0
                    .cache
                    .put(&tenant_model.tenant.id, &key, response.encode_to_vec())
                    .await;
                response
            }
        };
        metrics::counter!("kefu_intents_total", "service" => SERVICE, "tenant" => tenant_model.tenant.id.clone(), "intent" => response.intent.clone()).increment(1);
        Ok(Response::new(response))
    }

    async fn reload_tenant(
        &self,
        request: Request<ReloadTenantRequest>,
    ) -> Result<Response<ReloadTenantResponse>, Status> {
        let tenant_id = request.into_inner().tenant_id;
        let tenants = Tenants::load_dir(&self.0.tenants_dir)
            .map_err(|error| Status::failed_precondition(format!("{error:#}")))?;
        let tenant = tenants
            .get(&tenant_id)
            .ok_or_else(|| Status::not_found(format!("unknown tenant {tenant_id:?}")))?;
        self.0
            .definitions
            .put_definition(&tenant.id, &tenant.source)
            .await?;
        let (intents, examples) = self
            .0
            .train_stored(&tenant_id)
            .await
            .map_err(|error| Status::internal(format!("{error:#}")))?;
        if let Some(redis) = &self.0.redis {
            redis.announce(INTENTS_TOPIC, &tenant_id).await;
        }
        Ok(Response::new(ReloadTenantResponse {
            intents: intents as i32,
            examples: examples as i32,
        }))
    }
}
