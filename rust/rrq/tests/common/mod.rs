//! Helpers of the end-to-end tests: a private redis-server, the real `rrq`
//! binary, and a test runner speaking the protocol through the generated
//! tonic client.

// Each test binary uses a different subset.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::StreamExt as _;
use rrq_proto::v1::runner_service_client::RunnerServiceClient;
use rrq_proto::v1::{
    ExecutionRequest, Heartbeat, OrchestratorMessage, Outcome, OutcomeBatch, RunnerHello,
    RunnerMessage, orchestrator_message, outcome, runner_message,
};
use rrq_store::{EnqueueRequest, Namespace, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub const WAIT: Duration = Duration::from_secs(20);

/// The orchestrator's variable holding the external runners' token: every
/// runner table of a test config gets `token_env` naming it.
pub const TOKEN_ENV: &str = "RRQ_TEST_RUNNER_TOKEN";
/// The external runners' token of the tests.
pub const TOKEN: &str = "test-external-runner-token-0123456789";

/// `config` with `token_env = TOKEN_ENV` in every `[rrq.runners.<name>]`
/// table that does not name its own (external test runners present [`TOKEN`]).
pub fn with_runner_tokens(config: &str) -> String {
    let mut out = String::with_capacity(config.len() + 64);
    let mut pending = false;
    for line in config.lines() {
        let header = line.trim_start().starts_with('[');
        if header && pending {
            out.push_str(&format!("token_env = \"{TOKEN_ENV}\"\n"));
            pending = false;
        }
        if line.contains("token_env") {
            pending = false;
        }
        out.push_str(line);
        out.push('\n');
        let t = line.trim();
        if t.starts_with("[rrq.runners.") && t.matches('.').count() == 2 {
            pending = true;
        }
    }
    if pending {
        out.push_str(&format!("token_env = \"{TOKEN_ENV}\"\n"));
    }
    out
}

#[allow(unused_imports)] // used by some test binaries only
pub use rrq_testkit::free_port;

/// A private redis-server (see `rrq_testkit`), with helpers for these tests.
pub struct Redis(pub rrq_testkit::RedisServer);

impl Redis {
    pub async fn start() -> Self {
        Self(rrq_testkit::RedisServer::start())
    }

    pub fn dsn(&self) -> String {
        self.0.dsn()
    }

    pub fn client(&self) -> redis::Client {
        self.0.client()
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.client(), Namespace::default())
            .await
            .unwrap()
    }
}

/// The `rrq` binary under test, killed on drop.
pub struct Orchestrator {
    pub child: Child,
    pub dir: PathBuf,
    /// `host:port` of the `python` runner listener.
    pub addr: String,
    /// `runner name -> host:port` of every listener.
    pub addrs: std::collections::BTreeMap<String, String>,
    /// Every stderr line so far.
    pub log: Log,
}

/// Lines of a process's output, with a wait for one to appear.
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>);

impl Log {
    fn push(&self, line: String) {
        self.0.0.lock().unwrap().push(line);
        self.0.1.notify_all();
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.0.lock().unwrap().clone()
    }

    /// Waits until `count` lines contain `needle`.
    pub async fn wait_for(&self, needle: &str, count: usize) {
        let log = self.clone();
        let needle = needle.to_owned();
        tokio::task::spawn_blocking(move || {
            let (lines, changed) = &*log.0;
            let guard = lines.lock().unwrap();
            let (_guard, timeout) = changed
                .wait_timeout_while(guard, WAIT, |l| {
                    l.iter().filter(|x| x.contains(&needle)).count() < count
                })
                .unwrap();
            assert!(
                !timeout.timed_out(),
                "no {count} log line(s) with {needle:?}"
            );
        })
        .await
        .unwrap();
    }
}

impl Orchestrator {
    pub async fn start(redis: &Redis, extra: &str) -> Self {
        Self::start_with(redis, extra, &[]).await
    }

    pub async fn start_with(redis: &Redis, extra: &str, args: &[&str]) -> Self {
        let config = format!(
            "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
             retry_backoff_initial_seconds = 0.01\n{extra}\n[rrq.runners.python]\nmax_in_flight = 4\n"
        );
        Self::start_config(redis, &config, args, &[]).await
    }

