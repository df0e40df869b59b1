//! A private kefu on free loopback ports, as `kefu eval escalation` and the end-to-end,
//! replica and fault tests run it: `kefu up` (the six services in one process) or every
//! service instance a process of its own, wired to its peers, on a private data
//! directory and an SQLite file in it (or a database it is given), started when ready.
//! Instances can be killed and restarted one by one, as a crash and a new pod would.
//!
//! ```no_run
//! # async fn example(binaries: &std::path::Path) -> anyhow::Result<()> {
//! use kefu::stack::{Instance, Service, StackBuilder};
//! let mut stack = StackBuilder::instances([
//!     Instance::new("ticket-a", Service::Ticket),
//!     Instance::new("ticket-b", Service::Ticket),
//!     Instance::new("orchestrator", Service::Orchestrator).calls(Service::Ticket, "ticket-b"),
//! ])
//! .database_url("postgres://postgres@127.0.0.1:5432/kefu_test")
//! .env("RUST_LOG", "warn")
//! .serving(&["ticket-a", "ticket-b"])
//! .start(binaries)
//! .await?;
//! stack.kill("ticket-b");
//! stack.restart("ticket-b")?;
//! stack.wait_until_serving("ticket-b").await?;
//! # Ok(())
//! # }
//! ```
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;

/// Model loading and intent training at start take a while on a small machine.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(300);

/// Where a caller's peer is not part of the stack: nothing listens on port 1, so the peer
/// is unreachable, never a kefu that happens to run on the default ports.
const NOBODY: &str = "http://127.0.0.1:1";

/// Settings a developer's shell may carry that would change what the services do.
const INHERITED_NOISE: [&str; 5] = [
    "REDIS_URL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_SDK_DISABLED",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Gateway,
    Orchestrator,
    Router,
    Knowledge,
    Ticket,
    Sentiment,
    Channels,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Gateway,
        Service::Orchestrator,
        Service::Router,
        Service::Knowledge,
        Service::Ticket,
        Service::Sentiment,
        Service::Channels,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Orchestrator => "orchestrator",
            Service::Router => "router",
            Service::Knowledge => "knowledge",
            Service::Ticket => "ticket",
            Service::Sentiment => "sentiment",
            Service::Channels => "channels",
        }
    }

    /// What this service calls (the deployment's wiring).
    fn peers(self) -> &'static [Service] {
        match self {
            Service::Gateway => &[
                Service::Orchestrator,
                Service::Ticket,
                Service::Knowledge,
                Service::Router,
                Service::Channels,
            ],
            Service::Orchestrator => &[
                Service::Router,
                Service::Sentiment,
                Service::Knowledge,
                Service::Ticket,
            ],
            Service::Channels => &[Service::Gateway],
            Service::Router | Service::Knowledge | Service::Ticket | Service::Sentiment => &[],
        }
    }

    /// The variable its callers read its address from, e.g. KEFU_TICKET_URL.
    pub fn url_variable(self) -> String {
        format!("KEFU_{}_URL", self.name().to_ascii_uppercase())
    }
}

/// One instance of a service: a process of its own.
#[derive(Clone, Debug)]
pub struct Instance {
    name: String,
    service: Service,
    bind: Option<SocketAddr>,
    calls: Vec<(Service, String)>,
    env: Vec<(String, String)>,
    held_back: bool,
}

impl Instance {
    /// `name` names its logs and is how [`Stack`]'s methods refer to it.
    pub fn new(name: &str, service: Service) -> Self {
        Self {
            name: name.to_owned(),
            service,
            bind: None,
            calls: Vec::new(),
            env: Vec::new(),
            held_back: false,
        }
    }

    /// Listens here instead of on a free loopback port (replicas behind one name share a
    /// port on several addresses); its metrics listen on the same host.
    pub fn bind(mut self, address: SocketAddr) -> Self {
        self.bind = Some(address);
        self
    }

    /// Calls `instance` for `service` (by default the stack's first instance of it).
    pub fn calls(mut self, service: Service, instance: &str) -> Self {
        self.calls.push((service, instance.to_owned()));
        self
    }

    /// A variable of this instance alone; it overrides the stack's and the wiring.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Not started with the stack, though its callers know its address:
    /// [`Stack::start_held_back`] starts it.
    pub fn held_back(mut self) -> Self {
        self.held_back = true;
        self
    }
}

enum Layout {
    AllInOne,
    Instances(Vec<Instance>),
}

