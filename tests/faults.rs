//! Faults under load, as production meets them: the seven services as separate processes
//! on a PostgreSQL and a Redis of the test's own, customers sending messages with ids
//! (retrying, as a client should, with the same id), while each service in turn is
//! killed and restarted, then Redis, then PostgreSQL. Every answer must be OK or a
//! status a client can retry on (never INTERNAL or UNKNOWN, never another message's
//! reply); each degraded mode answers as documented; afterwards every hand-off has its
//! ticket, no message has two tickets or two turns, nothing panicked, and every service
//! is SERVING within 10 s of its dependency's return. Prints the counts per fault.
//!
//! `cargo test --release --test faults -- --nocapture`
mod common;

use std::collections::{BTreeMap, HashMap};
use std::error::Error as _;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dependencies::{OwnPostgres, OwnRedis};
use common::{health_status, on_repository, Service, ServingStatus, Stack, StackBuilder};
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::*;
use tonic::transport::Channel;
use tonic::Code;

const CUSTOMERS: usize = 6;
/// How long each fault lasts before the process or dependency comes back.
const OUTAGE: Duration = Duration::from_secs(3);
/// A service must be SERVING again this soon after what it depends on is back.
const RECOVERY: Duration = Duration::from_secs(10);
/// The deadline a customer's client gives each attempt.
const CLIENT_DEADLINE: Duration = Duration::from_secs(4);
const ATTEMPTS: usize = 4;
/// How an attempt is counted when the client's own connection broke mid-call.
const CONNECTION_LOST: &str = "ConnectionLost";

/// Customers' messages: what each should get when everything is up.
const MESSAGES: [(&str, Expect); 3] = [
    ("How much does the Pro plan cost per month?", Expect::Answer),
    ("I want to speak to a human", Expect::HandOff),
    ("我要转人工客服", Expect::HandOff),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Answer,
    HandOff,
}

/// What happened to every attempt, by phase and status; and the final answer of every
/// message, by (customer, message id).
#[derive(Default)]
struct Record {
    phase: String,
    codes: BTreeMap<String, BTreeMap<String, usize>>,
    /// (phase, expectation, response) of each message answered OK.
    answers: HashMap<(String, String), (String, Expect, SendMessageResponse)>,
    wrong: Vec<String>,
}

impl Record {
    fn count(&mut self, outcome: &str) {
        *self
            .codes
            .entry(self.phase.clone())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }
}

/// The seven services as processes of their own, on a PostgreSQL and a Redis of the test's.
struct Deployment {
    stack: Stack,
    redis: OwnRedis,
    postgres: OwnPostgres,
}

impl Deployment {
    async fn start() -> Self {
        let postgres = OwnPostgres::start();
        let redis = OwnRedis::start();
        let stack = common::start(
            on_repository(StackBuilder::each_service())
                .database_url(postgres.url())
                .redis_url(&redis.url())
                .env("KEFU_CALL_TIMEOUT_MS", "3000")
                .env("RUST_LOG", "warn")
                .serving(&Service::ALL.map(Service::name)),
        )
        .await;
        Self {
            stack,
            redis,
            postgres,
        }
    }

