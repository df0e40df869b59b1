//! Production backends: replicas on one PostgreSQL database and one Redis. Any replica
//! serves any request, tenants never see each other's data, and readiness follows Redis.
mod common;

use common::dependencies::OwnRedis;
use common::{
    health_status, on_repository, Instance, RedisPrefix, Service, ServingStatus, StackBuilder,
};
use std::path::Path;
use std::time::{Duration, Instant};

use kefu_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use kefu_proto::v1::orchestrator_service_client::OrchestratorServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_test_db::TestDb;
use tonic::Code;

/// The repository's tenants plus a second tenant, `acme`, with the demo's intents.
fn two_tenants(dir: &Path) -> std::path::PathBuf {
    let root = common::repo_root().join("tenants");
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

/// Waits up to `within` for the server at `url` to report `wanted`.
async fn reaches(url: &str, wanted: ServingStatus, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if health_status(url).await == Some(wanted) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

type Orchestrator = OrchestratorServiceClient<tonic::transport::Channel>;

/// One message through an orchestrator replica.
async fn handle(replica: &mut Orchestrator, request: SendMessageRequest) -> SendMessageResponse {
    replica.handle_message(request).await.unwrap().into_inner()
}

/// A session of `tenant` as a replica reads it (for staff: no customer).
async fn session_in(
    replica: &mut Orchestrator,
    tenant: &str,
    session_id: &str,
) -> Result<GetSessionResponse, tonic::Status> {
    replica
        .get_session(GetSessionRequest {
            tenant_id: tenant.into(),
            customer_id: String::new(),
            session_id: session_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
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
    let stack = common::start(
        on_repository(StackBuilder::instances([
            Instance::new("ticket", Service::Ticket),
            Instance::new("sentiment", Service::Sentiment),
            Instance::new("router", Service::Router),
            Instance::new("knowledge-a", Service::Knowledge),
            Instance::new("knowledge-b", Service::Knowledge),
            Instance::new("orchestrator-a", Service::Orchestrator)
                .calls(Service::Knowledge, "knowledge-a"),
            Instance::new("orchestrator-b", Service::Orchestrator)
                .calls(Service::Knowledge, "knowledge-b"),
        ]))
        .tenants_dir(&two_tenants(dir.path()))
        .database_url(database_url)
        .redis_url("redis://127.0.0.1:6379")
        .env("KEFU_REDIS_PREFIX", prefix.0.clone())
        .serving(&["orchestrator-a", "orchestrator-b"]),
    )
    .await;
    let orchestrator = |replica: &str| OrchestratorServiceClient::connect(stack.url(replica));
    let (mut a, mut b) = (
        orchestrator("orchestrator-a").await.unwrap(),
        orchestrator("orchestrator-b").await.unwrap(),
    );

    // A session started on one replica continues on the other.
    let first = handle(
        &mut a,
        message("demo", "c-1", "", "How much does the Pro plan cost?"),
    )
    .await;
    let second = handle(
        &mut b,
        message("demo", "c-1", &first.session_id, "and the Business plan?"),
    )
    .await;
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(
        second.intent, "product_inquiry",
        "replica B saw the earlier turn"
    );
    for replica in [&mut a, &mut b] {
        let session = session_in(replica, "demo", &first.session_id)
            .await
            .unwrap();
        assert_eq!(session.turns.len(), 2);
    }

    // A document ingested through one knowledge replica is found through the other.
    let knowledge = |replica: &str| KnowledgeServiceClient::connect(stack.url(replica));
    let (mut knowledge_one, mut knowledge_two) = (
        knowledge("knowledge-a").await.unwrap(),
        knowledge("knowledge-b").await.unwrap(),
    );
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
    let complaint = handle(
        &mut a,
        message(
            "demo",
            "c-2",
            "",
            "Your service is terrible, I want to complain",
        ),
    )
    .await;
    assert!(!complaint.ticket_id.is_empty());
    let mut tickets = TicketServiceClient::connect(stack.url("ticket"))
        .await
        .unwrap();
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
    let session = session_in(&mut b, "acme", &first.session_id)
        .await
        .unwrap_err();
    assert_eq!(session.code(), Code::NotFound);
    let continued = handle(
        &mut b,
        message("acme", "c-1", &first.session_id, "and the Business plan?"),
    )
    .await;
    assert_ne!(continued.intent, "out_of_scope");
    let acme_session = session_in(&mut b, "acme", &first.session_id).await.unwrap();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_recovers_without_a_restart() {
    let (_db, database_url) = TestDb::postgres().await;
    let mut redis = OwnRedis::reserve();
    let dir = tempfile::tempdir().unwrap();
    // Lexical retrieval only (no model directory): this test is about readiness.
    let stack = common::start(
        on_repository(StackBuilder::instances([Instance::new(
            "knowledge",
            Service::Knowledge,
        )]))
        .models_dir(&dir.path().join("no-models"))
        .database_url(database_url)
        .redis_url(&redis.url())
        .serving(&[]),
    )
    .await;
    let knowledge = &stack.url("knowledge");
    use ServingStatus::{NotServing, Serving};

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        reaches(knowledge, NotServing, Duration::from_secs(1)).await,
        "NOT_SERVING while Redis is unreachable"
    );
    for (redis_up, wanted, what) in [
        (true, Serving, "SERVING once Redis is up, without a restart"),
        (false, NotServing, "NOT_SERVING again when Redis goes away"),
        (true, Serving, "and SERVING again when it returns"),
    ] {
        if redis_up {
            redis.restart();
        } else {
            redis.kill();
        }
        assert!(
            reaches(knowledge, wanted, Duration::from_secs(15)).await,
            "{what}"
        );
    }
}

/// Never lose a ticket: while the ticket service is unreachable a hand-off is told the
/// truth (no ticket number) and waits in the outbox; once the service is back the
/// ticket is opened exactly once and the session gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_while_the_ticket_service_is_down_gets_its_ticket_once_it_is_back() {
    let (_db, database_url) = TestDb::postgres().await;
    // Router and knowledge ready (the orchestrator itself stays NOT_SERVING without tickets).
    let mut stack = common::start(
        on_repository(StackBuilder::instances([
            Instance::new("sentiment", Service::Sentiment),
            Instance::new("router", Service::Router),
            Instance::new("knowledge", Service::Knowledge),
            Instance::new("orchestrator", Service::Orchestrator),
            Instance::new("ticket", Service::Ticket).held_back(),
        ]))
        .database_url(database_url)
        .serving(&["router", "knowledge"]),
    )
    .await;
    let mut client = OrchestratorServiceClient::connect(stack.url("orchestrator"))
        .await
        .unwrap();
    let mut request = message("demo", "outbox-1", "", "I want to speak to a human");
    request.message_id = "outbox-1-m1".into();
    let first = handle(&mut client, request.clone()).await;
    assert!(first.escalated);
    assert_eq!(first.handler, Handler::Queued as i32);
    assert!(first.ticket_id.is_empty(), "no ticket number is invented");
    assert!(
        !first.reply.is_empty() && !first.reply.chars().any(|c| c.is_ascii_digit()),
        "the customer is told, with no ticket number: {}",
        first.reply
    );
    // A retry of the same message while still down changes nothing.
    let again = handle(&mut client, request.clone()).await;
    assert_eq!(again.reply, first.reply);

    stack.start_held_back("ticket").unwrap();
    let started = Instant::now();
    let ticket_id = loop {
        let view = session_in(&mut client, "demo", &first.session_id)
            .await
            .unwrap();
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
    let tickets = TicketServiceClient::connect(stack.url("ticket"))
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
}
