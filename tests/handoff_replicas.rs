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

use common::processes::{base_env, build_service_binaries, url_variable, Processes};
use common::{free_ports, ApiKey, RedisPrefix, DEMO_AGENT_KEY};
use kefu_proto::v1::conversation_event::Kind;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use kefu_storage::testing::TestDb;
use tonic::transport::Channel;
use tonic::Code;

const LIVE: Duration = Duration::from_secs(1);
const REPLIES: usize = 100;
/// Short enough to watch the SLA policy act (it raises at 80%, 16 s).
const SLA_SECS: &str = "20";

/// An instance, its service, and the instances it calls by service.
type Instance = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const TOPOLOGY: &[Instance] = &[
    ("sentiment", "sentiment", &[]),
    ("router", "router", &[]),
    ("knowledge", "knowledge", &[]),
    ("ticket-a", "ticket", &[]),
    ("ticket-b", "ticket", &[]),
    (
        "orchestrator-a",
        "orchestrator",
        &[
            ("router", "router"),
            ("sentiment", "sentiment"),
            ("knowledge", "knowledge"),
            ("ticket", "ticket-a"),
        ],
    ),
    (
        "orchestrator-b",
        "orchestrator",
        &[
            ("router", "router"),
            ("sentiment", "sentiment"),
            ("knowledge", "knowledge"),
            ("ticket", "ticket-b"),
        ],
    ),
    (
        "gateway-a",
        "gateway",
        &[
            ("orchestrator", "orchestrator-a"),
            ("ticket", "ticket-a"),
            ("knowledge", "knowledge"),
            ("router", "router"),
        ],
    ),
    (
        "gateway-b",
        "gateway",
        &[
            ("orchestrator", "orchestrator-b"),
            ("ticket", "ticket-b"),
            ("knowledge", "knowledge"),
            ("router", "router"),
        ],
    ),
];

struct Replicas {
    processes: Processes,
    urls: Vec<(String, String)>,
    _data: tempfile::TempDir,
    _db: TestDb,
    _redis: RedisPrefix,
}

impl Replicas {
    fn url(&self, instance: &str) -> &str {
        &self
            .urls
            .iter()
            .find(|(name, _)| name == instance)
            .unwrap()
            .1
    }
}

async fn start() -> Replicas {
    let dir = build_service_binaries();
    let (db, database_url) = TestDb::postgres().await;
    let redis = RedisPrefix::new();
    let data = tempfile::tempdir().unwrap();
    let ports: [u16; 18] = free_ports();
    let urls: Vec<(String, String)> = TOPOLOGY
        .iter()
        .enumerate()
        .map(|(i, (instance, ..))| {
            (
                instance.to_string(),
                format!("http://127.0.0.1:{}", ports[i]),
            )
        })
        .collect();
    let url_of = |instance: &str| {
        urls.iter()
            .find(|(name, _)| name == instance)
            .unwrap()
            .1
            .clone()
    };
    let mut processes = Processes::new(dir, data.path().join("logs"));
    for (i, (instance, service, calls)) in TOPOLOGY.iter().enumerate() {
        let mut env = base_env(data.path(), &database_url);
        env.extend(
            calls
                .iter()
                .map(|(peer, target)| (url_variable(peer), url_of(target))),
        );
        env.extend(
            [
                ("KEFU_GRPC_PORT", ports[i].to_string()),
                ("KEFU_METRICS_PORT", ports[TOPOLOGY.len() + i].to_string()),
                ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
                ("KEFU_REDIS_PREFIX", redis.0.clone()),
                ("KEFU_SLA_URGENT_SECS", SLA_SECS.to_owned()),
                ("KEFU_SLA_HIGH_SECS", SLA_SECS.to_owned()),
                ("KEFU_SLA_MEDIUM_SECS", SLA_SECS.to_owned()),
                ("KEFU_SLA_LOW_SECS", SLA_SECS.to_owned()),
                ("KEFU_SLA_CHECK_INTERVAL_MS", "500".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        processes.spawn(instance, service, &env);
    }
    let mut replicas = Replicas {
        processes,
        urls,
        _data: data,
        _db: db,
        _redis: redis,
    };
    for instance in ["gateway-a", "gateway-b"] {
        let url = replicas.url(instance).to_owned();
        replicas.processes.wait_until_serving(&url).await;
    }
    replicas
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn customer_client(url: &str) -> ConversationServiceClient<Channel> {
    ConversationServiceClient::new(channel(url).await)
}

async fn agent_client(url: &str) -> TicketServiceClient<common::KeyedChannel> {
    TicketServiceClient::with_interceptor(channel(url).await, ApiKey(DEMO_AGENT_KEY))
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
    let (a, b) = (replicas.url("gateway-a"), replicas.url("gateway-b"));
    let customer = "replica-customer";

    let first = customer_client(a)
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
    let mut events = customer_client(a)
        .await
        .stream_events(StreamEventsRequest {
            tenant_id: "demo".into(),
            customer_id: customer.into(),
            session_id: session.clone(),
            after_event_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut events).await.event_id, 1);

    // The session's state is shared: through the other replica, the bot stays silent.
    for text in ["hello? anyone there?", "still waiting"] {
        let response = customer_client(b)
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
    let mut agent = agent_client(b).await;
    let taken = agent
        .next_in_queue(NextInQueueRequest {
            tenant_id: "demo".into(),
            take: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap();
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
    let mut events = customer_client(b)
        .await
        .stream_events(StreamEventsRequest {
            tenant_id: "demo".into(),
            customer_id: customer.into(),
            session_id: session.clone(),
            after_event_id: last_event,
        })
        .await
        .unwrap()
        .into_inner();
    let missed = next_event(&mut events).await;
    assert_eq!(missed.event_id, last_event + 1);
    assert!(
        matches!(missed.kind, Some(Kind::AgentReply(ref r)) if r.text == "while you were away")
    );

    // Resolved on replica A: the stream on B sees the bot return, and B's orchestrator answers.
    agent_client(a)
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
    let answered = customer_client(b)
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
    customer_client(a)
        .await
        .rate_conversation(rate(5))
        .await
        .unwrap();
    let again = customer_client(b)
        .await
        .rate_conversation(rate(5))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Nobody answers this one: at 80% of its SLA it is raised one step, by one replica.
    let waiting = customer_client(a)
        .await
        .send_message(message("replica-waiting", "", "I want to speak to a human"))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let raised = loop {
        let ticket = agent
            .get_ticket(GetTicketRequest {
                tenant_id: "demo".into(),
                ticket_id: waiting.ticket_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .ticket
            .unwrap();
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
    let audit = agent
        .get_ticket(GetTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: waiting.ticket_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap()
        .audit;
    assert_eq!(
        audit.iter().filter(|a| a.actor == "sla-policy").count(),
        1,
        "{audit:?}"
    );
}
