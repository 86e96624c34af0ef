//! Test support shared by the RRQ crates' integration tests.
//!
//! [`RedisServer`] starts a private `redis-server` on a free loopback port (no
//! persistence) and waits for its "ready to accept connections" log line, an
//! event rather than a polling loop; the process is killed on drop.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a redis-server may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// When no port can be bound (a broken test machine).
#[allow(clippy::expect_used)] // test support: failing loudly is the point
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A private redis-server, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one with AOF (`appendfsync everysec`, what the orchestrator
    /// requires) in a fresh temporary directory, and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// When `redis-server` is not on PATH or does not become ready in time.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments.
    ///
    /// # Panics
    /// When `redis-server` is not on PATH or does not become ready in time.
    #[allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is the point
    pub fn start_with(extra_args: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("rrq-testkit-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory for redis-server");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading after the ready line so redis-server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line
                    .to_ascii_lowercase()
                    .contains("ready to accept connections")
                {
                    let _ = ready_tx.send(());
                }
            }
        });
        let server = Self { child, port, dir };
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            panic!("redis-server on port {port} did not become ready within {START_TIMEOUT:?}");
        }
        server
    }

    /// Its DSN, database 0.
    pub fn dsn(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A client for it.
    ///
    /// # Panics
    /// Never for the DSN this type builds.
    #[allow(clippy::expect_used)] // the DSN is always well formed
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.dsn()).expect("a valid DSN")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
