//! Outside channels end to end, on `kefu up` with the demo tenant given a `[channels]`
//! section as the README's setup steps write it: a bridge's signed webhook, a WeChat
//! Official Account (WeChat's side played by wechatpy, its message API by a local
//! server) and a support mailbox (customers' mail sent by Python's smtplib, replies taken
//! by an aiosmtpd relay) reach the bot, the bot's and an agent's replies come back on the
//! same channel, signed, encrypted or threaded, retried when the receiver fails; staff
//! see each message's delivery status; bad input is refused on the channel's own terms.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{ApiKey, StackBuilder, DEMO_AGENT_KEY};
use hmac::{Hmac, Mac};
use kefu_proto::v1::channel_service_client::ChannelServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::*;
use serde_json::{json, Value};
use sha2::Sha256;

const WEBHOOK_SECRET: &str = "test-webhook-secret";
const WECHAT_TOKEN: &str = "kefutoken";
// 43 characters, as WeChat's configuration page generates them.
const WECHAT_AES_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
const WECHAT_APP_ID: &str = "wx5823bf96d3bd56c7";
const WECHAT_APP_SECRET: &str = "test-app-secret";
const WAIT: Duration = Duration::from_secs(30);
const SUPPORT_ADDRESS: &str = "support@demo.example";

/// What the tenant's webhook receiver got: the signature headers and the body.
#[derive(Clone, Debug)]
struct Received {
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// The tenant's webhook receiver: records every POST; answers 503 to the first delivery
/// for the customer "flaky" (to be retried), 200 otherwise.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    refused_flaky: Arc<Mutex<bool>>,
}

