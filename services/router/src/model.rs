//! The intent models of the tenants: learned from each tenant's stored definition (or
//! loaded from a file learned from the same examples before), and the classification of
//! one message with them.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kefu_nlp::embed::Embedder;
use kefu_nlp::intent::IntentModel;
use kefu_nlp::text::{detect_language, is_short_follow_up, Language as Lang};
use kefu_proto::v1::{ClassifyResponse, Embedding, IntentScore, Language, Priority, Route};
use kefu_runtime::ReadyFlag;
use kefu_storage::{Cache, ContentStore, Redis};
use kefu_tenant::{Tenant, Tenants, Urgency};
use tonic::Status;

use crate::escalation::Escalation;
use crate::OUT_OF_SCOPE;

/// A tenant's definitions with the model learned from them.
pub(crate) struct TenantModel {
    pub(crate) tenant: Arc<Tenant>,
    model: IntentModel,
    escalation: Escalation,
    /// Identifies what the model learned from and the tenant's definition: part of
    /// every cache key.
    pub(crate) fingerprint: String,
}

pub(crate) struct Router {
    pub(crate) tenants_dir: PathBuf,
    pub(crate) cache_dir: PathBuf,
    pub(crate) embedder: Option<Arc<Embedder>>,
    pub(crate) models: RwLock<HashMap<String, Arc<TenantModel>>>,
    pub(crate) definitions: Arc<dyn ContentStore>,
    pub(crate) cache: Cache,
    pub(crate) redis: Option<Redis>,
    /// Set once every tenant of the tenant files has its model.
    pub(crate) ready: ReadyFlag,
}

fn urgency_priority(urgency: Urgency) -> Priority {
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
        kefu_tenant::Route::HumanIfNegative => Route::HumanIfNegative,
    }
}

impl Router {
    /// Learns a tenant's intents, or loads what was learned from the same examples before.
    fn train(&self, tenant: Arc<Tenant>) -> anyhow::Result<(usize, usize)> {
        let examples = tenant.training_examples();
        // a model learned with other encoders (or none) is not this one's
        let variant = self.embedder.as_ref().map_or("sparse", |e| e.model_id());
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
    pub(crate) async fn train_stored(
        self: &Arc<Self>,
        tenant_id: &str,
    ) -> anyhow::Result<(usize, usize)> {
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
    pub(crate) async fn start_up(self: &Arc<Self>) -> anyhow::Result<()> {
        let tenants = Tenants::load_dir(&self.tenants_dir)?;
        for tenant in tenants.iter() {
            self.definitions
                .put_definition(&tenant.id, &tenant.source)
                .await?;
            self.train_stored(&tenant.id).await?;
        }
        Ok(())
    }

    pub(crate) fn model(&self, tenant_id: &str) -> Result<Arc<TenantModel>, Status> {
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
    pub(crate) async fn classify(
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
            language: Language::from(language) as i32,
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
