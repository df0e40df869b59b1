//! Router service: classifies a message into one of the tenant's intents, learned
//! from the tenant's examples, with a calibrated confidence, the next alternatives,
//! out-of-scope detection, the tenant's route and urgency for the intent, and the cues of
//! the tenant's escalation policy found in the message.
//! Definitions live in the database (seeded from the tenant files); a reload through one
//! replica reaches the others over Redis, and classifications are cached per model.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kefu_proto::v1::router_service_server::RouterServiceServer;
use kefu_runtime::{ReadyFlag, RunningServer, ServiceSpec, Shutdown};
use kefu_storage::{Cache, Database, Redis, SqlContentStore};
use kefu_tenant::Tenants;

mod escalation;
mod model;
mod service;

pub use kefu_runtime::ContentServiceArgs as Config;

use model::Router;
use service::RouterHandle;

pub const SPEC: ServiceSpec = ServiceSpec::ROUTER;
const SERVICE: &str = "kefu-router";
pub const OUT_OF_SCOPE: &str = "out_of_scope";
const CLASSIFICATION_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Change-notification topic of intent definitions.
const INTENTS_TOPIC: &str = "intents";

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
    ready.set_once_done(
        async move { router.start_up().await },
        "training the intent models failed",
    );
    Ok(server)
}