impl Receiver {
    async fn start(&self) -> u16 {
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/replies",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let receiver = receiver.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
                    if json["customer_id"] == "flaky" {
                        let mut refused = receiver.refused_flaky.lock().unwrap();
                        if !*refused {
                            *refused = true;
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    receiver.got.lock().unwrap().push(Received {
                        timestamp: header("x-kefu-timestamp"),
                        signature: header("x-kefu-signature"),
                        body: body.to_vec(),
                    });
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// The first reply matching `wanted`, its signature checked with the shared secret.
    async fn reply(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.got.lock().unwrap().iter().find_map(|received| {
                let json: Value = serde_json::from_slice(&received.body).ok()?;
                wanted(&json).then(|| (received.clone(), json))
            });
            if let Some((received, json)) = found {
                assert_eq!(
                    received.signature,
                    sign(&received.timestamp, &received.body),
                    "a delivery's signature is not HMAC-SHA256(secret, timestamp.body)"
                );
                let sent: i64 = received.timestamp.parse().unwrap();
                assert!(
                    (unix_now() - sent).abs() < 300,
                    "a delivery is stamped {sent}"
                );
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "no such delivery within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn count(&self, wanted: impl Fn(&Value) -> bool) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter(|json| wanted(json))
            .count()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>`, as the README documents it.
fn sign(timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The other side of every channel, running on this machine (a webhook receiver,
/// WeChat's message API, the tenant's mail relay), and a copy of the repository's tenants
/// whose demo tenant has the channels the README's setup steps describe, pointed at them.
struct Counterparts {
    receiver: Receiver,
    api: PeerServer,
    relay: PeerServer,
    tenants: PathBuf,
    // Last: the peers stop before their files go.
    _dir: tempfile::TempDir,
}

impl Counterparts {
    /// The mail relay answers 451 to the first `deferred_mails` mails.
    async fn start(deferred_mails: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::default();
        let webhook_port = receiver.start().await;
        let api = PeerServer::wechat_api(dir.path());
        let relay = PeerServer::mail_relay(dir.path(), deferred_mails);
        let tenants = dir.path().join("tenants");
        copy_dir(&common::repo_root().join("tenants"), &tenants);
        let file = tenants.join("demo/tenant.toml");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&format!(
            r#"
[channels.webhook]
secret = {{ env = "DEMO_WEBHOOK_SECRET" }}
deliver_url = "http://127.0.0.1:{webhook_port}/replies"

[channels.wechat]
app_id = "{WECHAT_APP_ID}"
token = {{ env = "DEMO_WECHAT_TOKEN" }}
encoding_aes_key = {{ env = "DEMO_WECHAT_AES_KEY" }}
app_secret = {{ file = "{}" }}
api_base_url = "http://127.0.0.1:{}"

[channels.email]
address = "{SUPPORT_ADDRESS}"
from = "Demo Cloud Shop <{SUPPORT_ADDRESS}>"
relay = {{ host = "127.0.0.1", port = {}, tls = "none" }}
"#,
            dir.path().join("wechat-app-secret").display(),
            api.port,
            relay.port,
        ));
        std::fs::write(&file, text).unwrap();
        std::fs::write(
            dir.path().join("wechat-app-secret"),
            format!("{WECHAT_APP_SECRET}\n"),
        )
        .unwrap();
        Self {
            receiver,
            api,
            relay,
            tenants,
            _dir: dir,
        }
    }

    /// A stack on these tenants, with the secrets their channels name.
    fn configure(&self, stack: StackBuilder) -> StackBuilder {
        stack
            .tenants_dir(&self.tenants)
            .models_dir(&common::models_dir())
            .env("DEMO_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("DEMO_WECHAT_TOKEN", WECHAT_TOKEN)
            .env("DEMO_WECHAT_AES_KEY", WECHAT_AES_KEY)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn python() -> PathBuf {
    let venv = common::repo_root().join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing; `make tools` installs wechatpy",
        venv.display()
    );
    venv
}

/// A peer script serving on a free port (written to a file it names) and logging what it
/// takes as JSON lines, until dropped: WeChat's message API, the tenant's mail relay.
struct PeerServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerServer {
    fn start(dir: &Path, name: &str, script: &str, args: &[&str]) -> Self {
        let port_file = dir.join(format!("{name}-port"));
        let log = dir.join(format!("{name}.jsonl"));
        let child = Command::new(python())
            .arg(common::repo_root().join(script))
            .args(args)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .spawn()
            .unwrap_or_else(|error| panic!("{name} does not start: {error}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, port, log }
    }

    /// WeChat's message API; what it takes are the customer-service messages it accepted.
    fn wechat_api(dir: &Path) -> Self {
        let args = [
            "api",
            "--app-id",
            WECHAT_APP_ID,
            "--app-secret",
            WECHAT_APP_SECRET,
        ];
        Self::start(dir, "wechat-api", "tests/wechat_peer.py", &args)
    }

    /// The tenant's SMTP relay (aiosmtpd), answering 451 to its first `defer_first`
    /// mails; what it takes are the mails, as Python's email package reads them.
    fn mail_relay(dir: &Path, defer_first: usize) -> Self {
        let args = ["relay", "--defer-first", &defer_first.to_string()];
        Self::start(dir, "mail-relay", "tests/mail_peer.py", &args)
    }

    fn taken(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The first thing taken that matches `wanted`, waiting for it.
    async fn first_taken(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.taken().into_iter().find(|taken| wanted(taken)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "nothing such taken within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends a mail to kefu's SMTP listener with Python's smtplib; returns where it ended.
fn send_mail(smtp_port: u16, args: &[&str]) -> Value {
    let output = Command::new(python())
        .arg(common::repo_root().join("tests/mail_peer.py"))
        .args(["send", "--port", &smtp_port.to_string()])
        .args(args)
        .output()
        .expect("the mail client runs");
    assert!(
        output.status.success(),
        "the mail client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs the WeChat peer's `send` or `verify` and returns its JSON line.
fn wechat(url: &str, command: &str, args: &[&str]) -> Value {
    let mut run = Command::new(python());
    run.arg(common::repo_root().join("tests/wechat_peer.py"))
        .arg(command)
        .args(["--url", url, "--token", WECHAT_TOKEN]);
    if command == "send" {
        run.args(["--aes-key", WECHAT_AES_KEY, "--app-id", WECHAT_APP_ID]);
    }
    let output = run.args(args).output().expect("the WeChat peer runs");
    assert!(
        output.status.success(),
        "the WeChat peer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn post_webhook(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    timestamp: i64,
    secret_ok: bool,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let stamp = timestamp.to_string();
    let signature = if secret_ok {
        sign(&stamp, &body)
    } else {
        format!("v1={}", "0".repeat(64))
    };
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-kefu-timestamp", stamp)
        .header("x-kefu-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Checks `documents` against the documented JSON schema `docs/channels/<name>`.
fn conforms(name: &str, documents: &[&Value]) {
    let schema = common::repo_root().join("docs/channels").join(name);
    let output = Command::new(python())
        .args(["-c", "import json, sys, jsonschema\nschema = json.load(open(sys.argv[1]))\nfor line in sys.stdin:\n    jsonschema.validate(json.loads(line), schema, format_checker=jsonschema.FormatChecker())"])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            for document in documents {
                writeln!(stdin, "{document}")?;
            }
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        output.status.success(),
        "not as {name} documents: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn customer_message(message_id: &str, customer: &str, text: &str) -> Value {
    json!({ "message_id": message_id, "customer": { "id": customer }, "text": text })
}

async fn deliveries(
    channels: &mut ChannelServiceClient<common::KeyedChannel>,
    session_id: &str,
) -> ListDeliveriesResponse {
    channels
        .list_deliveries(ListDeliveriesRequest {
            tenant_id: "demo".into(),
            session_id: session_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Takes the queued ticket of `session_id` and answers it as the demo agent.
async fn agent_answers(
    tickets: &mut TicketServiceClient<common::KeyedChannel>,
    session_id: &str,
    text: &str,
) {
    let ticket = common::take_next(tickets).await;
    assert_eq!(
        ticket.session_id, session_id,
        "the queue holds another session's ticket"
    );
    tickets
        .reply_to_customer(ReplyToCustomerRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket.ticket_id.clone(),
            text: text.into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn webhook_and_wechat_customers_get_the_bot_and_agents_on_their_own_channel() {
    let peers = Counterparts::start(0).await;
    let (receiver, api) = (&peers.receiver, &peers.api);
    let stack = common::start(peers.configure(StackBuilder::all_in_one())).await;
    let endpoints = stack.channel_endpoints("channels");
    let gateway = common::channel(&stack.gateway()).await;
    let mut channels =
        ChannelServiceClient::with_interceptor(gateway.clone(), ApiKey(DEMO_AGENT_KEY));
    let mut tickets = TicketServiceClient::with_interceptor(gateway, ApiKey(DEMO_AGENT_KEY));
    // reqwest is built without a TLS provider of its own: ring, as the services use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let hook = format!("{endpoints}/webhooks/demo");

    // The bot answers a webhook customer on the tenant's URL, signed.
    let question = customer_message("wh-1", "cust-1", "How much does the Pro plan cost?");
    let (status, body) = post_webhook(&http, &hook, &question, unix_now(), true).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("accepted")),
        "{body}"
    );
    let reply = receiver.reply(|r| r["in_reply_to"] == "wh-1").await;
    assert_eq!(reply["role"], "bot");
    assert_eq!(reply["customer_id"], "cust-1");
    assert!(reply["text"].as_str().unwrap().contains("Pro"), "{reply}");
    let session = reply["session_id"].as_str().unwrap().to_owned();

    // The same message again is not taken twice; nothing is answered twice.
    let (status, body) = post_webhook(&http, &hook, &question, unix_now(), true).await;
    assert_eq!(status, 409, "{body}");

    // Refusals on HTTP's terms.
    let other = customer_message("wh-x", "cust-1", "hello");
    let stale = post_webhook(&http, &hook, &other, unix_now() - 600, true).await;
    assert_eq!(stale.0, 401, "{}", stale.1);
    assert!(stale.1["error"]
        .as_str()
        .unwrap()
        .contains("signed more than"));
    assert_eq!(
        post_webhook(&http, &hook, &other, unix_now(), false)
            .await
            .0,
        401
    );
    let nobody = format!("{endpoints}/webhooks/no-such-tenant");
    assert_eq!(
        post_webhook(&http, &nobody, &other, unix_now(), true)
            .await
            .0,
        404
    );
    let malformed = json!({ "message_id": "wh-y", "customer": {}, "text": "hi" });
    let (status, body) = post_webhook(&http, &hook, &malformed, unix_now(), true).await;
    assert_eq!(status, 400, "{body}");
    let huge = customer_message("wh-z", "cust-1", &"x".repeat(70 * 1024));
    assert_eq!(
        post_webhook(&http, &hook, &huge, unix_now(), true).await.0,
        413
    );
    let long = customer_message("wh-z", "cust-1", &"x".repeat(5000));
    let (status, body) = post_webhook(&http, &hook, &long, unix_now(), true).await;
    assert_eq!(status, 400, "{body}");

    // A receiver that fails first gets the reply on a later attempt.
    let flaky = customer_message("wh-2", "flaky", "What plans do you have?");
    assert_eq!(
        post_webhook(&http, &hook, &flaky, unix_now(), true).await.0,
        202
    );
    let retried = receiver.reply(|r| r["in_reply_to"] == "wh-2").await;
    let flaky_session = retried["session_id"].as_str().unwrap();
    let listed = deliveries(&mut channels, flaky_session).await;
    assert_eq!(listed.channel, Channel::Webhook as i32);
    let outbound: Vec<&Delivery> = listed
        .deliveries
        .iter()
        .filter(|d| d.direction == DeliveryDirection::Outbound as i32)
        .collect();
    assert_eq!(outbound.len(), 1, "{listed:?}");
    assert_eq!(outbound[0].status, DeliveryStatus::Delivered as i32);
    assert_eq!(outbound[0].attempts, 2, "{listed:?}");

    // A hand-off: the acknowledgement, then the agent's reply on the webhook.
    let human = customer_message("wh-3", "cust-1", "I want to talk to a human agent please");
    assert_eq!(
        post_webhook(&http, &hook, &human, unix_now(), true).await.0,
        202
    );
    let ack = receiver.reply(|r| r["in_reply_to"] == "wh-3").await;
    assert_eq!(ack["session_id"].as_str(), Some(session.as_str()), "{ack}");
    agent_answers(&mut tickets, &session, "Hi, Anna from support here.").await;
    let agent = receiver.reply(|r| r["role"] == "agent").await;
    assert_eq!(agent["text"], "Hi, Anna from support here.");
    assert_eq!(agent["agent_id"], "demo-agent");
    assert_eq!(agent["customer_id"], "cust-1");
    conforms("webhook-inbound.schema.json", &[&question, &human]);
    conforms(
        "webhook-outbound.schema.json",
        &[&reply, &ack, &agent, &retried],
    );
    let listed = deliveries(&mut channels, &session).await;
    let summary: Vec<(i32, i32, i32)> = listed
        .deliveries
        .iter()
        .map(|d| (d.direction, d.role, d.status))
        .collect();
    let (inbound, out, delivered) = (
        DeliveryDirection::Inbound as i32,
        DeliveryDirection::Outbound as i32,
        DeliveryStatus::Delivered as i32,
    );
    for expected in [
        (inbound, Role::Customer as i32, delivered),
        (out, Role::Bot as i32, delivered),
        (out, Role::Agent as i32, delivered),
    ] {
        assert!(
            summary.contains(&expected),
            "{expected:?} not in {summary:?}"
        );
    }
    assert_eq!(
        receiver.count(|r| r["in_reply_to"] == "wh-1"),
        1,
        "answered twice"
    );

    // WeChat: URL verification, then a follower's message in safe mode, answered by a
    // passive reply that wechatpy decrypts and checks.
    let wechat_url = format!("{endpoints}/wechat/demo");
    let verified = wechat(&wechat_url, "verify", &[]);
    assert_eq!(verified["echoed"], true, "{verified}");
    let send = |msg_id: &str, text: &str, extra: &[&str]| {
        let mut args = vec!["--openid", "oFollower1", "--msg-id", msg_id, "--text", text];
        args.extend_from_slice(extra);
        wechat(&wechat_url, "send", &args)
    };
    let passive = send("6001", "How much does the Pro plan cost?", &[]);
    assert_eq!(passive["status"], 200, "{passive}");
    assert!(
        passive["reply"]
            .as_str()
            .unwrap_or_default()
            .contains("Pro"),
        "{passive}"
    );
    // WeChat's retry of the same MsgId: "success", and nothing sent twice.
    let again = send("6001", "How much does the Pro plan cost?", &[]);
    assert_eq!(
        (again["status"].as_i64(), again["body"].as_str()),
        (Some(200), Some("success"))
    );
    assert!(api.taken().is_empty(), "{:?}", api.taken());
    // Refusals on WeChat's terms.
    assert_eq!(send("6002", "hi", &["--bad-signature"])["status"], 401);
    assert_eq!(send("6003", "hi", &["--stale"])["status"], 401);
    assert_eq!(send("6004", "hi", &["--plain"])["status"], 400);

    // A hand-off on WeChat: the agent's reply arrives as a customer-service message.
    let handed = send("6005", "我要人工客服", &[]);
    assert_eq!(handed["status"], 200, "{handed}");
    let wechat_session = {
        let deadline = Instant::now() + WAIT;
        loop {
            let queue = tickets
                .list_tickets(ListTicketsRequest {
                    tenant_id: "demo".into(),
                    customer_id: "wechat:oFollower1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if let Some(ticket) = queue.tickets.first() {
                break ticket.session_id.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no ticket for the WeChat customer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    agent_answers(&mut tickets, &wechat_session, "您好，我是客服小王。").await;
    let deadline = Instant::now() + WAIT;
    let sent = loop {
        if let Some(message) = api
            .taken()
            .into_iter()
            .find(|m| m["text"]["content"] == "您好，我是客服小王。")
        {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's reply never reached WeChat's API"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sent["touser"], "oFollower1");
    assert_eq!(sent["msgtype"], "text");
    let listed = deliveries(&mut channels, &wechat_session).await;
    assert_eq!(listed.channel, Channel::Wechat as i32);
    assert!(listed
        .deliveries
        .iter()
        .any(|d| d.role == Role::Agent as i32 && d.status == DeliveryStatus::Delivered as i32));

    // Staff only: a customer key cannot list deliveries.
    let open = common::channel(&stack.gateway()).await;
    let refused = ChannelServiceClient::new(open)
        .list_deliveries(ListDeliveriesRequest {
            tenant_id: "demo".into(),
            session_id: session.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}

/// The session of the customer's queued ticket.
async fn ticket_session(
    tickets: &mut TicketServiceClient<common::KeyedChannel>,
    customer_id: &str,
) -> Ticket {
    let deadline = Instant::now() + WAIT;
    loop {
        let queue = tickets
            .list_tickets(ListTicketsRequest {
                tenant_id: "demo".into(),
                customer_id: customer_id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(ticket) = queue.tickets.into_iter().next() {
            return ticket;
        }
        assert!(Instant::now() < deadline, "no ticket for {customer_id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn email_customers_get_threaded_replies_from_the_bot_and_agents_and_automatic_mail_is_never_answered(
) {
    // The relay defers the first reply with 451: kefu must try again.
    let peers = Counterparts::start(1).await;
    let relay = &peers.relay;
    // A certificate for the listener's STARTTLS.
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (certs.path().join("smtp.crt"), certs.path().join("smtp.key"));
    std::fs::write(&cert_file, certificate.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let stack = common::start(
        peers
            .configure(StackBuilder::all_in_one())
            .env("KEFU_CHANNELS_SMTP_TLS_CERT", cert_file.to_str().unwrap())
            .env("KEFU_CHANNELS_SMTP_TLS_KEY", key_file.to_str().unwrap()),
    )
    .await;
    let smtp = stack.smtp_listener("channels").port();
    let gateway = common::channel(&stack.gateway()).await;
    let mut channels =
        ChannelServiceClient::with_interceptor(gateway.clone(), ApiKey(DEMO_AGENT_KEY));
    let mut tickets = TicketServiceClient::with_interceptor(gateway, ApiKey(DEMO_AGENT_KEY));
    let ana = "ana@customer.example";

    // A first mail: taken (250), answered by the bot in the thread, from the tenant's
    // address, marked as an automatic reply, with a text and an HTML part.
    let first = [
        "--from",
        "Ana Li <ana@customer.example>",
        "--to",
        SUPPORT_ADDRESS,
        "--subject",
        "Question about plans",
        "--message-id",
        "<ana-1@customer.example>",
        "--text",
        "Hi,\n\nHow much does the Pro plan cost?\n\n-- \nAna Li\nCustomer Ltd\n",
    ];
    let taken = send_mail(smtp, &first);
    assert_eq!(
        (taken["stage"].as_str(), taken["code"].as_i64()),
        (Some("done"), Some(250)),
        "{taken}"
    );
    let reply = relay
        .first_taken(|m| m["in_reply_to"] == "<ana-1@customer.example>")
        .await;
    assert_eq!(reply["rcpt_to"], json!([ana]), "{reply}");
    assert_eq!(reply["mail_from"], SUPPORT_ADDRESS);
    assert_eq!(
        reply["from"],
        format!("Demo Cloud Shop <{SUPPORT_ADDRESS}>")
    );
    assert_eq!(reply["subject"], "Re: Question about plans");
    assert_eq!(reply["references"], json!(["<ana-1@customer.example>"]));
    assert_eq!(reply["auto_submitted"], "auto-replied");
    let our_id = reply["message_id"].as_str().unwrap().to_owned();
    assert!(our_id.ends_with("@demo.example>"), "{our_id}");
    assert!(reply["text"].as_str().unwrap().contains("Pro"), "{reply}");
    assert!(reply["html"].as_str().unwrap().contains("<p>"), "{reply}");
    // The sending server did not hear the 250 and sends it again: taken, not answered twice.
    assert_eq!(send_mail(smtp, &first)["code"], 250);

    // Refusals on SMTP's terms.
    let refused = send_mail(
        smtp,
        &["--from", ana, "--to", "nobody@demo.example", "--text", "hi"],
    );
    assert_eq!(
        (refused["stage"].as_str(), refused["code"].as_i64()),
        (Some("rcpt"), Some(550)),
        "{refused}"
    );
    let refused = send_mail(
        smtp,
        &[
            "--from",
            ana,
            "--to",
            SUPPORT_ADDRESS,
            "--size",
            "20000000",
            "--text",
            "hi",
        ],
    );
    assert_eq!(
        (refused["stage"].as_str(), refused["code"].as_i64()),
        (Some("mail"), Some(552)),
        "{refused}"
    );
    let refused = send_mail(
        smtp,
        &[
            "--from",
            ana,
            "--no-from",
            "--to",
            SUPPORT_ADDRESS,
            "--text",
            "hi",
        ],
    );
    assert_eq!(
        (refused["stage"].as_str(), refused["code"].as_i64()),
        (Some("data"), Some(550)),
        "{refused}"
    );
    assert!(
        refused["reply"].as_str().unwrap().starts_with("5.1.7"),
        "{refused}"
    );

    // Automatic mail is taken and never answered: an out-of-office, a bounce, a list.
    for automatic in [
        vec![
            "--from",
            "ooo@customer.example",
            "--header",
            "Auto-Submitted: auto-replied",
            "--subject",
            "Out of office",
            "--text",
            "I am away until Monday.",
        ],
        vec![
            "--from",
            "MAILER-DAEMON@mx.customer.example",
            "--null-sender",
            "--subject",
            "Undelivered Mail",
            "--text",
            "Your message could not be delivered.",
        ],
        vec![
            "--from",
            "news@lists.example",
            "--header",
            "List-Id: <news.lists.example>",
            "--subject",
            "Weekly news",
            "--text",
            "How much does the Pro plan cost? Read on.",
        ],
    ] {
        let mut args = automatic.clone();
        args.extend(["--to", SUPPORT_ADDRESS]);
        let taken = send_mail(smtp, &args);
        assert_eq!(taken["code"], 250, "{taken}");
    }

    // Ana answers in the thread (her server uses STARTTLS), in GB18030 HTML with her
    // client's quote of our reply and an attachment, and asks for a person: the same
    // session is handed off.
    let references = format!("<ana-1@customer.example> {our_id}");
    let second = send_mail(
        smtp,
        &[
            "--from", ana, "--to", SUPPORT_ADDRESS, "--subject", "Re: Question about plans",
            "--message-id", "<ana-2@customer.example>", "--in-reply-to", &our_id,
            "--references", &references, "--charset", "gb18030",
            "--html", "<html><body><p>我要人工客服，退款两周了还没到。</p><div>在 2026年12月7日 10:00，Demo Cloud Shop 写道：</div><blockquote>旧内容：专业版价格</blockquote></body></html>",
            "--attach", "receipt.pdf", "--starttls", cert_file.to_str().unwrap(),
        ],
    );
    assert_eq!(second["code"], 250, "{second}");
    // Her server encrypted it: STARTTLS with the listener's certificate, not offered twice.
    assert!(
        second["tls"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{second}"
    );
    assert_eq!(second["starttls_offered_again"], false, "{second}");
    let ticket = ticket_session(&mut tickets, &format!("email:{ana}")).await;
    let acknowledged = relay
        .first_taken(|m| m["in_reply_to"] == "<ana-2@customer.example>")
        .await;
    assert_eq!(
        acknowledged["references"],
        json!([
            "<ana-1@customer.example>",
            our_id,
            "<ana-2@customer.example>"
        ])
    );
    let conversation = tickets
        .get_conversation(GetConversationRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket.ticket_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let written: Vec<&str> = conversation
        .entries
        .iter()
        .filter(|entry| entry.role == Role::Customer as i32)
        .map(|entry| entry.text.as_str())
        .collect();
    assert!(
        written[0].contains("How much does the Pro plan cost?")
            && !written[0].contains("Customer Ltd"),
        "{written:?}"
    );
    let handed = written.last().unwrap();
    assert!(
        handed.contains("我要人工客服，退款两周了还没到。"),
        "{written:?}"
    );
    assert!(
        !handed.contains("旧内容"),
        "the quoted history was read: {handed}"
    );
    assert!(
        handed.contains("[attachment not read: receipt.pdf (application/pdf"),
        "{handed}"
    );

    // The agent's reply goes by mail in the same thread, not marked automatic.
    agent_answers(
        &mut tickets,
        &ticket.session_id,
        "Hello Ana, I am checking your refund now.",
    )
    .await;
    let answered = relay
        .first_taken(|m| {
            m["text"]
                .as_str()
                .is_some_and(|t| t.contains("checking your refund"))
        })
        .await;
    assert_eq!(answered["in_reply_to"], "<ana-2@customer.example>");
    assert_eq!(answered["auto_submitted"], "");
    assert_eq!(answered["rcpt_to"], json!([ana]));

    // Someone else answering Ana's message does not join her session.
    let other = send_mail(
        smtp,
        &[
            "--from",
            "mallory@customer.example",
            "--to",
            SUPPORT_ADDRESS,
            "--subject",
            "Re: Question about plans",
            "--message-id",
            "<mallory-1@customer.example>",
            "--in-reply-to",
            "<ana-1@customer.example>",
            "--text",
            "How much does the Pro plan cost?",
        ],
    );
    assert_eq!(other["code"], 250, "{other}");
    relay
        .first_taken(|m| m["in_reply_to"] == "<mallory-1@customer.example>")
        .await;

    // Ana's session: her two mails, the bot's first reply through on its second attempt
    // (after the relay's 451), the acknowledgement and the agent's reply, delivered.
    let listed = deliveries(&mut channels, &ticket.session_id).await;
    assert_eq!(listed.channel, Channel::Email as i32);
    let inbound = listed
        .deliveries
        .iter()
        .filter(|d| d.direction == DeliveryDirection::Inbound as i32)
        .count();
    assert_eq!(inbound, 2, "{:?}", listed.deliveries);
    let first_reply = listed
        .deliveries
        .iter()
        .find(|d| d.role == Role::Bot as i32)
        .unwrap();
    assert_eq!(
        (first_reply.status, first_reply.attempts),
        (DeliveryStatus::Delivered as i32, 2),
        "{first_reply:?}"
    );
    assert!(listed
        .deliveries
        .iter()
        .any(|d| d.role == Role::Agent as i32 && d.status == DeliveryStatus::Delivered as i32));

    let mails = relay.taken();
    assert_eq!(
        mails
            .iter()
            .filter(|m| m["in_reply_to"] == "<ana-1@customer.example>")
            .count(),
        1,
        "answered twice"
    );
    for silent in [
        "ooo@customer.example",
        "mx.customer.example",
        "news@lists.example",
    ] {
        assert!(
            !mails
                .iter()
                .any(|m| m["to"].as_str().unwrap_or_default().contains(silent)),
            "automatic mail from {silent} was answered"
        );
    }
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}

const BURST_WEBHOOK: usize = 30;
const BURST_WECHAT: usize = 12;
const BURST_EMAIL: usize = 12;
/// How long each killed process stays down.
const OUTAGE: Duration = Duration::from_secs(3);
/// Until every message of the burst has its one reply: leases of a killed worker run out
/// after 30 s.
const SETTLE: Duration = Duration::from_secs(90);

/// Posts one webhook message until kefu has it (202, or 409 when an earlier attempt got
/// through but its answer was lost); returns the attempts it took.
async fn post_until_taken(http: &reqwest::Client, url: &str, message: &Value) -> usize {
    for attempt in 1.. {
        let body = serde_json::to_vec(message).unwrap();
        let stamp = unix_now().to_string();
        let sent = http
            .post(url)
            .header("content-type", "application/json")
            .header("x-kefu-timestamp", &stamp)
            .header("x-kefu-signature", sign(&stamp, &body))
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await;
        if let Ok(response) = sent {
            match response.status().as_u16() {
                202 | 409 => return attempt,
                503 => {}
                other => panic!("the webhook answered {other} to a good message"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn a_burst_over_all_channels_loses_nothing_and_answers_nothing_twice_while_channels_and_gateway_restart(
) {
    let peers = Counterparts::start(0).await;
    let (receiver, api, relay) = (&peers.receiver, &peers.api, &peers.relay);
    let mut stack = common::start(
        peers
            .configure(StackBuilder::each_service())
            .env("KEFU_CALL_TIMEOUT_MS", "3000")
            .env("RUST_LOG", "warn")
            .serving(&common::Service::ALL.map(common::Service::name)),
    )
    .await;
    let endpoints = stack.channel_endpoints("channels");
    let _ = rustls::crypto::ring::default_provider().install_default();

    let hook = format!("{endpoints}/webhooks/demo");
    let webhooks = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut attempts = 0;
        for n in 0..BURST_WEBHOOK {
            let message = customer_message(
                &format!("burst-{n}"),
                &format!("burst-{n}"),
                "What plans do you have?",
            );
            attempts += post_until_taken(&http, &hook, &message).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        attempts
    });
    let wechat_url = format!("{endpoints}/wechat/demo");
    let wechats = tokio::task::spawn_blocking(move || {
        let (mut attempts, mut passive) = (0, BTreeMap::new());
        for n in 0..BURST_WECHAT {
            let open_id = format!("oBurst{n}");
            let msg_id = (7000 + n).to_string();
            loop {
                attempts += 1;
                let sent = wechat(
                    &wechat_url,
                    "send",
                    &[
                        "--openid",
                        &open_id,
                        "--msg-id",
                        &msg_id,
                        "--text",
                        "How much does the Pro plan cost?",
                    ],
                );
                if sent["status"] == 200 {
                    if let Some(reply) = sent["reply"].as_str() {
                        passive.insert(open_id.clone(), reply.to_owned());
                    }
                    break;
                }
                // No answer (kefu restarting): WeChat sends the same MsgId again.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        (attempts, passive)
    });
    // Mail, sent again with the same Message-ID until taken, as a mail server does.
    let smtp = stack.smtp_listener("channels").port();
    let mails = std::thread::spawn(move || {
        let output = Command::new(python())
            .arg(common::repo_root().join("tests/mail_peer.py"))
            .args([
                "burst",
                "--port",
                &smtp.to_string(),
                "--to",
                SUPPORT_ADDRESS,
            ])
            .args([
                "--count",
                &BURST_EMAIL.to_string(),
                "--prefix",
                "burst-mail",
            ])
            .args(["--text", "What plans do you have?"])
            .output()
            .expect("the mail client runs");
        assert!(
            output.status.success(),
            "the mail burst failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()["attempts"]
            .as_u64()
            .unwrap()
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.kill("channels");
    tokio::time::sleep(OUTAGE).await;
    stack.restart("channels").unwrap();
    stack.wait_until_serving("channels").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stack.kill("gateway");
    tokio::time::sleep(OUTAGE).await;
    stack.restart("gateway").unwrap();
    stack.wait_until_serving("gateway").await.unwrap();

    let webhook_attempts = webhooks.await.unwrap();
    let (wechat_attempts, passive) = wechats.await.unwrap();
    let mail_attempts = mails.join().unwrap();
    let mail_answered = |n: usize| format!("<burst-mail-{n}@customer.example>");

    // Every message gets its reply, once: webhook replies by the message they answer
    // (a delivery resent after a crash keeps its delivery_id), WeChat's by follower.
    let deadline = Instant::now() + SETTLE;
    let (webhook_replies, resent, wechat_api) = loop {
        let mut by_message: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut raw = 0;
        for received in receiver.got.lock().unwrap().iter() {
            let json: Value = serde_json::from_slice(&received.body).unwrap();
            if let Some(answered) = json["in_reply_to"]
                .as_str()
                .filter(|id| id.starts_with("burst-"))
            {
                raw += 1;
                by_message
                    .entry(answered.to_owned())
                    .or_default()
                    .insert(json["delivery_id"].as_str().unwrap().to_owned());
            }
        }
        let api_messages = api.taken();
        let wechat_done = (0..BURST_WECHAT).all(|n| {
            let open_id = format!("oBurst{n}");
            passive.contains_key(&open_id) || api_messages.iter().any(|m| m["touser"] == open_id)
        });
        let relayed = relay.taken();
        let mail_done =
            (0..BURST_EMAIL).all(|n| relayed.iter().any(|m| m["in_reply_to"] == mail_answered(n)));
        if by_message.len() == BURST_WEBHOOK && wechat_done && mail_done {
            break (by_message, raw - BURST_WEBHOOK, api_messages);
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE:?}: {} of {BURST_WEBHOOK} webhook messages, {} of {BURST_EMAIL} mails and {} WeChat followers answered",
            by_message.len(),
            (0..BURST_EMAIL)
                .filter(|&n| relayed.iter().any(|m| m["in_reply_to"] == mail_answered(n)))
                .count(),
            (0..BURST_WECHAT)
                .filter(|n| passive.contains_key(&format!("oBurst{n}"))
                    || api_messages.iter().any(|m| m["touser"] == format!("oBurst{n}")))
                .count()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (message, deliveries) in &webhook_replies {
        assert_eq!(deliveries.len(), 1, "{message} answered by {deliveries:?}");
    }
    for n in 0..BURST_WECHAT {
        let open_id = format!("oBurst{n}");
        let sent = wechat_api.iter().filter(|m| m["touser"] == open_id).count()
            + usize::from(passive.contains_key(&open_id));
        assert_eq!(sent, 1, "{open_id} got {sent} replies");
    }
    // A reply resent after a crash keeps its Message-ID: the customer's client shows it once.
    let relayed = relay.taken();
    let mut resent_mails = 0;
    for n in 0..BURST_EMAIL {
        let replies: Vec<&Value> = relayed
            .iter()
            .filter(|m| m["in_reply_to"] == mail_answered(n))
            .collect();
        let distinct: BTreeSet<&str> = replies
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        assert_eq!(distinct.len(), 1, "mail {n} answered by {distinct:?}");
        resent_mails += replies.len() - 1;
    }
    println!(
        "webhook: {BURST_WEBHOOK} messages in {webhook_attempts} attempts, {} answered once each ({resent} deliveries resent with the same delivery_id)",
        webhook_replies.len()
    );
    println!(
        "wechat: {BURST_WECHAT} messages in {wechat_attempts} attempts, {} passive replies, {} customer-service messages, 0 twice",
        passive.len(),
        wechat_api.len()
    );
    println!(
        "email: {BURST_EMAIL} mails in {mail_attempts} attempts, each answered by one Message-ID ({resent_mails} replies resent with the same Message-ID)"
    );
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}
