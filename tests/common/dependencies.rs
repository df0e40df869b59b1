//! A Redis and a PostgreSQL of the test's own, on their own ports and directories, so
//! that a test may stop and restart them without touching the shared instances.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kefu::stack::free_ports;

const START_LIMIT: Duration = Duration::from_secs(30);

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < START_LIMIT,
            "{what} did not start within {START_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `redis-server` on a free port, keeping nothing on disk.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    /// A free port for it, not started yet: [`OwnRedis::restart`] starts it.
    pub fn reserve() -> Self {
        let [port] = free_ports().expect("a free port");
        Self { port, child: None }
    }

    pub fn start() -> Self {
        let mut redis = Self::reserve();
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crashed instance ends.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let port = self.port.to_string();
        wait_for("redis-server", || {
            Command::new("redis-cli")
                .args(["-p", &port, "ping"])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
        });
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of its own in a temporary directory (initdb), run as the
/// `postgres` user when the test runs as root (PostgreSQL refuses root).
pub struct OwnPostgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's programs (Debian: /usr/lib/postgresql/<v>/bin).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn run_pg(program: &Path, args: &[&str]) {
    let mut command = if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .expect("runs a PostgreSQL program");
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl OwnPostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster directory");
        }
        let data = dir.path().join("data");
        let bin = postgres_bin();
        let [port] = free_ports().expect("a free port");
        run_pg(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        let postgres = Self {
            port,
            bin,
            data,
            _dir: dir,
        };
        postgres.start_server();
        postgres
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.data.to_str().unwrap().to_owned();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        run_pg(&self.bin.join("pg_ctl"), &all);
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        self.ctl(&["-o", &options, "-l", log.to_str().unwrap(), "-w", "start"]);
    }

    /// Stops the server at once (no shutdown checkpoint), as a crash would.
    pub fn stop(&self) {
        self.ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Starts it again on the same port with its data (crash recovery included).
    pub fn restart(&self) {
        self.start_server();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.stop());
    }
}
