//! The ticket outbox cannot be jammed: the six services as separate processes on a
//! PostgreSQL database of the test's own; more entries than one claim takes that can
//! never succeed (their ticket request is unreadable) are planted ahead of everything,
//! the ticket service is killed while customers ask for a person, and brought back.
//! Every hand-off still gets exactly one ticket, the planted entries end in the dead
//! letter after their attempts, an admin lists them through the gateway (an agent may
//! not) and puts one back, and the orchestrator's metrics show the dead letters.
//!
//! An orchestrator that dies mid-attempt leaves its entry for no longer than the
//! customer's call.
//!
//! `cargo test --release --test outbox -- --nocapture`
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    metrics_text, on_repository, ApiKey, Service, Stack, StackBuilder, DEMO_ADMIN_KEY,
    DEMO_AGENT_KEY,
};
use kefu_proto::v1::admin_service_client::AdminServiceClient;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::Channel as MessageChannel;
use kefu_proto::v1::*;
use kefu_storage::Database;
use kefu_test_db::TestDb;
use tonic::transport::Channel;
use tonic::Code;

/// More than a drainer works in one pass, so that they alone could fill a pass.
const PLANTED: usize = 60;
const HAND_OFFS: usize = 5;
/// Attempts before the dead letter, in this test; backoff starts at 200 ms.
const MAX_ATTEMPTS: &str = "3";
const SETTLE: Duration = Duration::from_secs(40);

async fn start(database_url: &str) -> Stack {
    common::start(
        on_repository(StackBuilder::each_service())
            .database_url(database_url)
            .env("KEFU_OUTBOX_MAX_ATTEMPTS", MAX_ATTEMPTS)
            .env("KEFU_OUTBOX_BACKOFF_MS", "200")
            .env("RUST_LOG", "warn")
            .serving(&Service::ALL.map(Service::name)),
    )
    .await
}

/// Entries whose ticket request no ticket service can read, due before anything else.
async fn plant_failing_entries(database_url: &str) {
    let db = Database::connect(database_url).await.unwrap();
    for i in 0..PLANTED {
        sqlx::query("INSERT INTO ticket_outbox (outbox_id, tenant_id, customer_id, message_id, session_id, request, created_at, next_attempt_at) VALUES ($1, 'demo', $2, 'm-1', 's-1', $3, $4, 0)")
            .bind(format!("planted-{i}"))
            .bind(format!("planted-customer-{i}"))
            .bind(vec![0xffu8, 0xff, 0xff])
            .bind(i as i64)
            .execute(db.pool())
            .await
            .unwrap();
    }
}

fn hand_off(customer: &str) -> SendMessageRequest {
    SendMessageRequest {
        tenant_id: "demo".into(),
        customer_id: customer.into(),
        message_id: format!("{customer}-m1"),
        channel: MessageChannel::Web as i32,
        text: "I want to speak to a human".into(),
        ..Default::default()
    }
}

/// The tickets the agent sees for a customer.
async fn tickets_of(channel: &Channel, customer: &str) -> Vec<Ticket> {
    let mut agent = TicketServiceClient::with_interceptor(channel.clone(), ApiKey(DEMO_AGENT_KEY));
    common::tickets_of(&mut agent, customer).await
}

