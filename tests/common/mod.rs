//! Test conveniences on top of `kefu::stack`: stacks on the repository's tenants and
//! models, the one stack a test binary shares (`kefu up`, started on first use), the
//! binaries to start, and clients of a gateway as a customer's application and an
//! agent's or admin's tool use them.
#![allow(dead_code)]

pub mod dependencies;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

// Each test binary uses its own part of these.
#[allow(unused_imports)]
pub use kefu::stack::{
    free_ports, health_status, Instance, Service, ServingStatus, Stack, StackBuilder,
};
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::{
    Channel as MessageChannel, ConversationEvent, GetSessionRequest, GetSessionResponse,
    GetTicketRequest, ListTicketsRequest, NextInQueueRequest, SendMessageRequest,
    SendMessageResponse, StreamEventsRequest, Ticket,
};
use tonic::transport::Channel;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The model directory the services load from, checked to hold the encoder.
pub fn models_dir() -> PathBuf {
    let models = std::env::var("KEFU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("models"));
    assert!(
        models.join("all-MiniLM-L6-v2/model.safetensors").is_file(),
        "the MiniLM model is missing under {}; `make models` fetches it",
        models.display()
    );
    models
}

/// `builder` on the repository's tenants and models.
pub fn on_repository(builder: StackBuilder) -> StackBuilder {
    builder
        .tenants_dir(&repo_root().join("tenants"))
        .models_dir(&models_dir())
}

/// Where cargo put the `kefu` binary it built for these tests: enough for `kefu up`.
pub fn kefu_binaries() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kefu"))
        .parent()
        .expect("the kefu binary's directory")
}

/// Builds the workspace's binaries with the profile of this test (a no-op when they are
/// up to date), so that a test never runs service binaries older than the code under
/// test, and returns their directory (target/<profile>/). The whole workspace, not the
/// six packages alone: with the same package selection as `cargo test --workspace`,
/// dependencies keep their features and are not built again.
pub fn service_binaries() -> PathBuf {
    let dir = kefu_binaries().to_path_buf();
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(profile) => profile,
        None => "release",
    };
    let target_dir = dir.parent().expect("target/<profile> has a parent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    // What cargo sets for a running test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, OUT_DIR…)
    // is not the environment of a build: build scripts that watch those names (ring's
    // does) would run again, and everything above them be rebuilt here and once more by
    // the next `cargo build` from a shell.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
        .current_dir(repo_root())
        .args(["build", "--workspace", "--bins", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run {cargo} to build the service binaries: {error}")
        });
    assert!(status.success(), "building the service binaries failed ({status}); run `cargo build --release --workspace` to see why");
    dir
}

/// Starts a stack of service instances from the binaries of this build.
pub async fn start(builder: StackBuilder) -> Stack {
    builder
        .start(&service_binaries())
        .await
        .unwrap_or_else(|error| panic!("the stack does not start: {error:#}"))
}

/// Starts a `kefu up` stack from synchronous code as well as from inside a test's runtime.
pub fn start_blocking(builder: StackBuilder) -> Stack {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(builder.start(kefu_binaries()))
    })
    .join()
    .expect("the starting thread")
    .unwrap_or_else(|error| panic!("the stack does not start: {error:#}"))
}

/// The stack of this test binary (`kefu up` on the repository's tenants, SQLite), started
/// on first use and SERVING.
pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| start_blocking(on_repository(StackBuilder::all_in_one())))
}

/// The bundled demo tenant's published keys (README).
pub const DEMO_AGENT_KEY: &str = "demo-agent-key";
pub const DEMO_ADMIN_KEY: &str = "demo-admin-key";

/// Adds `authorization: Bearer <key>` to every call, as an agent's or admin's tool does.
#[derive(Clone)]
pub struct ApiKey(pub &'static str);

impl tonic::service::Interceptor for ApiKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0).parse().expect("an ASCII key");
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

pub type KeyedChannel = tonic::codegen::InterceptedService<Channel, ApiKey>;

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