    /// How long until every service is SERVING again after `part` came back; it must be
    /// within RECOVERY.
    async fn recovered_from(&self, part: &str) -> Duration {
        let started = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for service in Service::ALL.map(Service::name) {
                if health_status(&self.stack.url(service)).await != Some(ServingStatus::Serving) {
                    waiting.push(service);
                }
            }
            if waiting.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < RECOVERY,
                "{waiting:?} not SERVING {RECOVERY:?} after {part} came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn sql(&self, query: &str) -> Vec<String> {
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.postgres.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At", "-c", query])
            .output()
            .expect("psql is installed");
        assert!(
            output.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// One customer: a message every ~100 ms, each in a new session, each retried with the
/// same id on a status a client can retry on.
async fn customer(
    index: usize,
    gateway: Channel,
    record: Arc<Mutex<Record>>,
    running: Arc<AtomicBool>,
) {
    let customer_id = format!("fault-customer-{index}");
    let mut client = ConversationServiceClient::new(gateway);
    let mut n = 0;
    while running.load(Ordering::Relaxed) {
        n += 1;
        let (text, expect) = MESSAGES[(index + n) % MESSAGES.len()];
        let message_id = format!("m-{n}");
        let request = SendMessageRequest {
            tenant_id: "demo".into(),
            customer_id: customer_id.clone(),
            message_id: message_id.clone(),
            channel: kefu_proto::v1::Channel::Web as i32,
            text: text.into(),
            ..Default::default()
        };
        for attempt in 0..ATTEMPTS {
            // The deadline travels with the call (grpc-timeout), as a client's should.
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(CLIENT_DEADLINE);
            let result = tokio::time::timeout(CLIENT_DEADLINE, client.send_message(call)).await;
            let result = match result {
                Ok(result) => result.map(|r| r.into_inner()),
                Err(_) => Err(tonic::Status::deadline_exceeded("client deadline")),
            };
            let done = {
                let mut record = record.lock().unwrap();
                match result {
                    Ok(response) => {
                        record.count("Ok");
                        if response.message_id != message_id {
                            record.wrong.push(format!(
                                "{customer_id}/{message_id} was answered for message {}",
                                response.message_id
                            ));
                        }
                        let key = (customer_id.clone(), message_id.clone());
                        if let Some((_, _, earlier)) = record.answers.get(&key) {
                            if *earlier != response {
                                record.wrong.push(format!(
                                    "{customer_id}/{message_id}: a retry got another reply"
                                ));
                            }
                        }
                        let phase = record.phase.clone();
                        record.answers.insert(key, (phase, expect, response));
                        true
                    }
                    // A status made by the client itself (it has a source) for a connection
                    // that broke mid-call, or a stream the dying connection reset (h2's
                    // CANCEL): the gateway it was talking to died, and whether the message
                    // was taken is unknown, so it is sent again with its id.
                    Err(status)
                        if matches!(status.code(), Code::Unknown | Code::Cancelled)
                            && status.source().is_some() =>
                    {
                        record.count(CONNECTION_LOST);
                        false
                    }
                    Err(status) => {
                        record.count(&format!("{:?}", status.code()));
                        !matches!(
                            status.code(),
                            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                        )
                    }
                }
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_doubled_when_services_and_stores_fail() {
    let mut deployment = Deployment::start().await;
    let gateway = Channel::from_shared(deployment.stack.gateway())
        .unwrap()
        .connect_lazy();
    let record = Arc::new(Mutex::new(Record {
        phase: "steady".into(),
        ..Default::default()
    }));
    let running = Arc::new(AtomicBool::new(true));
    let customers: Vec<_> = (0..CUSTOMERS)
        .map(|i| {
            tokio::spawn(customer(
                i,
                gateway.clone(),
                record.clone(),
                running.clone(),
            ))
        })
        .collect();
    let phase = |name: &str| record.lock().unwrap().phase = name.to_owned();
    let mut recovery = Vec::new();
    tokio::time::sleep(OUTAGE).await;

    for service in [
        "sentiment",
        "router",
        "knowledge",
        "ticket",
        "orchestrator",
        "gateway",
    ] {
        phase(&format!("{service} down"));
        deployment.stack.kill(service);
        tokio::time::sleep(OUTAGE).await;
        phase(&format!("{service} back"));
        let restarted = Instant::now();
        deployment.stack.restart(service).unwrap();
        deployment
            .stack
            .wait_until_serving(service)
            .await
            .unwrap_or_else(|error| panic!("{error:#}"));
        let own = restarted.elapsed();
        let others = deployment.recovered_from(service).await;
        recovery.push((service.to_owned(), own, others));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    phase("redis down");
    deployment.redis.kill();
    tokio::time::sleep(OUTAGE).await;
    phase("redis back");
    deployment.redis.restart();
    let others = deployment.recovered_from("Redis").await;
    recovery.push(("redis".into(), Duration::ZERO, others));
    tokio::time::sleep(Duration::from_secs(1)).await;

    phase("postgres down");
    deployment.postgres.stop();
    tokio::time::sleep(OUTAGE).await;
    phase("postgres back");
    let restarted = Instant::now();
    deployment.postgres.restart();
    let own = restarted.elapsed();
    let others = deployment.recovered_from("PostgreSQL").await;
    recovery.push(("postgres".into(), own, others));
    tokio::time::sleep(OUTAGE).await;

    running.store(false, Ordering::Relaxed);
    for customer in customers {
        customer.await.unwrap();
    }
    deployment
        .stack
        .running()
        .unwrap_or_else(|error| panic!("{error:#}"));

    let record = Arc::try_unwrap(record)
        .ok()
        .expect("the customers are done")
        .into_inner()
        .unwrap();
    println!("attempts by phase and status:");
    for (phase, codes) in &record.codes {
        println!("  {phase:<20} {codes:?}");
    }
    println!("recovery (the restarted part SERVING / all seven SERVING after it):");
    for (part, own, all) in &recovery {
        println!("  {part:<13} {own:>8.2?} / {all:>8.2?}");
    }

    // Only OK or statuses a client can retry on (a lost connection only while the gateway
    // the customers talk to is down); nothing answered for another message.
    let allowed = ["Ok", "Unavailable", "DeadlineExceeded", "ResourceExhausted"];
    for (phase, codes) in &record.codes {
        for code in codes.keys() {
            assert!(
                allowed.contains(&code.as_str())
                    || (code == CONNECTION_LOST && phase == "gateway down"),
                "{phase}: {code} ({codes:?})"
            );
        }
    }
    assert!(record.wrong.is_empty(), "wrong replies: {:?}", record.wrong);
    let panics = deployment.stack.panics();
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));

    // Each degraded mode answers as documented.
    let reasons_in = |phase: &str, expect: Expect| -> Vec<String> {
        record
            .answers
            .values()
            .filter(|(p, e, _)| p == phase && *e == expect)
            .map(|(_, _, r)| r.escalation_reason.clone())
            .collect()
    };
    let in_phase = |phase: &str| {
        reasons_in(phase, Expect::Answer).len() + reasons_in(phase, Expect::HandOff).len()
    };
    assert!(
        reasons_in("router down", Expect::Answer)
            .iter()
            .chain(&reasons_in("router down", Expect::HandOff))
            .any(|reason| reason == "router_unavailable"),
        "router down: messages are handed off (router_unavailable)"
    );
    assert!(
        reasons_in("knowledge down", Expect::Answer)
            .iter()
            .any(|reason| reason == "knowledge_unavailable"),
        "knowledge down: questions are handed off (knowledge_unavailable)"
    );
    assert!(
        reasons_in("sentiment down", Expect::Answer)
            .iter()
            .any(String::is_empty),
        "sentiment down: questions are still answered"
    );
    assert!(
        in_phase("redis down") > 0,
        "Redis down: answered from the database alone"
    );

    // Every hand-off has its ticket (those whose ticket waited in the outbox too: they
    // are opened once the ticket service is back), and nothing is doubled. An entry
    // committed just before PostgreSQL stopped keeps its turn's lease, since the failed
    // attempt could not be recorded; that lease ends soon after the customer's call
    // (not after the drainers' LEASE_MS), and a drainer takes the entry.
    let held = CLIENT_DEADLINE
        + Duration::from_millis(kefu_orchestrator::TURN_LEASE_MARGIN_MS as u64)
        + kefu_orchestrator::DRAIN_INTERVAL;
    let outbox_empty = Instant::now();
    while deployment.sql("SELECT count(*) FROM ticket_outbox") != ["0"] {
        assert!(
            outbox_empty.elapsed() < held + RECOVERY,
            "the outbox is not drained: {:?}",
            deployment.sql(
                "SELECT attempts, last_error, dead_at IS NOT NULL, \
                 next_attempt_at - (extract(epoch FROM now()) * 1000)::bigint, \
                 claimed_until - (extract(epoch FROM now()) * 1000)::bigint FROM ticket_outbox"
            )
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tickets: HashMap<String, String> = deployment
        .sql("SELECT customer_id || '/' || idempotency_key, ticket_id FROM tickets")
        .into_iter()
        .filter_map(|row| {
            let (key, ticket) = row.split_once('|')?;
            Some((key.to_owned(), ticket.to_owned()))
        })
        .collect();
    let mut handed_off = 0;
    for ((customer, message_id), (phase, _, response)) in &record.answers {
        if !response.escalated {
            continue;
        }
        handed_off += 1;
        let stored = tickets.get(&format!("{customer}/{message_id}"));
        assert!(
            stored.is_some(),
            "{phase}: {customer}/{message_id} was handed off without a ticket"
        );
        if !response.ticket_id.is_empty() {
            assert_eq!(stored, Some(&response.ticket_id), "{customer}/{message_id}");
        }
    }
    let doubled_tickets = deployment.sql(
        "SELECT customer_id, idempotency_key FROM tickets WHERE idempotency_key IS NOT NULL \
         GROUP BY 1, 2 HAVING count(*) > 1",
    );
    assert!(
        doubled_tickets.is_empty(),
        "two tickets for one message: {doubled_tickets:?}"
    );
    let doubled_turns = deployment
        .sql("SELECT customer_id, message_id FROM session_turns GROUP BY 1, 2 HAVING count(*) > 1");
    assert!(
        doubled_turns.is_empty(),
        "two turns for one message: {doubled_turns:?}"
    );
    // Nothing half-written: every stored hand-off turn names a ticket that exists or
    // waited in the (now drained) outbox.
    let orphans = deployment.sql(
        "SELECT t.customer_id, t.message_id FROM session_turns t WHERE t.escalated = 1 \
         AND t.ticket_id <> '' AND NOT EXISTS \
         (SELECT 1 FROM tickets k WHERE k.tenant_id = t.tenant_id AND k.ticket_id = t.ticket_id)",
    );
    assert!(
        orphans.is_empty(),
        "turns naming a ticket that does not exist: {orphans:?}"
    );
    println!(
        "{} messages answered OK, {handed_off} handed off, {} tickets",
        record.answers.len(),
        tickets.len()
    );
}