/// What a stack runs and on what; [`StackBuilder::start`] starts it.
pub struct StackBuilder {
    layout: Layout,
    database_url: Option<String>,
    /// Every instance's, after what the stack sets itself.
    env: Vec<(String, String)>,
    serving: Option<Vec<String>>,
}

impl StackBuilder {
    fn new(layout: Layout) -> Self {
        Self {
            layout,
            database_url: None,
            env: Vec::new(),
            serving: None,
        }
    }

    /// `kefu up`: the six services in one process, named "kefu"; each service's address
    /// goes by the service's name.
    pub fn all_in_one() -> Self {
        Self::new(Layout::AllInOne)
    }

    /// One instance of each service, each a process named after its service.
    pub fn each_service() -> Self {
        Self::instances(Service::ALL.map(|service| Instance::new(service.name(), service)))
    }

    /// These instances, each a process of its own.
    pub fn instances(instances: impl IntoIterator<Item = Instance>) -> Self {
        Self::new(Layout::Instances(instances.into_iter().collect()))
    }

    /// The database every instance uses (default: an SQLite file in the private data
    /// directory).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Redis for every instance (default: none, the in-process cache).
    pub fn redis_url(self, url: &str) -> Self {
        self.env("REDIS_URL", url)
    }

    /// Default: the services' own (./tenants).
    pub fn tenants_dir(self, dir: &Path) -> Self {
        self.env("KEFU_TENANTS_DIR", dir.display().to_string())
    }

    /// Default: the services' own (./models).
    pub fn models_dir(self, dir: &Path) -> Self {
        self.env("KEFU_MODELS_DIR", dir.display().to_string())
    }

    /// A variable of every instance.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// The instances that must be SERVING before the stack counts as started (default:
    /// the gateways, and so everything behind them); the others need only listen.
    pub fn serving(mut self, instances: &[&str]) -> Self {
        self.serving = Some(instances.iter().map(|name| name.to_string()).collect());
        self
    }

