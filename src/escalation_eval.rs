//! `kefu eval escalation`: how well kefu decides to hand a conversation to a human. Each
//! row of the test file (`text,expected` with `yes` or `no`) is sent as the first message
//! of a new conversation through a private stack (the six services on free loopback
//! ports, an empty database), so the decision is exactly the one the orchestrator makes
//! in production: router, sentiment, knowledge and the decision together.
use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::{Channel as MessageChannel, SendMessageRequest};
use tonic::transport::Channel;

/// Rows sent at once.
const CONCURRENCY: usize = 8;

fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<(String, bool)>> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
    let headers = reader.headers()?.clone();
    anyhow::ensure!(
        headers.get(0) == Some("text") && headers.get(1) == Some("expected"),
        "{}: the header must be `text,expected`",
        path.display()
    );
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        let expected = match record.get(1).map(str::trim) {
            Some("yes") => true,
            Some("no") => false,
            other => anyhow::bail!(
                "{} row {}: expected must be yes or no, not {other:?}",
                path.display(),
                line + 2
            ),
        };
        rows.push((record.get(0).unwrap_or_default().to_owned(), expected));
    }
    anyhow::ensure!(!rows.is_empty(), "{} has no rows", path.display());
    Ok(rows)
}

/// Runs every row; prints each wrong decision on stderr and returns the summary line.
pub async fn escalation(
    test: &Path,
    tenant: &str,
    tenants_dir: &Path,
    models_dir: &Path,
) -> anyhow::Result<String> {
    let rows = read_rows(test)?;
    let data = tempfile::tempdir()?;
    let ports: [u16; 6] = free_ports()?;
    let mut args: Vec<String> = vec!["kefu-up".into()];
    for (flag, port) in [
        "--gateway-port",
        "--orchestrator-port",
        "--router-port",
        "--knowledge-port",
        "--ticket-port",
        "--sentiment-port",
    ]
    .iter()
    .zip(ports)
    {
        args.extend([flag.to_string(), port.to_string()]);
    }
    let path = |p: &Path| p.display().to_string();
    args.extend([
        "--metrics-base-port".into(),
        "0".into(),
        "--web-port".into(),
        "0".into(),
        "--data-dir".into(),
        path(data.path()),
        "--database-url".into(),
        format!("sqlite://{}/kefu.db?mode=rwc", data.path().display()),
        "--tenants-dir".into(),
        path(tenants_dir),
        "--models-dir".into(),
        path(models_dir),
    ]);
    let up_args = crate::UpArgs::try_parse_from(args)?;
    let shutdown = kefu_runtime::Shutdown::new();
    let _servers = crate::up(up_args, shutdown.clone()).await?;
    let gateway = format!("http://127.0.0.1:{}", ports[0]);
    eprintln!("starting a private kefu for the evaluation (models load, intents train)");
    crate::bench::wait_until_serving(&gateway, Duration::from_secs(300)).await?;
    let client = ConversationServiceClient::new(Channel::from_shared(gateway)?.connect().await?);

    eprintln!("deciding {} messages", rows.len());
    let mut decided = Vec::with_capacity(rows.len());
    for (batch_index, batch) in rows.chunks(CONCURRENCY).enumerate() {
        let calls = batch.iter().enumerate().map(|(i, (text, _))| {
            let mut client = client.clone();
            let request = SendMessageRequest {
                tenant_id: tenant.to_owned(),
                customer_id: format!("eval-{}", batch_index * CONCURRENCY + i),
                channel: MessageChannel::Web as i32,
                text: text.clone(),
                ..Default::default()
            };
            async move { client.send_message(request).await.map(|r| r.into_inner()) }
        });
        for response in futures::future::join_all(calls).await {
            decided.push(response.map_err(|status| {
                anyhow::anyhow!(
                    "a message was refused: {:?} {}",
                    status.code(),
                    status.message()
                )
            })?);
        }
    }
    shutdown.trigger();

    let (mut true_positive, mut false_positive, mut false_negative) = (0usize, 0usize, 0usize);
    for ((text, expected), response) in rows.iter().zip(&decided) {
        match (*expected, response.escalated) {
            (true, true) => true_positive += 1,
            (false, true) => {
                false_positive += 1;
                eprintln!("false hand-off ({}): {text}", response.escalation_reason);
            }
            (true, false) => {
                false_negative += 1;
                eprintln!("missed hand-off ({}): {text}", response.intent);
            }
            (false, false) => {}
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(format!(
        "precision={:.4} recall={:.4} n={}",
        ratio(true_positive, true_positive + false_positive),
        ratio(true_positive, true_positive + false_negative),
        rows.len()
    ))
}
