//! Starts the whole kefu stack (six gRPC servers on free loopback ports, an embedded
//! SQLite database in a temporary directory) once per test binary, and hands out
//! clients of the gateway, as a customer's application would use it.
#![allow(dead_code)]

pub mod dependencies;
pub mod processes;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use kefu_proto::v1::conversation_service_client::ConversationServiceClient;
use kefu_proto::v1::ticket_service_client::TicketServiceClient;
use kefu_proto::v1::{Channel as MessageChannel, SendMessageRequest, SendMessageResponse};
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;

pub struct Stack {
    pub gateway: String,
    pub gateway_port: u16,
    _data: tempfile::TempDir,
}

static STACK: OnceLock<Stack> = OnceLock::new();

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Distinct free ports: all listeners are held until every port is chosen.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The stack of this test binary, started on first use and ready (gateway SERVING).
pub fn stack() -> &'static Stack {
    STACK.get_or_init(|| launch(repo_root().join("tenants")))
}

/// Starts a stack serving the tenants of `tenants_dir`.
pub fn launch(tenants_dir: PathBuf) -> Stack {
    {
        let data = tempfile::tempdir().expect("a temporary data directory");
        let ports: [u16; 6] = free_ports();
        let root = repo_root();
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
        .zip(&ports)
        {
            args.push(flag.to_string());
            args.push(port.to_string());
        }
        args.extend([
            "--metrics-base-port".into(),
            "0".into(),
            // No pages: tests of the pages start their own stack.
            "--web-port".into(),
            "0".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
            "--database-url".into(),
            format!("sqlite://{}/kefu.db?mode=rwc", data.path().display()),
            "--tenants-dir".into(),
            tenants_dir.display().to_string(),
            "--models-dir".into(),
            std::env::var("KEFU_MODELS_DIR")
                .unwrap_or_else(|_| root.join("models").display().to_string()),
        ]);
        let up_args = kefu::UpArgs::parse_from(args);
        let gateway = format!("http://127.0.0.1:{}", ports[0]);
        let (serving, ready) = std::sync::mpsc::channel();
        let url = gateway.clone();
        // The servers live on their own runtime for the whole test binary.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let shutdown = kefu_runtime::Shutdown::new();
                let servers = kefu::up(up_args, shutdown.clone())
                    .await
                    .expect("the stack starts");
                wait_until_serving(&url).await;
                serving.send(()).unwrap();
                for server in servers {
                    let _ = server.wait().await;
                }
            });
        });
        ready
            .recv_timeout(STARTUP_LIMIT)
            .expect("the stack becomes SERVING in time");
        Stack {
            gateway,
            gateway_port: ports[0],
            _data: data,
        }
    }
}

/// Model loading and training happen at start; on this 2-core machine that takes well under this.
const STARTUP_LIMIT: Duration = Duration::from_secs(300);

/// Polls the gateway's health until it (and so everything behind it) is SERVING.
async fn wait_until_serving(url: &str) {
    while health_status(url).await != Some(ServingStatus::Serving) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The overall gRPC health status of the server at `url`; None when it cannot be reached.
pub async fn health_status(url: &str) -> Option<ServingStatus> {
    let channel = Channel::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

pub async fn conversations() -> ConversationServiceClient<Channel> {
    ConversationServiceClient::connect(stack().gateway.clone())
        .await
        .expect("connect to the gateway")
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

async fn gateway_channel() -> Channel {
    Channel::from_shared(stack().gateway.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway")
}

/// The ticket API as the demo tenant's agent ("demo-agent") uses it.
pub async fn tickets() -> TicketServiceClient<KeyedChannel> {
    TicketServiceClient::with_interceptor(gateway_channel().await, ApiKey(DEMO_AGENT_KEY))
}

/// The ticket API with the demo tenant's admin key (VIP tiers).
pub async fn admin_tickets() -> TicketServiceClient<KeyedChannel> {
    TicketServiceClient::with_interceptor(gateway_channel().await, ApiKey(DEMO_ADMIN_KEY))
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