    /// Starts the binary with `config` as its whole rrq.toml (the file names
    /// a dead Redis on purpose: `RRQ_REDIS_DSN` must win), extra `args` and `env`.
    pub async fn start_config(
        redis: &Redis,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rrq-test-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rrq.toml");
        std::fs::write(&path, with_runner_tokens(config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrq"))
            .args(["worker", "run", "--config"])
            .arg(&path)
            .args(args)
            .env("RRQ_REDIS_DSN", redis.dsn())
            .env("RUST_LOG", "info,rrq=debug")
            .env(TOKEN_ENV, TOKEN)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        let log = Log::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rrq] {line}");
                sink.push(line.clone());
                if let Some(rest) = line.split("rrq orchestrator ready").nth(1) {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("orchestrator did not print its ready line");
        let listen = ready
            .split("listen=[")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .expect("ready line lists the listeners");
        let addrs: std::collections::BTreeMap<String, String> = listen
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(n, a)| (n.to_owned(), a.to_owned()))
            .collect();
        let addr = addrs.get("python").cloned().unwrap_or_default();
        Self {
            child,
            dir,
            addr,
            addrs,
            log,
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A runner connected over the real protocol.
pub struct TestRunner {
    pub tx: mpsc::Sender<RunnerMessage>,
    pub inbound: tonic::Streaming<OrchestratorMessage>,
    /// Executions received but not yet consumed by `next_execution`.
    pub pending: Vec<ExecutionRequest>,
}

impl TestRunner {
    pub async fn connect(addr: &str, handlers: &[&str]) -> Self {
        Self::connect_as(addr, "python", handlers).await
    }

    pub async fn connect_as(addr: &str, runner_name: &str, handlers: &[&str]) -> Self {
        Self::connect_with(addr, runner_name, handlers, TOKEN).await
    }

    /// A runner presenting `token` in its hello.
    pub async fn connect_with(
        addr: &str,
        runner_name: &str,
        handlers: &[&str],
        token: &str,
    ) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = RunnerServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(RunnerMessage {
            kind: Some(runner_message::Kind::Hello(RunnerHello {
                protocol_version: 1,
                runner_name: runner_name.into(),
                language: "test".into(),
                handlers: handlers.iter().map(|h| (*h).to_owned()).collect(),
                max_in_flight: 4,
                pid: std::process::id(),
                process_token: token.to_owned(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(WAIT, inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match first.kind {
            Some(orchestrator_message::Kind::HelloAck(ack)) => {
                assert_eq!(ack.protocol_version, 1);
                assert!(ack.heartbeat_interval_ms > 0);
                assert_eq!(ack.max_result_bytes, 1_048_576);
            }
            other => panic!("expected hello_ack, got {other:?}"),
        }
        Self {
            tx,
            inbound,
            pending: Vec::new(),
        }
    }

    pub async fn next_execution(&mut self) -> ExecutionRequest {
        loop {
            if !self.pending.is_empty() {
                return self.pending.remove(0);
            }
            let msg = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("no execute arrived")
                .unwrap()
                .expect("stream ended");
            if let Some(orchestrator_message::Kind::Execute(batch)) = msg.kind {
                self.pending.extend(batch.requests);
            }
        }
    }

    pub async fn send(&self, job_id: &str, attempt: i64, result: outcome::Result) {
        self.tx
            .send(RunnerMessage {
                kind: Some(runner_message::Kind::Outcomes(OutcomeBatch {
                    outcomes: vec![Outcome {
                        job_id: job_id.to_owned(),
                        attempt,
                        result: Some(result),
                    }],
                })),
            })
            .await
            .unwrap();
    }

    pub async fn heartbeat(&self) {
        self.tx
            .send(RunnerMessage {
                kind: Some(runner_message::Kind::Heartbeat(Heartbeat { in_flight: 0 })),
            })
            .await
            .unwrap();
    }
}

pub fn job(queue: &str, id: &str, function: &str, max_retries: i64) -> EnqueueRequest {
    EnqueueRequest {
        id: id.into(),
        function_name: function.into(),
        queue: queue.into(),
        params_json: r#"{"x": 1}"#.into(),
        max_retries,
        max_params_bytes: 1_048_576,
        ..Default::default()
    }
}

/// Waits for the job's terminal status on its done channel. Subscribe before
/// enqueueing so the message cannot be missed.
pub struct DoneWatch {
    pub messages: redis::aio::PubSubStream,
}

impl DoneWatch {
    pub async fn new(redis: &Redis, queue: &str, id: &str) -> Self {
        let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
        pubsub
            .subscribe(Namespace::default().queue(queue).done_channel(id))
            .await
            .unwrap();
        Self {
            messages: pubsub.into_on_message(),
        }
    }

    pub async fn wait(&mut self) -> i32 {
        let msg = tokio::time::timeout(WAIT, self.messages.next())
            .await
            .expect("job did not reach a terminal status")
            .unwrap();
        msg.get_payload::<i32>().unwrap()
    }
}

pub async fn job_field(store: &Store, queue: &str, id: &str, field: &str) -> String {
    let v: Option<String> = redis::cmd("HGET")
        .arg(Namespace::default().queue(queue).job(id))
        .arg(field)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    v.unwrap_or_default()
}

/// When job `id` is due: its `run_at_ms`, which is not stored when the job
/// was due at once (then it is `enqueued_at_ms`).
pub async fn job_run_at_ms(store: &Store, queue: &str, id: &str) -> i64 {
    let stored = job_field(store, queue, id, "run_at_ms").await;
    let text = if stored.is_empty() {
        job_field(store, queue, id, "enqueued_at_ms").await
    } else {
        stored
    };
    text.parse().unwrap()
}