    /// Starts the stack from the `kefu` and `kefu-<service>` binaries in `binaries`; returns
    /// once every instance listens and those it should are SERVING (within
    /// [`STARTUP_LIMIT`]).
    pub async fn start(self, binaries: &Path) -> anyhow::Result<Stack> {
        let data = tempfile::tempdir().context("a private data directory")?;
        let logs = data.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let database_url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/kefu.db?mode=rwc", data.path().display()));
        let common = vec![
            ("KEFU_BIND_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("DATABASE_URL".to_owned(), database_url),
            (
                "KEFU_DATA_DIR".to_owned(),
                data.path().display().to_string(),
            ),
            ("KEFU_LOG_FORMAT".to_owned(), "json".to_owned()),
            ("RUST_LOG".to_owned(), "info".to_owned()),
            // No pages: several gateways may run at once, and a developer's own holds 8080.
            ("KEFU_WEB_PORT".to_owned(), "0".to_owned()),
        ];

        // The schema first, so that the processes never race each other migrating it.
        let migrate = Command::new(binaries.join("kefu"))
            .arg("migrate")
            .envs(common.iter().chain(&self.env).map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running {}/kefu migrate", binaries.display()))?;
        anyhow::ensure!(
            migrate.status.success(),
            "kefu migrate failed: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );

        let Plan {
            processes,
            addresses,
            gateways,
            channel_endpoints,
        } = self.plan(binaries, &common)?;
        let serving = self.serving.unwrap_or_else(|| gateways.clone());
        let mut stack = Stack {
            processes,
            addresses,
            gateways,
            channel_endpoints,
            logs,
            spawner: Spawner::new(),
            _data: data,
        };
        let starting: Vec<String> = stack
            .processes
            .iter()
            .filter(|process| !process.held_back)
            .map(|process| process.name.clone())
            .collect();
        for name in &starting {
            stack.spawn(name)?;
        }
        for name in &starting {
            for instance in stack.process(name).serves.clone() {
                stack.wait_until(&instance, Readiness::Listening).await?;
            }
        }
        for instance in &serving {
            stack.wait_until_serving(instance).await?;
        }
        Ok(stack)
    }

    fn plan(&self, binaries: &Path, common: &[(String, String)]) -> anyhow::Result<Plan> {
        let with_extra = |mut env: Vec<(String, String)>, own: &[(String, String)]| {
            env.extend(self.env.iter().chain(own).cloned());
            env
        };
        match &self.layout {
            Layout::AllInOne => {
                let ports: [u16; 9] = free_ports()?;
                let (ports, [http_port, smtp_port]) = ports.split_at(7) else {
                    unreachable!("nine ports");
                };
                let mut env = common.to_vec();
                env.push(("KEFU_METRICS_BASE_PORT".to_owned(), "0".to_owned()));
                env.push(("KEFU_CHANNELS_HTTP_PORT".to_owned(), http_port.to_string()));
                env.push(("KEFU_CHANNELS_SMTP_PORT".to_owned(), smtp_port.to_string()));
                let mut addresses = BTreeMap::new();
                for (service, &port) in Service::ALL.into_iter().zip(ports) {
                    let variable = format!("KEFU_{}_PORT", service.name().to_ascii_uppercase());
                    env.push((variable, port.to_string()));
                    addresses.insert(service.name().to_owned(), loopback(port));
                }
                let process = Process {
                    name: "kefu".to_owned(),
                    program: binaries.join("kefu"),
                    args: vec!["up".to_owned()],
                    env: with_extra(env, &[]),
                    serves: Service::ALL.map(|s| s.name().to_owned()).to_vec(),
                    metrics: None,
                    held_back: false,
                    child: None,
                };
                Ok(Plan {
                    processes: vec![process],
                    addresses,
                    gateways: vec![Service::Gateway.name().to_owned()],
                    channel_endpoints: BTreeMap::from([(
                        Service::Channels.name().to_owned(),
                        ChannelEndpoints {
                            http: loopback(*http_port),
                            smtp: loopback(*smtp_port),
                        },
                    )]),
                })
            }
            Layout::Instances(instances) => {
                let ports: Vec<u16> = free_port_list(instances.len() * 4)?;
                let (grpc, rest) = ports.split_at(instances.len());
                let (metrics, rest) = rest.split_at(instances.len());
                let (http, smtp) = rest.split_at(instances.len());
                let mut channel_endpoints = BTreeMap::new();
                let addresses: BTreeMap<String, SocketAddr> = instances
                    .iter()
                    .zip(grpc)
                    .map(|(i, &port)| (i.name.clone(), i.bind.unwrap_or_else(|| loopback(port))))
                    .collect();
                let url_of = |name: &str| {
                    addresses
                        .get(name)
                        .map(|address| format!("http://{address}"))
                        .with_context(|| format!("no instance {name} in the stack"))
                };
                let mut processes = Vec::new();
                for (((instance, &metrics_port), &http_port), &smtp_port) in
                    instances.iter().zip(metrics).zip(http).zip(smtp)
                {
                    let address = addresses[&instance.name];
                    let metrics = SocketAddr::new(address.ip(), metrics_port);
                    let mut env = common.to_vec();
                    env.extend([
                        ("KEFU_BIND_HOST".to_owned(), address.ip().to_string()),
                        ("KEFU_GRPC_PORT".to_owned(), address.port().to_string()),
                        ("KEFU_METRICS_PORT".to_owned(), metrics_port.to_string()),
                    ]);
                    if instance.service == Service::Channels {
                        env.push(("KEFU_CHANNELS_HTTP_PORT".to_owned(), http_port.to_string()));
                        env.push(("KEFU_CHANNELS_SMTP_PORT".to_owned(), smtp_port.to_string()));
                        channel_endpoints.insert(
                            instance.name.clone(),
                            ChannelEndpoints {
                                http: SocketAddr::new(address.ip(), http_port),
                                smtp: SocketAddr::new(address.ip(), smtp_port),
                            },
                        );
                    }
                    for &peer in instance.service.peers() {
                        let chosen = instance.calls.iter().find(|(s, _)| *s == peer);
                        let url = match chosen {
                            Some((_, target)) => url_of(target)?,
                            None => instances
                                .iter()
                                .find(|other| other.service == peer)
                                .map_or(Ok(NOBODY.to_owned()), |other| url_of(&other.name))?,
                        };
                        env.push((peer.url_variable(), url));
                    }
                    processes.push(Process {
                        name: instance.name.clone(),
                        program: binaries.join(format!("kefu-{}", instance.service.name())),
                        args: Vec::new(),
                        env: with_extra(env, &instance.env),
                        serves: vec![instance.name.clone()],
                        metrics: Some(metrics),
                        held_back: instance.held_back,
                        child: None,
                    });
                }
                let gateways = instances
                    .iter()
                    .filter(|instance| instance.service == Service::Gateway)
                    .map(|instance| instance.name.clone())
                    .collect();
                Ok(Plan {
                    processes,
                    addresses,
                    gateways,
                    channel_endpoints,
                })
            }
        }
    }
}

/// The processes to run, the gRPC address of every instance by name, the gateways, and
/// the endpoints of every channel service instance.
struct Plan {
    processes: Vec<Process>,
    addresses: BTreeMap<String, SocketAddr>,
    gateways: Vec<String>,
    channel_endpoints: BTreeMap<String, ChannelEndpoints>,
}

/// Where a channel service instance takes the channels' messages.
#[derive(Clone, Copy, Debug)]
struct ChannelEndpoints {
    /// Webhooks and WeChat.
    http: SocketAddr,
    /// Mail.
    smtp: SocketAddr,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Distinct free loopback ports below the OS's ephemeral range, never the same one twice
/// in this process. A port chosen by binding to port 0 can be taken again before the child
/// binds it: by another stack's choice, by a service binding its metrics to port 0, or by
/// an outgoing connection. Ports outside the ephemeral range are only taken by name.
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let ports = free_port_list(N)?;
    Ok(std::array::from_fn(|i| ports[i]))
}

/// The first port a stack may use; below are the well-known services' usual ports.
const LOWEST_PORT: u16 = 10_000;

fn free_port_list(count: usize) -> std::io::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TRIED: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start();
    let span = u32::from(end - LOWEST_PORT);
    // Test binaries run one after another; each starts elsewhere in the span.
    let offset = std::process::id().wrapping_mul(7919) % span;
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let tried = TRIED.fetch_add(1, Ordering::Relaxed);
        if tried >= span {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("no free port left between {LOWEST_PORT} and {end}"),
            ));
        }
        let port = LOWEST_PORT + u16::try_from((offset + tried) % span).expect("within the span");
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Where the OS starts choosing ports for port 0 and outgoing connections (Linux's
/// `ip_local_port_range`; 32768 where it cannot be read), always above [`LOWEST_PORT`].
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|&start| start > LOWEST_PORT)
        .unwrap_or(32_768)
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
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Waits until the server at `url` is SERVING (the models load after start).
pub async fn wait_until_serving(url: &str, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while health_status(url).await != Some(ServingStatus::Serving) {
        anyhow::ensure!(
            started.elapsed() < limit,
            "{url} is not SERVING after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Readiness {
    Listening,
    Serving,
}

struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The instances whose gRPC addresses it serves.
    serves: Vec<String>,
    metrics: Option<SocketAddr>,
    held_back: bool,
    child: Option<Child>,
}

/// A running stack; dropping it kills every process.
pub struct Stack {
    processes: Vec<Process>,
    addresses: BTreeMap<String, SocketAddr>,
    gateways: Vec<String>,
    channel_endpoints: BTreeMap<String, ChannelEndpoints>,
    logs: PathBuf,
    spawner: Spawner,
    _data: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Stack {
    /// The gRPC URL of an instance (with `kefu up`, of a service by its name).
    pub fn url(&self, instance: &str) -> String {
        format!("http://{}", self.address(instance))
    }

    /// The base URL of a channel service instance's HTTP endpoints (with `kefu up`:
    /// "channels"), e.g. `http://127.0.0.1:40123`.
    pub fn channel_endpoints(&self, instance: &str) -> String {
        format!("http://{}", self.channel_service(instance).http)
    }

    /// The address of a channel service instance's SMTP listener.
    pub fn smtp_listener(&self, instance: &str) -> SocketAddr {
        self.channel_service(instance).smtp
    }

    fn channel_service(&self, instance: &str) -> ChannelEndpoints {
        *self
            .channel_endpoints
            .get(instance)
            .unwrap_or_else(|| panic!("{instance} is not a channel service in the stack"))
    }

    /// The URL of the first gateway.
    pub fn gateway(&self) -> String {
        self.url(self.gateways.first().expect("the stack has a gateway"))
    }

    /// The gRPC address of an instance (with `kefu up`, of a service by its name).
    pub fn address(&self, instance: &str) -> SocketAddr {
        *self
            .addresses
            .get(instance)
            .unwrap_or_else(|| panic!("no instance {instance} in the stack"))
    }

    /// Where an instance serves /metrics (not known for `kefu up`).
    pub fn metrics_address(&self, instance: &str) -> SocketAddr {
        self.process(instance)
            .metrics
            .unwrap_or_else(|| panic!("{instance} has no metrics address of its own"))
    }

    fn process(&self, name: &str) -> &Process {
        self.processes
            .iter()
            .find(|process| process.name == name)
            .unwrap_or_else(|| panic!("no process {name} in the stack"))
    }

    fn process_mut(&mut self, name: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|process| process.name == name)
            .unwrap_or_else(|| panic!("no process {name} in the stack"))
    }

    /// Kills a process at once (SIGKILL), as a crashed pod or a lost node ends.
    pub fn kill(&mut self, name: &str) {
        let mut child = self
            .process_mut(name)
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a killed process again, as it was started before, with its data.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn(name)
    }

    /// Starts an instance declared [`Instance::held_back`].
    pub fn start_held_back(&mut self, name: &str) -> anyhow::Result<()> {
        self.spawn(name)
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let stdout = self.log(name);
        let stderr = self.logs.join(format!("kefu-{name}.err"));
        let process = self.process(name);
        anyhow::ensure!(process.child.is_none(), "{name} is running already");
        anyhow::ensure!(
            process.program.is_file(),
            "{} is missing: build the binaries first (`cargo build --release --workspace`)",
            process.program.display()
        );
        // Appended, so that a restarted process's logs follow its earlier life's.
        let append = |path: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        };
        let mut command = Command::new(&process.program);
        for variable in INHERITED_NOISE {
            command.env_remove(variable);
        }
        command
            .args(&process.args)
            .envs(process.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(append(stdout)?)
            .stderr(append(stderr)?);
        let child = self
            .spawner
            .spawn(command)
            .with_context(|| format!("starting {}", process.program.display()))?;
        self.process_mut(name).child = Some(child);
        Ok(())
    }

    /// Waits until an instance is SERVING; an error with the logs if it is not within
    /// [`STARTUP_LIMIT`] or a process exits meanwhile.
    pub async fn wait_until_serving(&mut self, instance: &str) -> anyhow::Result<()> {
        self.wait_until(instance, Readiness::Serving).await
    }

    async fn wait_until(&mut self, instance: &str, wanted: Readiness) -> anyhow::Result<()> {
        let address = self.address(instance);
        let started = Instant::now();
        loop {
            self.running()?;
            let ready = match wanted {
                Readiness::Listening => tokio::net::TcpStream::connect(address).await.is_ok(),
                Readiness::Serving => {
                    health_status(&self.url(instance)).await == Some(ServingStatus::Serving)
                }
            };
            if ready {
                return Ok(());
            }
            if started.elapsed() > STARTUP_LIMIT {
                let logs: String = self
                    .processes
                    .iter()
                    .map(|p| self.log_tail(&p.name))
                    .collect();
                anyhow::bail!("{instance} is not {wanted:?} after {STARTUP_LIMIT:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An error naming a process that has exited since it was started, with its log.
    pub fn running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            let Some(child) = &mut process.child else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                let name = process.name.clone();
                anyhow::bail!("{name} exited ({status})\n{}", self.log_tail(&name));
            }
        }
        Ok(())
    }

    /// The log of every process whose stderr shows a panic.
    pub fn panics(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|process| self.stderr(&process.name).contains("panicked"))
            .map(|process| self.log_tail(&process.name))
            .collect()
    }

    /// Where a process writes its (JSON) log lines.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("kefu-{name}.out"))
    }

    fn stderr(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("kefu-{name}.err"))).unwrap_or_default()
    }

    /// The last log lines of a process and the start of its stderr (where a panic shows).
    fn log_tail(&self, name: &str) -> String {
        let stdout = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        let lines: Vec<&str> = stdout.lines().collect();
        let stderr = self.stderr(name);
        let stderr: Vec<&str> = stderr.lines().take(20).collect();
        format!(
            "--- {name} log (last lines)\n{}\n--- {name} stderr (first lines)\n{}\n",
            lines[lines.len().saturating_sub(20)..].join("\n"),
            stderr.join("\n")
        )
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts a stack's processes from one thread that lives as long as the stack. Each
/// process asks the kernel to kill it when that thread ends (PR_SET_PDEATHSIG), so none
/// outlives this process: not when it is killed itself, nor when the stack is never
/// dropped (a test binary's shared stack lives in a static, and statics are not dropped).
struct Spawner(mpsc::Sender<SpawnRequest>);

impl Spawner {
    fn new() -> Self {
        let (requests, received) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kefu-stack".into())
            .spawn(move || {
                for (mut command, reply) in received {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("a thread to start the stack's processes");
        Self(requests)
    }

    fn spawn(&self, mut command: Command) -> std::io::Result<Child> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let (reply, answer) = mpsc::channel();
        self.0
            .send((command, reply))
            .expect("the spawning thread lives as long as the stack");
        answer
            .recv()
            .expect("the spawning thread answers every request")
    }
}
