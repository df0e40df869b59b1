//! Router service: classifies a message into one of the tenant's intents, learned
//! from the tenant's examples, with a calibrated confidence, the next alternatives,
//! out-of-scope detection, the tenant's route and urgency for the intent, and the cues of
//! the tenant's escalation policy found in the message.
//! Definitions live in the database (seeded from the tenant files); a reload through one
//! replica reaches the others over Redis, and classifications are cached per model.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kefu_nlp::embed::Embedder;
use kefu_nlp::intent::IntentModel;
use kefu_nlp::text::{detect_language, is_short_follow_up, Language as Lang};
use kefu_proto::v1::router_service_server::{RouterService, RouterServiceServer};
use kefu_proto::v1::{
    ClassifyRequest, ClassifyResponse, Embedding, IntentScore, Language, Priority,
    ReloadTenantRequest, ReloadTenantResponse, Route,
};
use kefu_runtime::{
    ContentArgs, DataArgs, ReadyFlag, RunningServer, ServerArgs, ServiceSpec, Shutdown,
};
use kefu_storage::{fingerprint, Cache, ContentStore, Database, Redis, SqlContentStore};
use kefu_tenant::{Tenant, Tenants, Urgency};

mod escalation;

use escalation::Escalation;
use prost::Message as _;
use tonic::{Request, Response, Status};

pub const SPEC: ServiceSpec = ServiceSpec::ROUTER;
const SERVICE: &str = "kefu-router";
pub const OUT_OF_SCOPE: &str = "out_of_scope";
const CLASSIFICATION_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Change-notification topic of intent definitions.
const INTENTS_TOPIC: &str = "intents";

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub content: ContentArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// A tenant's definitions with the model learned from them.
struct TenantModel {
    tenant: Arc<Tenant>,
    model: IntentModel,
    escalation: Escalation,
    /// Identifies what the model learned from and the tenant's definition: part of
    /// every cache key.
    fingerprint: String,
}

pub struct Router {
    tenants_dir: PathBuf,
    cache_dir: PathBuf,
    embedder: Option<Arc<Embedder>>,
    models: RwLock<HashMap<String, Arc<TenantModel>>>,
    definitions: Arc<dyn ContentStore>,
    cache: Cache,
    redis: Option<Redis>,
    /// Set once every tenant of the tenant files has its model.
    ready: ReadyFlag,
}

pub fn urgency_priority(urgency: Urgency) -> Priority {
    match urgency {
        Urgency::Low => Priority::Low,
        Urgency::Medium => Priority::Medium,
        Urgency::High => Priority::High,
        Urgency::Urgent => Priority::Urgent,
    }
}

fn route_of(route: kefu_tenant::Route) -> Route {
    match route {
        kefu_tenant::Route::Answer => Route::Answer,
        kefu_tenant::Route::Ticket => Route::Ticket,
        kefu_tenant::Route::Human => Route::Human,
    }
}

impl Router {
    /// Learns a tenant's intents, or loads what was learned from the same examples before.
    fn train(&self, tenant: Arc<Tenant>) -> anyhow::Result<(usize, usize)> {
        let examples = tenant.training_examples();
        let variant = if self.embedder.is_some() {
            "dense"
        } else {
            "sparse"
        };
        let fingerprint = format!("{}-{variant}", IntentModel::fingerprint(&examples));
        let cache_file = self
            .cache_dir
            .join(format!("{}-{fingerprint}.bin", tenant.id));
        let cached = std::fs::read(&cache_file)
            .ok()
            .and_then(|bytes| IntentModel::from_bytes(&bytes).ok());
        let model = match cached {
            Some(model) => {
                tracing::info!(tenant = %tenant.id, "intent model loaded from cache");
                model
            }
            None => {
                let started = std::time::Instant::now();
                let model = IntentModel::train(&examples, self.embedder.as_deref())?;
                tracing::info!(tenant = %tenant.id, examples = examples.len(), seconds = started.elapsed().as_secs_f32(), "intent model trained");
                if let Err(error) = write_atomically(&cache_file, &model.to_bytes()) {
                    tracing::warn!(%error, "could not cache the intent model");
                }
                model
            }
        };
        let counts = (tenant.intents.len(), examples.len());
        self.models.write().expect("model map lock").insert(
            tenant.id.clone(),
            Arc::new(TenantModel {
                escalation: Escalation::new(&tenant.escalation),
                fingerprint: kefu_storage::fingerprint(&[&fingerprint, &tenant.source]),
                tenant,
                model,
            }),
        );
        Ok(counts)
    }

