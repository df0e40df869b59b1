//! One sentence embedding per turn: the router returns the embedding it classified with
//! when asked, and the knowledge service searches with a supplied query embedding exactly
//! as with its own. Router and knowledge run as processes on free ports and are called over
//! gRPC, as the orchestrator calls them.
mod common;

use std::path::{Path, PathBuf};

use common::{on_repository, Instance, Service, Stack, StackBuilder};
use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::router_service_client::RouterServiceClient;
use kefu_proto::v1::*;
use kefu_test_db::TestDb;
use sqlx::Connection as _;

const MODEL: &str = "all-MiniLM-L6-v2";

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

/// These instances on the repository's tenants and models (each with a cache of its
/// own), once every one is SERVING.
async fn start(instances: &[(&str, Service)]) -> Stack {
    let names: Vec<&str> = instances.iter().map(|(name, _)| *name).collect();
    common::start(
        on_repository(StackBuilder::instances(
            instances
                .iter()
                .map(|(name, service)| Instance::new(name, *service)),
        ))
        .serving(&names),
    )
    .await
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
    let stack = start(&[("router", Service::Router)]).await;
    let mut router = RouterServiceClient::connect(stack.url("router"))
        .await
        .unwrap();
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
    assert!(
        embedding.model.starts_with(&format!("{MODEL}+kefu-zh-")),
        "{}",
        embedding.model
    );
    assert_eq!(embedding.values.len(), 384 + 192);
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
    // Chinese is read by the Chinese encoder, just as well
    let question = vector("专业版一个月多少钱").await;
    let paraphrase = vector("专业版每个月的价格是多少").await;
    let unrelated = vector("摄像头亮红灯，连不上网").await;
    assert!(
        dot(&question, &paraphrase) > dot(&question, &unrelated) + 0.2,
        "the Chinese embedding is not the message's"
    );
}

/// The orchestrator passes the router's embedding of the message to knowledge: the reply
/// is the one knowledge gives when it embeds the query itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knowledge_answers_the_same_with_the_routers_embedding() {
    if !model_installed() {
        return;
    }
    // Two replicas, each with its own cache: one is given the embedding, one never is.
    let stack = start(&[
        ("router", Service::Router),
        ("supplied", Service::Knowledge),
        ("own", Service::Knowledge),
    ])
    .await;
    let mut router = RouterServiceClient::connect(stack.url("router"))
        .await
        .unwrap();
    let knowledge = |name: &str| KnowledgeServiceClient::connect(stack.url(name));
    let (mut supplied, mut own) = (
        knowledge("supplied").await.unwrap(),
        knowledge("own").await.unwrap(),
    );

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
}

/// Chunks stored with an earlier encoder's vectors (MiniLM's alone, 384 dimensions, as
/// kefu stored them before its Chinese encoder) are embedded again when a replica builds
/// its index: it starts, and answers as it did when it embedded them itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_of_an_earlier_encoder_are_embedded_again() {
    if !model_installed() {
        return;
    }
    let (_db, database_url) = TestDb::postgres().await;
    let mut stack = common::start(
        on_repository(StackBuilder::instances([Instance::new(
            "knowledge",
            Service::Knowledge,
        )]))
        .database_url(&database_url)
        .serving(&["knowledge"]),
    )
    .await;
    let queries = ["专业版一个月多少钱", "When will my refund arrive?"];
    let answers = |url: String| async move {
        let mut knowledge = KnowledgeServiceClient::connect(url).await.unwrap();
        let mut out = Vec::new();
        for query in queries {
            let reply = knowledge
                .search(SearchRequest {
                    tenant_id: "demo".into(),
                    query: query.into(),
                    top_k: 3,
                    query_embedding: None,
                })
                .await
                .unwrap()
                .into_inner();
            let ranking: Vec<String> = reply
                .sources
                .iter()
                .map(|s| s.document_id.clone())
                .collect();
            out.push((ranking, reply.answer, reply.confident));
        }
        out
    };
    let before = answers(stack.url("knowledge")).await;
    assert!(before.iter().all(|(ranking, _, _)| !ranking.is_empty()));

    stack.kill("knowledge");
    let mut db = sqlx::PgConnection::connect(&database_url).await.unwrap();
    let earlier =
        sqlx::query("UPDATE document_chunks SET vector = $1, vector_model = 'all-MiniLM-L6-v2'")
            .bind(vec![0u8; 384 * 4])
            .execute(&mut db)
            .await
            .unwrap();
    assert!(earlier.rows_affected() > 0);
    stack.restart("knowledge").unwrap();
    stack.wait_until_serving("knowledge").await.unwrap();
    assert_eq!(answers(stack.url("knowledge")).await, before);
}
