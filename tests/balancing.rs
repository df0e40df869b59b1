//! Replica balancing as a headless Service gives it: one host name with an address per
//! replica. Two knowledge replicas behind one name (on 127.0.0.2 and 127.0.0.3, the same
//! port) both serve the orchestrator's searches; a third, added to the name later, starts
//! receiving them; one killed while still listed costs no customer an answer. The name is
//! resolved from a hosts file the test rewrites, through nss_wrapper (Debian's
//! libnss-wrapper, which `make test` installs), preloaded into the orchestrator only.
//!
//! `cargo test --release --test balancing -- --nocapture` prints the calls per replica.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::processes::{base_env, build_service_binaries, url_variable, Processes};
use common::{free_ports, message};
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_storage::testing::TestDb;

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
async fn searches(metrics: &str) -> u64 {
    let body = metrics_text(metrics).await;
    body.lines()
        .filter(|line| {
            line.starts_with("kefu_grpc_server_requests_total")
                && line.contains("KnowledgeService/Search")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The metrics page, fetched over a plain TCP connection (HTTP/1.1).
async fn metrics_text(address: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
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
    let binaries = build_service_binaries();
    let (_db, database_url) = TestDb::postgres().await;
    let data = tempfile::tempdir().unwrap();
    let hosts: PathBuf = data.path().join("hosts");
    write_hosts(&hosts, &REPLICAS[..2]);
    let ports: [u16; 14] = free_ports();
    let knowledge_port = ports[0];
    let mut processes = Processes::new(binaries, data.path().join("logs"));
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let env = |extra: &[(&str, String)]| {
        let mut env = base_env(data.path(), &database_url);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };

    let knowledge_metrics = |i: usize| format!("{}:{}", REPLICAS[i], ports[9 + i]);
    let start_knowledge = |processes: &mut Processes, i: usize| {
        processes.spawn(
            &format!("knowledge-{i}"),
            "knowledge",
            &env(&[
                ("KEFU_BIND_HOST", REPLICAS[i].to_owned()),
                ("KEFU_GRPC_PORT", knowledge_port.to_string()),
                ("KEFU_METRICS_PORT", ports[9 + i].to_string()),
            ]),
        );
    };
    for i in 0..2 {
        start_knowledge(&mut processes, i);
    }
    for (service, grpc, metrics) in [("router", 1, 2), ("sentiment", 3, 4), ("ticket", 5, 6)] {
        processes.spawn(
            service,
            service,
            &env(&[
                ("KEFU_GRPC_PORT", ports[grpc].to_string()),
                ("KEFU_METRICS_PORT", ports[metrics].to_string()),
            ]),
        );
    }
    let (orchestrator_port, gateway_port) = (ports[7], ports[8]);
    processes.spawn(
        "orchestrator",
        "orchestrator",
        &env(&[
            ("KEFU_GRPC_PORT", orchestrator_port.to_string()),
            ("KEFU_METRICS_PORT", ports[12].to_string()),
            (&url_variable("router"), url(ports[1])),
            (&url_variable("sentiment"), url(ports[3])),
            (&url_variable("ticket"), url(ports[5])),
            (
                &url_variable("knowledge"),
                format!("http://{NAME}:{knowledge_port}"),
            ),
            ("KEFU_DNS_REFRESH_MS", REFRESH_MS.to_string()),
            ("LD_PRELOAD", NSS_WRAPPER.to_owned()),
            ("NSS_WRAPPER_HOSTS", hosts.display().to_string()),
        ]),
    );
    processes.spawn(
        "gateway",
        "gateway",
        &env(&[
            ("KEFU_GRPC_PORT", gateway_port.to_string()),
            ("KEFU_METRICS_PORT", ports[13].to_string()),
            (&url_variable("orchestrator"), url(orchestrator_port)),
            (&url_variable("ticket"), url(ports[5])),
            (&url_variable("router"), url(ports[1])),
            (
                &url_variable("knowledge"),
                format!("http://{}:{knowledge_port}", REPLICAS[0]),
            ),
        ]),
    );
    let gateway = url(gateway_port);
    for replica in &REPLICAS[..2] {
        processes
            .wait_until_serving(&format!("http://{replica}:{knowledge_port}"))
            .await;
    }
    processes.wait_until_serving(&gateway).await;

    // Two replicas behind the name: both serve.
    let before = [
        searches(&knowledge_metrics(0)).await,
        searches(&knowledge_metrics(1)).await,
    ];
    ask(&gateway, "balanced-a", QUESTIONS).await;
    let two = [
        searches(&knowledge_metrics(0)).await - before[0],
        searches(&knowledge_metrics(1)).await - before[1],
    ];
    println!("{QUESTIONS} questions over two replicas: {two:?} searches");
    for (i, served) in two.iter().enumerate() {
        assert!(
            *served as usize >= QUESTIONS / 5,
            "replica {i} served {served} of {QUESTIONS}: {two:?}"
        );
    }

    // A third replica joins the name: it starts receiving calls.
    start_knowledge(&mut processes, 2);
    processes
        .wait_until_serving(&format!("http://{}:{knowledge_port}", REPLICAS[2]))
        .await;
    write_hosts(&hosts, &REPLICAS);
    tokio::time::sleep(Duration::from_millis(3 * REFRESH_MS)).await;
    let third_before = searches(&knowledge_metrics(2)).await;
    ask(&gateway, "balanced-b", QUESTIONS).await;
    let third = searches(&knowledge_metrics(2)).await - third_before;
    println!("{QUESTIONS} questions after a third replica joined: it served {third}");
    assert!(
        third as usize >= QUESTIONS / 6,
        "the added replica served {third} of {QUESTIONS}"
    );

    // A replica dies while the name still lists it: nobody goes without an answer.
    processes.kill("knowledge-0");
    ask(&gateway, "balanced-c", QUESTIONS / 2).await;
    processes.assert_running();
}
