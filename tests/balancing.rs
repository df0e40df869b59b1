//! Replica balancing as a headless Service gives it: one host name with an address per
//! replica. Two knowledge replicas behind one name (on 127.0.0.2 and 127.0.0.3, the same
//! port) both serve the orchestrator's searches; a third, added to the name later, starts
//! receiving them; one killed while still listed costs no customer an answer. The name is
//! resolved from a hosts file the test rewrites, through nss_wrapper (Debian's
//! libnss-wrapper, which `make test` installs), preloaded into the orchestrator only.
//!
//! `cargo test --release --test balancing -- --nocapture` prints the calls per replica.
mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{free_ports, message, metrics_text, on_repository, Instance, Service, StackBuilder};
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_test_db::TestDb;

const NSS_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so";
const NAME: &str = "knowledge.kefu.test";
const REPLICAS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
/// How often the orchestrator looks the name up again.
const REFRESH_MS: u64 = 300;
const QUESTIONS: usize = 40;

fn write_hosts(path: &Path, addresses: &[&str]) {
    let lines: String = addresses
        .iter()
        .map(|address| format!("{address} {NAME}\n"))
        .collect();
    // Written whole and renamed, so a lookup never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("127.0.0.1 localhost\n{lines}")).unwrap();
    std::fs::rename(partial, path).unwrap();
}

/// Searches a knowledge replica has served, from its metrics.
async fn searches(metrics: SocketAddr) -> u64 {
    let body = metrics_text(metrics).await;
    body.lines()
        .filter(|line| {
            line.starts_with("kefu_grpc_server_requests_total")
                && line.contains("KnowledgeService/Search")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn ask(gateway: &str, customer: &str, count: usize) {
    let mut client = ConversationServiceClient::connect(gateway.to_owned())
        .await
        .unwrap();
    for i in 0..count {
        // Every question differs, so no cache answers in the knowledge service's place.
        let text = format!("How much does the Pro plan cost? (question {i} of {customer})");
        let response = client
            .send_message(message(customer, &text))
            .await
            .unwrap_or_else(|status| panic!("{customer} question {i}: {status:?}"))
            .into_inner();
        assert!(
            response.escalation_reason != "knowledge_unavailable",
            "{customer} question {i} found no knowledge replica"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_replica_behind_a_name_and_follow_it() {
    assert!(
        Path::new(NSS_WRAPPER).is_file(),
        "{NSS_WRAPPER} is missing: `make test` installs Debian's libnss-wrapper"
    );
    let (_db, database_url) = TestDb::postgres().await;
    let hosts_dir = tempfile::tempdir().unwrap();
    let hosts: PathBuf = hosts_dir.path().join("hosts");
    write_hosts(&hosts, &REPLICAS[..2]);
    let [knowledge_port] = free_ports().unwrap();
    let knowledge = |i: usize| {
        let host: IpAddr = REPLICAS[i].parse().unwrap();
        Instance::new(&format!("knowledge-{i}"), Service::Knowledge)
            .bind(SocketAddr::new(host, knowledge_port))
    };
    let mut stack = common::start(
        on_repository(StackBuilder::instances([
            knowledge(0),
            knowledge(1),
            knowledge(2).held_back(),
            Instance::new("router", Service::Router),
            Instance::new("sentiment", Service::Sentiment),
            Instance::new("ticket", Service::Ticket),
            // The orchestrator finds the knowledge replicas by name, the gateway the first.
            Instance::new("orchestrator", Service::Orchestrator)
                .env(
                    &Service::Knowledge.url_variable(),
                    format!("http://{NAME}:{knowledge_port}"),
                )
                .env("KEFU_DNS_REFRESH_MS", REFRESH_MS.to_string())
                .env("LD_PRELOAD", NSS_WRAPPER)
                .env("NSS_WRAPPER_HOSTS", hosts.display().to_string()),
            Instance::new("gateway", Service::Gateway).calls(Service::Knowledge, "knowledge-0"),
        ]))
        .database_url(database_url)
        .serving(&["knowledge-0", "knowledge-1", "gateway"]),
    )
    .await;
    let gateway = stack.gateway();
    let metrics: Vec<SocketAddr> = (0..REPLICAS.len())
        .map(|i| stack.metrics_address(&format!("knowledge-{i}")))
        .collect();

    // Two replicas behind the name: both serve.
    let before = [searches(metrics[0]).await, searches(metrics[1]).await];
    ask(&gateway, "balanced-a", QUESTIONS).await;
    let two = [
        searches(metrics[0]).await - before[0],
        searches(metrics[1]).await - before[1],
    ];
    println!("{QUESTIONS} questions over two replicas: {two:?} searches");
    for (i, served) in two.iter().enumerate() {
        assert!(
            *served as usize >= QUESTIONS / 5,
            "replica {i} served {served} of {QUESTIONS}: {two:?}"
        );
    }

    // A third replica joins the name: it starts receiving calls.
    stack.start_held_back("knowledge-2").unwrap();
    stack
        .wait_until_serving("knowledge-2")
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    write_hosts(&hosts, &REPLICAS);
    tokio::time::sleep(Duration::from_millis(3 * REFRESH_MS)).await;
    let third_before = searches(metrics[2]).await;
    ask(&gateway, "balanced-b", QUESTIONS).await;
    let third = searches(metrics[2]).await - third_before;
    println!("{QUESTIONS} questions after a third replica joined: it served {third}");
    assert!(
        third as usize >= QUESTIONS / 6,
        "the added replica served {third} of {QUESTIONS}"
    );

    // A replica dies while the name still lists it: nobody goes without an answer.
    stack.kill("knowledge-0");
    ask(&gateway, "balanced-c", QUESTIONS / 2).await;
    stack.running().unwrap_or_else(|error| panic!("{error:#}"));
}
