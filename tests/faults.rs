//! Faults under load, as production meets them: the six services as separate processes
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
use common::processes::{base_env, build_service_binaries, url_variable, Processes, SERVICES};
use common::{free_ports, health_status, ServingStatus};
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

/// What the services call, by service (the deployment's wiring).
const CALLS: &[(&str, &[&str])] = &[
    (
        "gateway",
        &["orchestrator", "ticket", "knowledge", "router"],
    ),
    (
        "orchestrator",
        &["router", "sentiment", "knowledge", "ticket"],
    ),
];

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

struct Stack {
    processes: Processes,
    urls: BTreeMap<&'static str, String>,
    redis: OwnRedis,
    postgres: OwnPostgres,
    _data: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let binaries = build_service_binaries();
        let postgres = OwnPostgres::start();
        let redis = OwnRedis::start();
        let data = tempfile::tempdir().unwrap();
        let ports: [u16; 12] = free_ports();
        let urls: BTreeMap<&'static str, String> = SERVICES
            .iter()
            .enumerate()
            .map(|(i, service)| (*service, format!("http://127.0.0.1:{}", ports[i])))
            .collect();
        let mut processes = Processes::new(binaries, data.path().join("logs"));
        for (i, service) in SERVICES.iter().enumerate() {
            let mut env = base_env(data.path(), &postgres.url());
            let calls = CALLS
                .iter()
                .find(|(caller, _)| caller == service)
                .map_or(&[][..], |(_, calls)| calls);
            env.extend(
                calls
                    .iter()
                    .map(|peer| (url_variable(peer), urls[peer].clone())),
            );
            env.extend(
                [
                    ("KEFU_GRPC_PORT", ports[i].to_string()),
                    ("KEFU_METRICS_PORT", ports[SERVICES.len() + i].to_string()),
                    ("REDIS_URL", redis.url()),
                    ("KEFU_CALL_TIMEOUT_MS", "3000".to_owned()),
                    ("RUST_LOG", "warn".to_owned()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            processes.spawn(service, service, &env);
        }
        let mut stack = Self {
            processes,
            urls,
            redis,
            postgres,
            _data: data,
        };
        for service in SERVICES {
            let url = stack.urls[service].clone();
            stack.processes.wait_until_serving(&url).await;
        }
        stack
    }

    /// Waits until every service is SERVING; how long that took.
    async fn all_serving(&self, limit: Duration) -> Result<Duration, Vec<&'static str>> {
        let started = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for service in SERVICES {
                if health_status(&self.urls[service]).await != Some(ServingStatus::Serving) {
                    waiting.push(service);
                }
            }
            if waiting.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(waiting);
            }
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
            let result =
                tokio::time::timeout(CLIENT_DEADLINE, client.send_message(request.clone())).await;
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
                    // that broke mid-call: the gateway it was talking to died, and whether
                    // the message was taken is unknown, so it is sent again with its id.
                    Err(status) if status.code() == Code::Unknown && status.source().is_some() => {
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
    let mut stack = Stack::start().await;
    let gateway = Channel::from_shared(stack.urls["gateway"].clone())
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
        stack.processes.kill(service);
        tokio::time::sleep(OUTAGE).await;
        phase(&format!("{service} back"));
        let restarted = Instant::now();
        stack.processes.restart(service);
        let url = stack.urls[service].clone();
        stack.processes.wait_until_serving(&url).await;
        let own = restarted.elapsed();
        let others = stack.all_serving(RECOVERY).await.unwrap_or_else(|waiting| {
            panic!("{waiting:?} not SERVING {RECOVERY:?} after {service} came back")
        });
        recovery.push((service.to_owned(), own, others));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    phase("redis down");
    stack.redis.kill();
    tokio::time::sleep(OUTAGE).await;
    phase("redis back");
    stack.redis.restart();
    let others = stack.all_serving(RECOVERY).await.unwrap_or_else(|waiting| {
        panic!("{waiting:?} not SERVING {RECOVERY:?} after Redis came back")
    });
    recovery.push(("redis".into(), Duration::ZERO, others));
    tokio::time::sleep(Duration::from_secs(1)).await;

    phase("postgres down");
    stack.postgres.stop();
    tokio::time::sleep(OUTAGE).await;
    phase("postgres back");
    let restarted = Instant::now();
    stack.postgres.restart();
    let own = restarted.elapsed();
    let others = stack.all_serving(RECOVERY).await.unwrap_or_else(|waiting| {
        panic!("{waiting:?} not SERVING {RECOVERY:?} after PostgreSQL came back")
    });
    recovery.push(("postgres".into(), own, others));
    tokio::time::sleep(OUTAGE).await;

    running.store(false, Ordering::Relaxed);
    for customer in customers {
        customer.await.unwrap();
    }
    stack.processes.assert_running();

    let record = Arc::try_unwrap(record)
        .ok()
        .expect("the customers are done")
        .into_inner()
        .unwrap();
    println!("attempts by phase and status:");
    for (phase, codes) in &record.codes {
        println!("  {phase:<20} {codes:?}");
    }
    println!("recovery (the restarted part SERVING / all six SERVING after it):");
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
    let panics = stack.processes.panics();
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
    // are opened once the ticket service is back), and nothing is doubled.
    let outbox_empty = Instant::now();
    while stack.sql("SELECT count(*) FROM handoff_outbox") != ["0"] {
        assert!(
            outbox_empty.elapsed() < RECOVERY,
            "the outbox is not drained"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let tickets: HashMap<String, String> = stack
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
    let doubled_tickets = stack.sql(
        "SELECT customer_id, idempotency_key FROM tickets WHERE idempotency_key IS NOT NULL \
         GROUP BY 1, 2 HAVING count(*) > 1",
    );
    assert!(
        doubled_tickets.is_empty(),
        "two tickets for one message: {doubled_tickets:?}"
    );
    let doubled_turns = stack
        .sql("SELECT customer_id, message_id FROM session_turns GROUP BY 1, 2 HAVING count(*) > 1");
    assert!(
        doubled_turns.is_empty(),
        "two turns for one message: {doubled_turns:?}"
    );
    // Nothing half-written: every stored hand-off turn names a ticket that exists or
    // waited in the (now drained) outbox.
    let orphans = stack.sql(
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