/// The conversation API of the gateway at `url`, as a customer's application uses it.
pub async fn conversations_at(url: &str) -> ConversationServiceClient<Channel> {
    ConversationServiceClient::new(channel(url).await)
}

/// The ticket API of the gateway at `url` with `key`.
pub async fn tickets_at(url: &str, key: &'static str) -> TicketServiceClient<KeyedChannel> {
    TicketServiceClient::with_interceptor(channel(url).await, ApiKey(key))
}

pub async fn conversations() -> ConversationServiceClient<Channel> {
    conversations_at(&stack().gateway()).await
}

/// The ticket API as the demo tenant's agent ("demo-agent") uses it.
pub async fn tickets() -> TicketServiceClient<KeyedChannel> {
    tickets_at(&stack().gateway(), DEMO_AGENT_KEY).await
}

/// The ticket API with the demo tenant's admin key (VIP tiers).
pub async fn admin_tickets() -> TicketServiceClient<KeyedChannel> {
    tickets_at(&stack().gateway(), DEMO_ADMIN_KEY).await
}

/// A demo ticket by id, as the agent reads it.
pub async fn ticket(tickets: &mut TicketServiceClient<KeyedChannel>, ticket_id: &str) -> Ticket {
    tickets
        .get_ticket(GetTicketRequest {
            tenant_id: "demo".into(),
            ticket_id: ticket_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ticket
        .expect("a ticket")
}

/// The demo tickets of a customer.
pub async fn tickets_of(
    tickets: &mut TicketServiceClient<KeyedChannel>,
    customer: &str,
) -> Vec<Ticket> {
    tickets
        .list_tickets(ListTicketsRequest {
            tenant_id: "demo".into(),
            customer_id: customer.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickets
}

/// The agent takes the first ticket of the demo tenant's queue.
pub async fn take_next(tickets: &mut TicketServiceClient<KeyedChannel>) -> Ticket {
    tickets
        .next_in_queue(NextInQueueRequest {
            tenant_id: "demo".into(),
            take: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ticket
        .expect("a ticket in the queue")
}

/// A demo session as `customer` reads it.
pub async fn session(
    conversations: &mut ConversationServiceClient<Channel>,
    customer: &str,
    session_id: &str,
) -> Result<GetSessionResponse, tonic::Status> {
    conversations
        .get_session(GetSessionRequest {
            tenant_id: "demo".into(),
            customer_id: customer.into(),
            session_id: session_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A customer's live events of a demo session at the gateway at `url`, after `after`.
pub async fn events_at(
    url: &str,
    customer: &str,
    session_id: &str,
    after: i64,
) -> Result<tonic::Streaming<ConversationEvent>, tonic::Status> {
    conversations_at(url)
        .await
        .stream_events(StreamEventsRequest {
            tenant_id: "demo".into(),
            customer_id: customer.into(),
            session_id: session_id.into(),
            after_event_id: after,
        })
        .await
        .map(tonic::Response::into_inner)
}

pub fn message(customer: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        tenant_id: "demo".into(),
        customer_id: customer.into(),
        channel: MessageChannel::Web as i32,
        text: text.into(),
        ..Default::default()
    }
}

pub async fn send(request: SendMessageRequest) -> Result<SendMessageResponse, tonic::Status> {
    conversations()
        .await
        .send_message(request)
        .await
        .map(|r| r.into_inner())
}

/// The metrics page at `address`, fetched over a plain TCP connection (HTTP/1.1).
pub async fn metrics_text(address: SocketAddr) -> String {
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

/// Keys of one test under their own prefix in the real Redis, deleted afterwards.
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    pub fn new() -> Self {
        Self(format!("kefu-test-{}:", uuid::Uuid::new_v4().simple()))
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.0);
        if let Ok(keys) = std::process::Command::new("redis-cli")
            .args(["--scan", "--pattern", &pattern])
            .output()
        {
            for key in String::from_utf8_lossy(&keys.stdout).lines() {
                let _ = std::process::Command::new("redis-cli")
                    .args(["del", key])
                    .output();
            }
        }
    }
}
