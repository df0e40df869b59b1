//! One sentence embedding per turn: the router returns the embedding it classified with
//! when asked, and the knowledge service searches with a supplied query embedding exactly
//! as with its own. Router and knowledge run as servers on free ports and are called over
//! gRPC, as the orchestrator calls them.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_ports, ServingStatus};
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::*;
use kefu_runtime::{ContentArgs, DataArgs, ModelArgs, ServerArgs, Shutdown};

const MODEL: &str = "all-MiniLM-L6-v2";

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn models_dir() -> PathBuf {
    std::env::var("KEFU_MODELS_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// True when the encoder is installed; false (the test is skipped) only when it is missing
/// and CI is unset: on CI it must be there.
fn model_installed() -> bool {
    let dir = models_dir();
    if dir.join(MODEL).join("model.safetensors").is_file() || std::env::var_os("CI").is_some() {
        return true;
    }
    eprintln!(
        "skipping: no model in {} (run `make models`)",
        dir.display()
    );
    false
}

fn content() -> ContentArgs {
    ContentArgs {
        tenants_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants"),
        models: ModelArgs {
            models_dir: models_dir(),
        },
    }
}

/// Embedded state (SQLite) in a temporary directory.
fn data(dir: &Path) -> DataArgs {
    DataArgs {
        data_dir: dir.to_path_buf(),
        database_url: None,
        redis_url: None,
        redis_prefix: "kefu:".into(),
    }
}

/// Waits until the server on `port` is SERVING (its models or indexes are ready).
async fn wait_serving(port: u16) {
    let started = Instant::now();
    while common::health_status(&url(port)).await != Some(ServingStatus::Serving) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the server on port {port} did not become SERVING"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_router(
    port: u16,
    dir: &Path,
    shutdown: &Shutdown,
) -> RouterServiceClient<tonic::transport::Channel> {
    kefu_router::start(
        kefu_router::Config {
            server: ServerArgs::local(port, 0),
            content: content(),
            data: data(dir),
        },
        shutdown.clone(),
    )
    .await
    .expect("the router starts");
    wait_serving(port).await;
    RouterServiceClient::connect(url(port)).await.unwrap()
}

async fn start_knowledge(
    port: u16,
    dir: &Path,
    shutdown: &Shutdown,
) -> KnowledgeServiceClient<tonic::transport::Channel> {
    kefu_knowledge::start(
        kefu_knowledge::Config {
            server: ServerArgs::local(port, 0),
            content: content(),
            data: data(dir),
        },
        shutdown.clone(),
    )
    .await
    .expect("the knowledge service starts");
    wait_serving(port).await;
    KnowledgeServiceClient::connect(url(port)).await.unwrap()
}

fn classify(text: &str, include_embedding: bool) -> ClassifyRequest {
    ClassifyRequest {
        tenant_id: "demo".into(),
        text: text.into(),
        previous_intents: Vec::new(),
        include_embedding,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_router_returns_its_embedding_only_when_asked() {
    if !model_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let [port] = free_ports();
    let mut router = start_router(port, dir.path(), &shutdown).await;
    let text = "How much does the Pro plan cost?";

    let plain = router
        .classify(classify(text, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.embedding, None, "not asked for, not sent");

    // Asked for after the plain reply was cached: the cached reply does not stand in.
    let with = router
        .classify(classify(text, true))
        .await
        .unwrap()
        .into_inner();
    let embedding = with.embedding.clone().expect("asked for, sent");
    assert_eq!(embedding.model, MODEL);
    assert_eq!(embedding.values.len(), 384);
    let norm = embedding.values.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    assert_eq!(
        ClassifyResponse {
            embedding: None,
            ..with.clone()
        },
        plain,
        "the classification itself does not change"
    );

    // A cached reply with the embedding is not handed to a caller that did not ask.
    let again = router
        .classify(classify(text, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.embedding, None);
    let cached = router
        .classify(classify(text, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached, with);

    // The vector is the message's: a paraphrase is close, an unrelated message is not.
    let vector = |text: &'static str| {
        let mut router = router.clone();
        async move {
            router
                .classify(classify(text, true))
                .await
                .unwrap()
                .into_inner()
                .embedding
                .unwrap()
                .values
        }
    };
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let paraphrase = vector("What is the price of the Pro plan?").await;
    let unrelated = vector("My camera shows a red light and will not connect").await;
    assert!(
        dot(&embedding.values, &paraphrase) > dot(&embedding.values, &unrelated) + 0.2,
        "the embedding is not the message's"
    );
    shutdown.trigger();
}

/// The orchestrator passes the router's embedding of the message to knowledge: the reply
/// is the one knowledge gives when it embeds the query itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knowledge_answers_the_same_with_the_routers_embedding() {
    if !model_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let [router_port, supplied_port, own_port] = free_ports();
    let mut router = start_router(router_port, dir.path(), &shutdown).await;
    // Two replicas, each with its own cache: one is given the embedding, one never is.
    let mut supplied = start_knowledge(supplied_port, dir.path(), &shutdown).await;
    let mut own = start_knowledge(own_port, dir.path(), &shutdown).await;

    for query in [
        "How much does the Pro plan cost?",
        "I forgot my password and cannot sign in",
        "When will my refund arrive?",
        "专业版一个月多少钱",
        "Do you ship to Canada?",
    ] {
        let embedding = router
            .classify(classify(query, true))
            .await
            .unwrap()
            .into_inner()
            .embedding;
        assert!(embedding.is_some(), "{query}");
        let search = |query_embedding: Option<Embedding>| SearchRequest {
            tenant_id: "demo".into(),
            query: query.into(),
            top_k: 5,
            query_embedding,
        };
        let with = supplied
            .search(search(embedding))
            .await
            .unwrap()
            .into_inner();
        let without = own.search(search(None)).await.unwrap().into_inner();
        let ranking = |r: &SearchResponse| -> Vec<String> {
            r.sources.iter().map(|s| s.document_id.clone()).collect()
        };
        assert!(!with.sources.is_empty(), "{query}");
        assert_eq!(ranking(&with), ranking(&without), "{query}");
        for (a, b) in with.sources.iter().zip(&without.sources) {
            assert!((a.score - b.score).abs() < 1e-4, "{query}: {a:?} {b:?}");
        }
        assert_eq!(with.answer, without.answer, "{query}");
        assert_eq!(with.confident, without.confident, "{query}");
    }
    shutdown.trigger();
}