async fn dead_letters(channel: &Channel) -> Vec<DeadLetter> {
    AdminServiceClient::with_interceptor(channel.clone(), ApiKey(DEMO_ADMIN_KEY))
        .list_dead_letters(ListDeadLettersRequest {
            tenant_id: "demo".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters
}

/// A gauge's value on a metrics page; None while the page or the gauge is missing.
async fn gauge(metrics: SocketAddr, name: &str) -> Option<f64> {
    metrics_text(metrics)
        .await
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < SETTLE, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_always_fail_do_not_stop_later_hand_offs() {
    let (_db, database_url) = TestDb::postgres().await;
    let mut stack = start(&database_url).await;
    plant_failing_entries(&database_url).await;
    let channel = common::channel(&stack.gateway()).await;
    let mut customers = ConversationServiceClient::new(channel.clone());

    // A Gold customer's ticket opens one step up, though the ticket service is away when
    // the hand-off is committed.
    let gold = "outbox-customer-0";
    TicketServiceClient::with_interceptor(channel.clone(), ApiKey(DEMO_ADMIN_KEY))
        .upsert_customer(UpsertCustomerRequest {
            customer: Some(Customer {
                tenant_id: "demo".into(),
                customer_id: gold.into(),
                display_name: String::new(),
                vip_tier: VipTier::Gold as i32,
            }),
        })
        .await
        .unwrap();

    // The ticket service is away: hand-offs are committed with their entries, no number.
    stack.kill("ticket");
    let mut sessions = Vec::new();
    for i in 0..HAND_OFFS {
        let customer = format!("outbox-customer-{i}");
        let reply = customers
            .send_message(hand_off(&customer))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.escalated, "{customer} is handed off");
        assert!(
            reply.ticket_id.is_empty(),
            "no ticket number while the ticket service is away"
        );
        sessions.push((customer, reply.session_id));
    }
    stack.restart("ticket").unwrap();
    stack
        .wait_until_serving("ticket")
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));

    // With the ticket service back, one more hand-off gets its ticket at once.
    let customer = format!("outbox-customer-{HAND_OFFS}");
    let direct = customers
        .send_message(hand_off(&customer))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !direct.ticket_id.is_empty(),
        "a hand-off gets its ticket at once"
    );
    assert!(direct.reply.contains(&direct.ticket_id), "{}", direct.reply);
    sessions.push((customer, direct.session_id));

    // Every hand-off ends with exactly one ticket, the session knows it, despite the
    // failing entries ahead of them.
    let started = Instant::now();
    let mut priorities = std::collections::HashMap::new();
    for (customer, session_id) in &sessions {
        let ticket = eventually(&format!("{customer}'s ticket"), || async {
            let tickets = tickets_of(&channel, customer).await;
            (!tickets.is_empty()).then_some(tickets)
        })
        .await;
        assert_eq!(ticket.len(), 1, "{customer} has one ticket");
        let session = common::session(&mut customers, customer, session_id)
            .await
            .unwrap();
        assert_eq!(
            session.ticket_id, ticket[0].ticket_id,
            "{customer}'s session has it"
        );
        priorities.insert(customer.clone(), ticket[0].priority());
    }
    let others = priorities["outbox-customer-1"];
    assert!(
        priorities.iter().all(|(c, p)| c == gold || *p == others),
        "{priorities:?}"
    );
    assert_eq!(
        priorities[gold] as i32,
        (others as i32 + 1).min(Priority::Urgent as i32),
        "the Gold customer's ticket is one step up: {priorities:?}"
    );
    println!(
        "{} hand-offs ({HAND_OFFS} while the ticket service was down) have one ticket each, {:.1} s after it returned, with {PLANTED} failing entries ahead of them",
        sessions.len(),
        started.elapsed().as_secs_f64()
    );

    // The planted entries end in the dead letter after their attempts.
    let dead = eventually("the planted entries in the dead letter", || async {
        let dead = dead_letters(&channel).await;
        (dead.len() == PLANTED).then_some(dead)
    })
    .await;
    assert!(dead.iter().all(|d| d.outbox_id.starts_with("planted-")));
    assert!(dead.iter().all(|d| d.attempts.to_string() == MAX_ATTEMPTS));
    assert!(
        dead.iter().all(|d| d.last_error.contains("unreadable")),
        "{:?}",
        dead[0]
    );
    let dead_gauge = eventually("kefu_outbox_dead_letters", || async {
        gauge(
            stack.metrics_address("orchestrator"),
            "kefu_outbox_dead_letters",
        )
        .await
        .filter(|value| *value == PLANTED as f64)
    })
    .await;
    println!("{PLANTED} planted entries are dead letters after {MAX_ATTEMPTS} attempts each; kefu_outbox_dead_letters = {dead_gauge}");

    // Only an admin lists them; an admin puts one back, and it is tried again.
    let as_agent = AdminServiceClient::with_interceptor(channel.clone(), ApiKey(DEMO_AGENT_KEY))
        .list_dead_letters(ListDeadLettersRequest {
            tenant_id: "demo".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(as_agent.code(), Code::PermissionDenied);
    let mut admin = AdminServiceClient::with_interceptor(channel.clone(), ApiKey(DEMO_ADMIN_KEY));
    let retried = admin
        .retry_dead_letter(RetryDeadLetterRequest {
            tenant_id: "demo".into(),
            outbox_id: "planted-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.outbox_id, "planted-0");
    let unknown = admin
        .retry_dead_letter(RetryDeadLetterRequest {
            tenant_id: "demo".into(),
            outbox_id: "no-such-entry".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let back = eventually("the retried entry back in the dead letter", || async {
        dead_letters(&channel)
            .await
            .into_iter()
            .find(|d| d.outbox_id == "planted-0")
    })
    .await;
    assert_eq!(
        back.attempts.to_string(),
        MAX_ATTEMPTS,
        "tried again from the start"
    );
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}

/// An orchestrator that dies while its turn's ticket call hangs leaves the entry under
/// that turn's lease, which ends with the customer's call: the replica that comes back
/// opens the ticket seconds later, not after a drainer's whole lease (`LEASE_MS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_whose_orchestrator_died_mid_attempt_waits_no_longer_than_its_call() {
    // The customer's call; the turn's ticket attempt hangs for what is left of it.
    const CALL: Duration = Duration::from_secs(6);
    let (_db, database_url) = TestDb::postgres().await;
    let mut stack = start(&database_url).await;
    let channel = common::channel(&stack.gateway()).await;

    // The ticket service hangs: its address accepts connections and never answers.
    stack.kill("ticket");
    let hung = tokio::net::TcpListener::bind(stack.address("ticket"))
        .await
        .unwrap();
    let holding = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            sockets.push(socket);
        }
    });

    // The customer's hand-off is committed, then its orchestrator dies mid-attempt.
    let customer = "outbox-orphan";
    let mut call = tonic::Request::new(hand_off(customer));
    call.set_timeout(CALL);
    let mut customers = ConversationServiceClient::new(channel.clone());
    let asking = tokio::spawn(async move { customers.send_message(call).await });
    let db = Database::connect(&database_url).await.unwrap();
    let pending = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM ticket_outbox")
            .fetch_one(db.pool())
            .await
            .unwrap();
        n
    };
    let committed = Instant::now();
    while pending().await == 0 {
        assert!(committed.elapsed() < CALL, "the hand-off was not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill("orchestrator");
    let _ = asking.await;

    // Everything comes back.
    holding.abort();
    for service in ["ticket", "orchestrator"] {
        stack.restart(service).unwrap();
        stack
            .wait_until_serving(service)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
    }
    let bound = CALL
        + Duration::from_millis(kefu_orchestrator::TURN_LEASE_MARGIN_MS as u64)
        + kefu_orchestrator::DRAIN_INTERVAL
        + Duration::from_secs(2);
    assert!(bound < Duration::from_millis(kefu_orchestrator::LEASE_MS as u64));
    // The ticket is open and its entry gone (the drainer records the opening just after).
    loop {
        let tickets = tickets_of(&channel, customer).await;
        assert!(tickets.len() <= 1, "{customer} has one ticket: {tickets:?}");
        if tickets.len() == 1 && pending().await == 0 {
            break;
        }
        assert!(
            committed.elapsed() < bound,
            "{customer}'s ticket is not open {:?} after the hand-off was committed",
            committed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the orphaned hand-off got its ticket {:.1} s after it was committed",
        committed.elapsed().as_secs_f64()
    );
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}