    /// Learns a tenant from its stored definition.
    async fn train_stored(self: &Arc<Self>, tenant_id: &str) -> anyhow::Result<(usize, usize)> {
        let source = self
            .definitions
            .definition(tenant_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no definition stored for tenant {tenant_id:?}"))?;
        let tenant = Arc::new(Tenant::parse(&source)?);
        let router = self.clone();
        let counts = tokio::task::spawn_blocking(move || router.train(tenant)).await??;
        self.cache.forget_tenant(tenant_id);
        Ok(counts)
    }

    /// Stores the tenant files' definitions where they changed, then learns every tenant.
    async fn start_up(self: &Arc<Self>) -> anyhow::Result<()> {
        let tenants = Tenants::load_dir(&self.tenants_dir)?;
        for tenant in tenants.iter() {
            self.definitions
                .put_definition(&tenant.id, &tenant.source)
                .await?;
            self.train_stored(&tenant.id).await?;
        }
        Ok(())
    }

    fn model(&self, tenant_id: &str) -> Result<Arc<TenantModel>, Status> {
        self.models
            .read()
            .expect("model map lock")
            .get(tenant_id)
            .cloned()
            .ok_or_else(|| {
                // a replica still learning its tenants does not know yet whether the
                // tenant exists: the caller should try another replica, or later
                if self.ready.is_ready() {
                    Status::not_found(format!("unknown tenant {tenant_id:?}"))
                } else {
                    Status::unavailable("the intent models are still being learned")
                }
            })
    }

    /// Classifies a message; with `include_embedding`, the response carries the sentence
    /// embedding the model classified with, for the services after the router.
    async fn classify(
        &self,
        tenant_model: &TenantModel,
        text: &str,
        previous_intents: &[String],
        include_embedding: bool,
    ) -> Result<ClassifyResponse, Status> {
        let (prediction, embedding) = tenant_model
            .model
            .classify_and_embed_batched(text, self.embedder.as_deref())
            .await
            .map_err(|error| Status::internal(format!("classification failed: {error:#}")))?;
        let embedding = match (embedding, &self.embedder) {
            (Some(values), Some(embedder)) if include_embedding => Some(Embedding {
                model: embedder.model_id().to_owned(),
                values,
            }),
            _ => None,
        };
        let language = detect_language(text);
        let message = kefu_nlp::cues::Message::new(text);
        let mut intent = prediction.intent.clone();
        let mut confidence = prediction.confidence;
        let mut out_of_scope = prediction.out_of_scope;
        // A short follow-up that fits no intent continues the session's last intent.
        if out_of_scope && is_short_follow_up(text) {
            if let Some(previous) = previous_intents
                .last()
                .filter(|p| tenant_model.tenant.intent(p).is_some())
            {
                intent = previous.clone();
                out_of_scope = false;
                confidence = prediction.confidence.max(0.5);
            }
        }
        let definition = (!out_of_scope)
            .then(|| tenant_model.tenant.intent(&intent))
            .flatten();
        let (route, urgency, fixed_reply) = match definition {
            Some(definition) => {
                let reply = definition.reply.as_ref().and_then(|r| match language {
                    Lang::Zh => r.zh.clone().or_else(|| r.en.clone()),
                    Lang::En => r.en.clone().or_else(|| r.zh.clone()),
                });
                (
                    route_of(definition.route),
                    urgency_priority(definition.urgency),
                    reply.unwrap_or_default(),
                )
            }
            None => {
                intent = OUT_OF_SCOPE.to_owned();
                (Route::Answer, Priority::Low, String::new())
            }
        };
        let mut classification = ClassifyResponse {
            intent,
            confidence,
            alternatives: prediction
                .alternatives
                .iter()
                .map(|(intent, confidence)| IntentScore {
                    intent: intent.clone(),
                    confidence: *confidence,
                })
                .collect(),
            out_of_scope,
            route: route as i32,
            urgency: urgency as i32,
            language: match language {
                Lang::En => Language::En,
                Lang::Zh => Language::Zh,
            } as i32,
            fixed_reply,
            embedding,
            ..Default::default()
        };
        tenant_model.escalation.read(&message, &mut classification);
        Ok(classification)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(temporary, path)
}

#[derive(Clone)]
pub struct RouterHandle(Arc<Router>);

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

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    // Fail fast on unreadable tenant definitions, then learn them in the background:
    // the health status says NOT_SERVING until every tenant's model is ready.
    Tenants::load_dir(&config.content.tenants_dir)?;
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let router = Arc::new(Router {
        tenants_dir: config.content.tenants_dir.clone(),
        cache_dir: config.data.data_dir.join("router"),
        embedder: kefu_nlp::embed::load_optional(&config.content.models.models_dir),
        models: RwLock::new(HashMap::new()),
        definitions: Arc::new(SqlContentStore::new(db.clone())),
        cache: Cache::new(
            "classification",
            SERVICE,
            CLASSIFICATION_CACHE_TTL,
            redis.clone(),
        ),
        redis: redis.clone(),
        ready: ReadyFlag::new("intent models"),
    });
    let ready = router.ready.clone();
    let mut server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(RouterServiceServer::new(RouterHandle(router.clone())))
        .probe(Arc::new(ready.clone()))
        .probe(Arc::new(db.probe()));
    if let Some(redis) = &redis {
        server = server.probe(Arc::new(redis.probe()));
        let listener = router.clone();
        redis.on_change(INTENTS_TOPIC, move |tenant_id| {
            let router = listener.clone();
            async move {
                let (intents, examples) = router.train_stored(&tenant_id).await?;
                Ok(format!("{intents} intents, {examples} examples"))
            }
        });
    }
    let server = server.start(shutdown).await?;
    tokio::spawn(async move {
        match router.start_up().await {
            Ok(()) => ready.set(true),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "training the intent models failed")
            }
        }
    });
    Ok(server)
}
