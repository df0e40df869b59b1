//! The service binaries as separate processes, the way a deployment runs them: built
//! with the test's profile, started with an environment, logs kept per instance, all
//! killed when the test ends (also when it fails).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{repo_root, ServingStatus};

pub const SERVICES: [&str; 6] = [
    "gateway",
    "orchestrator",
    "router",
    "knowledge",
    "ticket",
    "sentiment",
];

/// Model loading and intent training at start take a while on a small machine.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(300);

/// The directory holding the test executable's sibling binaries (target/<profile>/).
pub fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds the workspace's binaries with the profile of this test (a no-op when they are
/// up to date), so the test never runs binaries older than the code under test. The whole
/// workspace, not the six packages alone: with the same package selection as
/// `cargo test --workspace`, dependencies keep their features and are not built again.
pub fn build_service_binaries() -> PathBuf {
    let dir = binaries_dir();
    let profile_dir = dir
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("release");
    let profile = if profile_dir == "debug" {
        "dev"
    } else {
        profile_dir
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
        .args([
            "build",
            "--workspace",
            "--bins",
            "--profile",
            profile,
            "--target-dir",
        ])
        .arg(target_dir)
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run {cargo} to build the service binaries: {error}")
        });
    assert!(status.success(), "building the service binaries failed ({status}); run `cargo build --release --workspace` to see why");
    for service in SERVICES {
        let binary = dir.join(format!("kefu-{service}"));
        assert!(binary.is_file(), "{} is missing: the service binaries must be built next to the tests (`cargo build --release --workspace`)", binary.display());
    }
    dir
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

/// What every instance gets: loopback, the database, the repository's tenants, the
/// models, JSON logs.
pub fn base_env(data: &Path, database_url: &str) -> Vec<(String, String)> {
    [
        ("KEFU_BIND_HOST", "127.0.0.1".to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("KEFU_DATA_DIR", data.display().to_string()),
        (
            "KEFU_TENANTS_DIR",
            repo_root().join("tenants").display().to_string(),
        ),
        ("KEFU_MODELS_DIR", models_dir().display().to_string()),
        ("KEFU_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        // No pages: several gateways run at once, and a developer's own may hold 8080.
        ("KEFU_WEB_PORT", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The environment variable naming where `service` is, e.g. KEFU_TICKET_URL.
pub fn url_variable(service: &str) -> String {
    format!("KEFU_{}_URL", service.to_ascii_uppercase())
}

/// Settings a developer's shell may carry that would change what the services do.
const INHERITED_NOISE: [&str; 5] = [
    "REDIS_URL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_SDK_DISABLED",
];

/// How an instance was started: (instance, service, environment).
type Started = (String, String, Vec<(String, String)>);

/// The running binaries by instance name ("gateway", "orchestrator-b", ...).
pub struct Processes {
    dir: PathBuf,
    children: Vec<(String, Child)>,
    started: Vec<Started>,
    pub logs: PathBuf,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    pub fn new(binaries: PathBuf, logs: PathBuf) -> Self {
        std::fs::create_dir_all(&logs).unwrap();
        Self {
            dir: binaries,
            children: Vec::new(),
            started: Vec::new(),
            logs,
        }
    }

    /// Starts `kefu-<service>` as `instance` with `env` (and nothing inherited that
    /// would change its behaviour).
    pub fn spawn(&mut self, instance: &str, service: &str, env: &[(String, String)]) {
        self.started.retain(|(name, ..)| name != instance);
        self.started
            .push((instance.to_owned(), service.to_owned(), env.to_vec()));
        // Appended, so that a restarted instance's logs follow its earlier life's.
        let log = |path: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        };
        let stdout = log(self.stdout_path(instance));
        let stderr = log(self.logs.join(format!("kefu-{instance}.err")));
        let mut command = Command::new(self.dir.join(format!("kefu-{service}")));
        for variable in INHERITED_NOISE {
            command.env_remove(variable);
        }
        let child = command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start kefu-{service}: {error}"));
        self.children.push((instance.to_owned(), child));
    }

    /// Kills an instance at once (SIGKILL), as a crashed pod or a lost node would end.
    pub fn kill(&mut self, instance: &str) {
        let position = self
            .children
            .iter()
            .position(|(name, _)| name == instance)
            .unwrap_or_else(|| panic!("no running instance {instance}"));
        let (_, mut child) = self.children.remove(position);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts a killed instance again, as it was started before.
    pub fn restart(&mut self, instance: &str) {
        let (_, service, env) = self
            .started
            .iter()
            .find(|(name, ..)| name == instance)
            .cloned()
            .unwrap_or_else(|| panic!("{instance} was never started"));
        self.spawn(instance, &service, &env);
    }

    /// Whether any instance's stderr shows a panic.
    pub fn panics(&self) -> Vec<String> {
        self.started
            .iter()
            .filter_map(|(instance, ..)| {
                let stderr =
                    std::fs::read_to_string(self.logs.join(format!("kefu-{instance}.err")))
                        .unwrap_or_default();
                stderr.contains("panicked").then(|| self.log_tail(instance))
            })
            .collect()
    }

    pub fn stdout_path(&self, instance: &str) -> PathBuf {
        self.logs.join(format!("kefu-{instance}.out"))
    }

    /// The last log lines of an instance, and the start of its stderr (where a panic shows).
    pub fn log_tail(&self, instance: &str) -> String {
        let read = |suffix: &str| {
            std::fs::read_to_string(self.logs.join(format!("kefu-{instance}.{suffix}")))
                .unwrap_or_default()
        };
        let stdout = read("out");
        let lines: Vec<&str> = stdout.lines().collect();
        let stderr: Vec<String> = read("err").lines().take(20).map(str::to_owned).collect();
        format!(
            "--- kefu-{instance} stdout (last lines)\n{}\n--- kefu-{instance} stderr (first lines)\n{}\n",
            lines[lines.len().saturating_sub(20)..].join("\n"),
            stderr.join("\n")
        )
    }

    /// Fails the test with its log if a binary has exited.
    pub fn assert_running(&mut self) {
        let mut exited = Vec::new();
        for (instance, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((instance.clone(), status));
            }
        }
        if let Some((instance, status)) = exited.first() {
            panic!(
                "kefu-{instance} exited ({status}) before the test ended\n{}",
                self.log_tail(instance)
            );
        }
    }

    /// Waits until the server at `url` is SERVING, failing with every log if it is not
    /// within the startup limit or a process dies meanwhile.
    pub async fn wait_until_serving(&mut self, url: &str) {
        let started = Instant::now();
        loop {
            self.assert_running();
            if super::health_status(url).await == Some(ServingStatus::Serving) {
                return;
            }
            if started.elapsed() > STARTUP_LIMIT {
                let logs: String = self
                    .children
                    .iter()
                    .map(|(instance, _)| self.log_tail(instance))
                    .collect();
                panic!("{url} is not SERVING after {STARTUP_LIMIT:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
