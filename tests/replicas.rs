//! Production backends: replicas on one PostgreSQL database and one Redis. Any replica
//! serves any request, tenants never see each other's data, and readiness follows Redis.
mod common;

use common::{free_ports, RedisPrefix, ServingStatus};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_runtime::{ClientArgs, ContentArgs, DataArgs, ModelArgs, ServerArgs, Shutdown};
use kefu_storage::testing::TestDb;
use tonic::Code;

fn local(port: u16) -> ServerArgs {
    ServerArgs::local(port, 0)
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The repository's tenants plus a second tenant, `acme`, with the demo's intents.
fn two_tenants(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants");
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(tenants.join("acme")).unwrap();
    let demo = std::fs::read_to_string(root.join("demo/tenant.toml")).unwrap();
    std::fs::write(
        tenants.join("acme/tenant.toml"),
        demo.replacen("id = \"demo\"", "id = \"acme\"", 1),
    )
    .unwrap();
    std::os::unix::fs::symlink(root.join("demo"), tenants.join("demo")).unwrap();
    tenants
}

/// Waits up to `within` for the server on `port` to report `wanted`.
async fn reaches(port: u16, wanted: ServingStatus, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if common::health_status(&url(port)).await == Some(wanted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn serving(port: u16, within: Duration) -> bool {
    reaches(port, ServingStatus::Serving, within).await
}

async fn not_serving(port: u16, within: Duration) -> bool {
    reaches(port, ServingStatus::NotServing, within).await
}

fn message(tenant: &str, customer: &str, session: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        tenant_id: tenant.into(),
        customer_id: customer.into(),
        session_id: session.into(),
        channel: kefu_proto::v1::Channel::Web as i32,
        text: text.into(),
        message_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_sessions_and_documents_and_tenants_stay_apart() {
    let (_db, database_url) = TestDb::postgres().await;
    let prefix = RedisPrefix::new();
    let dir = tempfile::tempdir().unwrap();
    let data = DataArgs {
        data_dir: dir.path().join("data"),
        database_url: Some(database_url),
        redis_url: Some("redis://127.0.0.1:6379".into()),
        redis_prefix: prefix.0.clone(),
    };
    let content = ContentArgs {
        tenants_dir: two_tenants(dir.path()),
        models: ModelArgs {
            models_dir: std::env::var("KEFU_MODELS_DIR")
                .map(Into::into)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models")),
        },
    };
    let shutdown = Shutdown::new();
    let [ticket, sentiment, router, knowledge_a, knowledge_b, orchestrator_a, orchestrator_b] =
        free_ports();
    kefu_ticket::start(
        kefu_ticket::Config {
            server: local(ticket),
            data: data.clone(),
            sla: Default::default(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    kefu_sentiment::start(
        kefu_sentiment::Config {
            server: local(sentiment),
            models: content.models.clone(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    kefu_router::start(
        kefu_router::Config {
            server: local(router),
            content: content.clone(),
            data: data.clone(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    for port in [knowledge_a, knowledge_b] {
        kefu_knowledge::start(
            kefu_knowledge::Config {
                server: local(port),
                content: content.clone(),
                data: data.clone(),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
    }
    for (port, knowledge) in [(orchestrator_a, knowledge_a), (orchestrator_b, knowledge_b)] {
        let peers = kefu_orchestrator::Peers {
            router_url: url(router),
            sentiment_url: url(sentiment),
            knowledge_url: url(knowledge),
            ticket_url: url(ticket),
        };
        kefu_orchestrator::start(
            kefu_orchestrator::Config {
                server: local(port),
                clients: ClientArgs::default(),
                data: data.clone(),
                peers,
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
    }
    for port in [orchestrator_a, orchestrator_b] {
        assert!(
            serving(port, Duration::from_secs(300)).await,
            "orchestrator on {port} not serving"
        );
    }
    let mut a = OrchestratorServiceClient::connect(url(orchestrator_a))
        .await
        .unwrap();
    let mut b = OrchestratorServiceClient::connect(url(orchestrator_b))
        .await
        .unwrap();

    // A session started on one replica continues on the other.
    let first = a
        .handle_message(message(
            "demo",
            "c-1",
            "",
            "How much does the Pro plan cost?",
        ))
        .await
        .unwrap()
        .into_inner();
    let second = b
        .handle_message(message(
            "demo",
            "c-1",
            &first.session_id,
            "and the Business plan?",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(
        second.intent, "product_inquiry",
        "replica B saw the earlier turn"
    );
    for replica in [&mut a, &mut b] {
        let session = replica
            .get_session(GetSessionRequest {
                tenant_id: "demo".into(),
                customer_id: String::new(),
                session_id: first.session_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(session.turns.len(), 2);
    }

    // A document ingested through one knowledge replica is found through the other.
    let mut knowledge_one = KnowledgeServiceClient::connect(url(knowledge_a))
        .await
        .unwrap();
    let mut knowledge_two = KnowledgeServiceClient::connect(url(knowledge_b))
        .await
        .unwrap();
    let document = Document {
        document_id: "extended-warranty.en".into(),
        title: "Extended warranty".into(),
        text: "# Extended warranty\n\nThe extended warranty adds two more years of cover for any Cloud Cam for $29, bought within 60 days of delivery.".into(),
    };
    knowledge_one
        .ingest_documents(IngestDocumentsRequest {
            tenant_id: "demo".into(),
            documents: vec![document],
        })
        .await
        .unwrap();
    let query = |tenant: &str| SearchRequest {
        tenant_id: tenant.into(),
        query: "how much is the extended warranty for the camera".into(),
        top_k: 3,
        query_embedding: None,
    };
    let started = Instant::now();
    loop {
        let found = knowledge_two
            .search(query("demo"))
            .await
            .unwrap()
            .into_inner();
        if found
            .sources
            .first()
            .is_some_and(|s| s.document_id == "extended-warranty.en")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica B did not pick up the new document"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Tenants never see each other's tickets, sessions or documents.
    let complaint = a
        .handle_message(message(
            "demo",
            "c-2",
            "",
            "Your service is terrible, I want to complain",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!complaint.ticket_id.is_empty());
    let mut tickets = TicketServiceClient::connect(url(ticket)).await.unwrap();
    let foreign = tickets
        .get_ticket(GetTicketRequest {
            tenant_id: "acme".into(),
            ticket_id: complaint.ticket_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    let listed = tickets
        .list_tickets(ListTicketsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tickets.is_empty());
    let queue = tickets
        .next_in_queue(NextInQueueRequest {
            tenant_id: "acme".into(),
            assignee: String::new(),
            take: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(queue.ticket.is_none());
    let transition = TransitionTicketRequest {
        tenant_id: "acme".into(),
        ticket_id: complaint.ticket_id.clone(),
        to_status: TicketStatus::Closed as i32,
        actor: "intruder".into(),
        comment: String::new(),
    };
    assert_eq!(
        tickets
            .transition_ticket(transition)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let session = b
        .get_session(GetSessionRequest {
            tenant_id: "acme".into(),
            customer_id: String::new(),
            session_id: first.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(session.code(), Code::NotFound);
    let continued = b
        .handle_message(message(
            "acme",
            "c-1",
            &first.session_id,
            "and the Business plan?",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(continued.intent, "out_of_scope");
    let acme_session = b
        .get_session(GetSessionRequest {
            tenant_id: "acme".into(),
            customer_id: String::new(),
            session_id: first.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        acme_session.turns.len(),
        1,
        "the same session id in another tenant is another session"
    );
    let acme_search = knowledge_two
        .search(query("acme"))
        .await
        .unwrap()
        .into_inner();
    assert!(acme_search
        .sources
        .iter()
        .all(|s| s.document_id != "extended-warranty.en"));
    let acme_delete = knowledge_two
        .delete_document(DeleteDocumentRequest {
            tenant_id: "acme".into(),
            document_id: "extended-warranty.en".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!acme_delete.deleted);

    shutdown.trigger();
}

/// A Redis server of this test's own on a free port, so it can be stopped and started.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_recovers_without_a_restart() {
    let (_db, database_url) = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let [redis_port, port] = free_ports();
    let mut redis = OwnRedis {
        port: redis_port,
        child: None,
    };
    let data = DataArgs {
        data_dir: dir.path().join("data"),
        database_url: Some(database_url),
        redis_url: Some(format!("redis://127.0.0.1:{}", redis.port)),
        redis_prefix: "kefu:".into(),
    };
    // Lexical retrieval only (no model directory): this test is about readiness.
    let content = ContentArgs {
        tenants_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants"),
        models: ModelArgs {
            models_dir: dir.path().join("no-models"),
        },
    };
    let shutdown = Shutdown::new();
    kefu_knowledge::start(
        kefu_knowledge::Config {
            server: local(port),
            content,
            data,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        not_serving(port, Duration::from_secs(1)).await,
        "NOT_SERVING while Redis is unreachable"
    );
    redis.start();
    assert!(
        serving(port, Duration::from_secs(15)).await,
        "SERVING once Redis is up, without a restart"
    );
    redis.stop();
    assert!(
        not_serving(port, Duration::from_secs(15)).await,
        "NOT_SERVING again when Redis goes away"
    );
    redis.start();
    assert!(
        serving(port, Duration::from_secs(15)).await,
        "and SERVING again when it returns"
    );
    shutdown.trigger();
}

/// Never lose a ticket: while the ticket service is unreachable a hand-off is told the
/// truth (no ticket number) and waits in the outbox; once the service is back the
/// ticket is opened exactly once and the session gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_while_the_ticket_service_is_down_gets_its_ticket_once_it_is_back() {
    let (_db, database_url) = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let data = DataArgs {
        data_dir: dir.path().join("data"),
        database_url: Some(database_url),
        redis_url: None,
        redis_prefix: "kefu:".into(),
    };
    let content = ContentArgs {
        tenants_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants"),
        models: ModelArgs {
            models_dir: std::env::var("KEFU_MODELS_DIR")
                .map(Into::into)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("models")),
        },
    };
    let shutdown = Shutdown::new();
    let [ticket, sentiment, router, knowledge, orchestrator] = free_ports();
    kefu_sentiment::start(
        kefu_sentiment::Config {
            server: local(sentiment),
            models: content.models.clone(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    kefu_router::start(
        kefu_router::Config {
            server: local(router),
            content: content.clone(),
            data: data.clone(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    kefu_knowledge::start(
        kefu_knowledge::Config {
            server: local(knowledge),
            content: content.clone(),
            data: data.clone(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    kefu_orchestrator::start(
        kefu_orchestrator::Config {
            server: local(orchestrator),
            clients: ClientArgs::default(),
            data: data.clone(),
            peers: kefu_orchestrator::Peers {
                router_url: url(router),
                sentiment_url: url(sentiment),
                knowledge_url: url(knowledge),
                ticket_url: url(ticket),
            },
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    // Router and knowledge ready (the orchestrator itself stays NOT_SERVING without tickets).
    for port in [router, knowledge] {
        assert!(
            serving(port, Duration::from_secs(300)).await,
            "{port} not serving"
        );
    }
    let mut client = OrchestratorServiceClient::connect(url(orchestrator))
        .await
        .unwrap();
    let mut request = message("demo", "outbox-1", "", "I want to speak to a human");
    request.message_id = "outbox-1-m1".into();
    let first = client
        .handle_message(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.escalated);
    assert_eq!(first.handler, Handler::Queued as i32);
    assert!(first.ticket_id.is_empty(), "no ticket number is invented");
    assert!(
        !first.reply.is_empty() && !first.reply.chars().any(|c| c.is_ascii_digit()),
        "the customer is told, with no ticket number: {}",
        first.reply
    );
    // A retry of the same message while still down changes nothing.
    let again = client
        .handle_message(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.reply, first.reply);

    kefu_ticket::start(
        kefu_ticket::Config {
            server: local(ticket),
            data: data.clone(),
            sla: Default::default(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let session = |client: &mut OrchestratorServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let id = first.session_id.clone();
        async move {
            client
                .get_session(GetSessionRequest {
                    tenant_id: "demo".into(),
                    customer_id: String::new(),
                    session_id: id,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let started = Instant::now();
    let ticket_id = loop {
        let view = session(&mut client).await;
        if !view.ticket_id.is_empty() {
            assert_eq!(view.handler, Handler::Queued as i32);
            break view.ticket_id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the outbox never delivered"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Exactly once, also after more rounds of the outbox.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tickets = TicketServiceClient::connect(url(ticket))
        .await
        .unwrap()
        .list_tickets(ListTicketsRequest {
            tenant_id: "demo".into(),
            customer_id: "outbox-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets;
    assert_eq!(
        tickets
            .iter()
            .map(|t| t.ticket_id.clone())
            .collect::<Vec<_>>(),
        [ticket_id]
    );
    shutdown.trigger();
}
