//! Knowledge service: a hybrid (BM25 + sentence embeddings) index per tenant over its
//! documents, answering with the best passages and their sources. Documents, chunks and
//! vectors live in the database, so every replica builds the same index without
//! recomputing; a change made through one replica reaches the others over Redis. The
//! questions it could not answer are grouped into knowledge gaps (`gaps`).
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kefu_proto::v1::knowledge_service_server::KnowledgeServiceServer;
use kefu_runtime::{ReadyFlag, RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Cache, Database, Redis, SqlContentStore, SqlGaps};
use kefu_tenant::Tenants;

mod gaps;
mod index;
mod service;

pub use kefu_runtime::ContentServiceArgs as Config;

use index::Knowledge;
use service::KnowledgeHandle;

pub const SPEC: ServiceSpec = ServiceSpec::KNOWLEDGE;
const SERVICE: &str = "kefu-knowledge";
const RETRIEVAL_CACHE_TTL: Duration = Duration::from_secs(600);
/// How often each tenant's new unanswered questions are grouped (listing them does too).
const GAP_GROUPING_INTERVAL: Duration = Duration::from_secs(30);
/// Change-notification topic of documents.
const DOCUMENTS_TOPIC: &str = "documents";

pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<RunningServer> {
    let known_tenants = Tenants::load_dir(&config.content.tenants_dir)?;
    let db = Database::connect(&config.data.database_url()).await?;
    let redis = Redis::from_args(&config.data)?;
    let knowledge = Arc::new(Knowledge {
        embedder: kefu_nlp::embed::load_optional(&config.content.models.models_dir),
        store: Arc::new(SqlContentStore::new(db.clone())),
        gaps: SqlGaps::new(db.clone()),
        known_tenants,
        indexes: RwLock::new(HashMap::new()),
        cache: Cache::new("retrieval", SERVICE, RETRIEVAL_CACHE_TTL, redis.clone()),
        redis: redis.clone(),
        index_change: tokio::sync::Semaphore::new(1),
    });
    let ready = ReadyFlag::new("knowledge index");
    let mut server = kefu_runtime::Server::new(SPEC, config.server)
        .add_service(KnowledgeServiceServer::new(KnowledgeHandle(
            knowledge.clone(),
        )))
        .probe(Arc::new(ready.clone()))
        .probe(Arc::new(db.probe()));
    if let Some(redis) = &redis {
        server = server.probe(Arc::new(redis.probe()));
        let listener = knowledge.clone();
        redis.on_change(DOCUMENTS_TOPIC, move |tenant_id| {
            let knowledge = listener.clone();
            async move {
                if knowledge.known_tenants.get(&tenant_id).is_none() {
                    return Ok("not a tenant of this deployment".to_owned());
                }
                let (documents, chunks) = knowledge
                    .load(&tenant_id)
                    .await
                    .map_err(|status| anyhow::anyhow!(status.message().to_owned()))?;
                Ok(format!("{documents} documents, {chunks} chunks"))
            }
        });
    }
    let server = server.start(shutdown.clone()).await?;
    let grouper = knowledge.clone();
    shutdown.every(GAP_GROUPING_INTERVAL, move || {
        let knowledge = grouper.clone();
        async move { knowledge.refresh_all_gaps().await }
    });
    ready.set_once_done(
        async move {
            knowledge
                .start_up()
                .await
                .map_err(|status| anyhow::anyhow!(status.message().to_owned()))
        },
        "building the knowledge indexes failed",
    );
    Ok(server)
}
