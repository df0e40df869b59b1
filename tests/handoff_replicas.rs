//! The hand-off across replicas, as production runs it: every service its own process,
//! two gateways, two orchestrators and two ticket services on one PostgreSQL and one
//! Redis. A customer follows the session through gateway A while the agent works
//! through gateway B; each reply must cross processes (PostgreSQL NOTIFY) and arrive
//! within a second. The SLA policy, running on both ticket replicas, raises an
//! unanswered ticket exactly once.
//!
//! `cargo test --release --test handoff_replicas -- --nocapture` prints the delivery
//! latencies.
mod common;

use std::time::{Duration, Instant};

use common::{
    conversations_at, on_repository, tickets_at, Instance, RedisPrefix, Service, Stack,
    StackBuilder, DEMO_AGENT_KEY,
};
use kefu_proto::v1::conversation_event::Kind;
use kefu_proto::v1::*;
use kefu_test_db::TestDb;
use tonic::Code;

const LIVE: Duration = Duration::from_secs(1);
const REPLIES: usize = 100;
/// Short enough to watch the SLA policy act (it raises at 80%, 16 s).
const SLA_SECS: &str = "20";

/// One sentiment, router and knowledge; two of each other service, side A and side B.
fn topology() -> Vec<Instance> {
    let mut instances = vec![
        Instance::new("sentiment", Service::Sentiment),
        Instance::new("router", Service::Router),
        Instance::new("knowledge", Service::Knowledge),
    ];
    for side in ["a", "b"] {
        let ticket = format!("ticket-{side}");
        let orchestrator = format!("orchestrator-{side}");
        instances.extend([
            Instance::new(&ticket, Service::Ticket),
            Instance::new(&orchestrator, Service::Orchestrator).calls(Service::Ticket, &ticket),
            Instance::new(&format!("gateway-{side}"), Service::Gateway)
                .calls(Service::Orchestrator, &orchestrator)
                .calls(Service::Ticket, &ticket),
        ]);
    }
    instances
}

struct Replicas {
    stack: Stack,
    _db: TestDb,
    _redis: RedisPrefix,
}

async fn start() -> Replicas {
    let (db, database_url) = TestDb::postgres().await;
    let redis = RedisPrefix::new();
    let mut builder = on_repository(StackBuilder::instances(topology()))
        .database_url(database_url)
        .redis_url("redis://127.0.0.1:6379")
        .env("KEFU_REDIS_PREFIX", redis.0.clone())
        .env("KEFU_SLA_CHECK_INTERVAL_MS", "500");
    for priority in ["URGENT", "HIGH", "MEDIUM", "LOW"] {
        builder = builder.env(&format!("KEFU_SLA_{priority}_SECS"), SLA_SECS);
    }
    Replicas {
        stack: common::start(builder).await,
        _db: db,
        _redis: redis,
    }
}

fn message(customer: &str, session: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        tenant_id: "demo".into(),
        customer_id: customer.into(),
        session_id: session.into(),
        text: text.into(),
        ..Default::default()
    }
}

