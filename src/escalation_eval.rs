//! `kefu eval escalation`: how well kefu decides to hand a conversation to a human. Each
//! row of the test file (`text,expected` with `yes` or `no`) is sent as the first message
//! of a new conversation through a private stack (the six services on free loopback
//! ports, an empty database), so the decision is exactly the one the orchestrator makes
//! in production: router, sentiment, knowledge and the decision together.
use std::path::Path;

use anyhow::Context as _;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::{Channel as MessageChannel, SendMessageRequest};
use tonic::transport::Channel;

/// Rows sent at once.
const CONCURRENCY: usize = 8;

/// Runs every row; prints each wrong decision on stderr and returns the summary line.
/// With `max_wrong`, fails when more than that share of the answerable messages was
/// handed off, or of the others was not (a check of the committed models).
pub async fn escalation(
    test: &Path,
    tenant: &str,
    tenants_dir: &Path,
    models_dir: &Path,
    max_wrong: Option<f64>,
) -> anyhow::Result<String> {
    let rows = kefu_nlp::eval::read_expected_csv(test)?;
    eprintln!("starting a private kefu for the evaluation (models load, intents train)");
    // `kefu up` from this very binary, on free ports and an empty database of its own.
    let binaries = std::env::current_exe()?;
    let stack = crate::stack::StackBuilder::all_in_one()
        .tenants_dir(tenants_dir)
        .models_dir(models_dir)
        .start(binaries.parent().context("the binary's directory")?)
        .await?;
    let gateway = stack.gateway();
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
    drop(stack);

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
    let needed = true_positive + false_negative;
    let answerable = rows.len() - needed;
    let summary = format!(
        "precision={:.4} recall={:.4} n={} answerable handed off {false_positive}/{answerable} \
         ({:.1}%), hand-offs missed {false_negative}/{needed} ({:.1}%)",
        ratio(true_positive, true_positive + false_positive),
        ratio(true_positive, needed),
        rows.len(),
        100.0 * ratio(false_positive, answerable),
        100.0 * ratio(false_negative, needed),
    );
    if let Some(max) = max_wrong {
        anyhow::ensure!(
            ratio(false_positive, answerable) <= max && ratio(false_negative, needed) <= max,
            "{summary}: more than {:.1}% wrong in one direction",
            100.0 * max
        );
    }
    Ok(summary)
}