async fn next_event(events: &mut tonic::Streaming<ConversationEvent>) -> ConversationEvent {
    tokio::time::timeout(LIVE, events.message())
        .await
        .expect("an event within a second")
        .expect("a healthy stream")
        .expect("an open stream")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cross_replicas_live_and_the_sla_policy_acts_once() {
    let replicas = start().await;
    let (a, b) = (
        &replicas.stack.url("gateway-a"),
        &replicas.stack.url("gateway-b"),
    );
    let customer = "replica-customer";

    let first = conversations_at(a)
        .await
        .send_message(message(customer, "", "I want to speak to a human"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.handler,
        Handler::Queued as i32,
        "reply: {}",
        first.reply
    );
    let (session, ticket_id) = (first.session_id.clone(), first.ticket_id.clone());
    let mut events = common::events_at(a, customer, &session, 0).await.unwrap();
    assert_eq!(next_event(&mut events).await.event_id, 1);

    // The session's state is shared: through the other replica, the bot stays silent.
    for text in ["hello? anyone there?", "still waiting"] {
        let response = conversations_at(b)
            .await
            .send_message(message(customer, &session, text))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (response.handler, response.ticket_id.as_str()),
            (Handler::Queued as i32, ticket_id.as_str())
        );
        assert!(response.reply.is_empty());
    }

    // The agent works through gateway B; the customer's stream is on gateway A.
    let mut agent = tickets_at(b, DEMO_AGENT_KEY).await;
    let taken = common::take_next(&mut agent).await;
    assert_eq!(taken.ticket_id, ticket_id);
    let handed = next_event(&mut events).await;
    assert!(
        matches!(handed.kind, Some(Kind::HandlerChange(ref c)) if c.handler == Handler::Agent as i32)
    );

    let mut latencies = Vec::with_capacity(REPLIES);
    let mut last_event = handed.event_id;
    for i in 0..REPLIES {
        let text = format!("reply number {i}");
        let sent_at = Instant::now();
        let sent = agent
            .reply_to_customer(ReplyToCustomerRequest {
                tenant_id: "demo".into(),
                ticket_id: ticket_id.clone(),
                text: text.clone(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let event = next_event(&mut events).await;
        latencies.push(sent_at.elapsed());
        assert_eq!(event.event_id, sent.event_id, "in order, nothing skipped");
        assert_eq!(event.event_id, last_event + 1);
        last_event = event.event_id;
        assert!(
            matches!(event.kind, Some(Kind::AgentReply(ref r)) if r.text == text && r.agent_id == "demo-agent")
        );
    }
    latencies.sort();
    println!(
        "agent reply through gateway B -> customer's stream on gateway A, {REPLIES} replies: median {:?}, p90 {:?}, max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().unwrap()
    );
    assert!(*latencies.last().unwrap() < LIVE);

    // Reconnecting on the other gateway replays only what was missed.
    drop(events);
    agent
        .reply_to_customer(ReplyToCustomerRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.clone(),
            text: "while you were away".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let mut events = common::events_at(b, customer, &session, last_event)
        .await
        .unwrap();
    let missed = next_event(&mut events).await;
    assert_eq!(missed.event_id, last_event + 1);
    assert!(
        matches!(missed.kind, Some(Kind::AgentReply(ref r)) if r.text == "while you were away")
    );

    // Resolved on replica A: the stream on B sees the bot return, and B's orchestrator answers.
    tickets_at(a, DEMO_AGENT_KEY)
        .await
        .transition_ticket(TransitionTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.clone(),
            to_status: TicketStatus::Resolved as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let back = next_event(&mut events).await;
    assert!(
        matches!(back.kind, Some(Kind::HandlerChange(ref c)) if c.handler == Handler::Bot as i32)
    );
    let answered = conversations_at(b)
        .await
        .send_message(message(
            customer,
            &session,
            "How much does the Pro plan cost?",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answered.handler, Handler::Bot as i32);
    assert!(!answered.sources.is_empty(), "reply: {}", answered.reply);
    let rate = |score| RateConversationRequest {
        tenant_id: "demo".into(),
        customer_id: customer.into(),
        ticket_id: ticket_id.clone(),
        score,
        comment: "quick and kind".into(),
    };
    conversations_at(a)
        .await
        .rate_conversation(rate(5))
        .await
        .unwrap();
    let again = conversations_at(b)
        .await
        .rate_conversation(rate(5))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Nobody answers this one: at 80% of its SLA it is raised one step, by one replica.
    let waiting = conversations_at(a)
        .await
        .send_message(message("replica-waiting", "", "I want to speak to a human"))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let raised = loop {
        let ticket = common::ticket(&mut agent, &waiting.ticket_id).await;
        if ticket.audit.iter().any(|a| a.actor == "sla-policy") {
            break ticket;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the SLA policy never raised the ticket"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        raised.priority > waiting.priority,
        "{} -> {}",
        waiting.priority,
        raised.priority
    );
    // Both replicas keep checking; a second raise would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let audit = common::ticket(&mut agent, &waiting.ticket_id).await.audit;
    assert_eq!(
        audit.iter().filter(|a| a.actor == "sla-policy").count(),
        1,
        "{audit:?}"
    );
}
