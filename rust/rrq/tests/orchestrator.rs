//! End-to-end tests: a private redis-server, the real `rrq` binary, and a test
//! runner speaking the protocol through the generated tonic client.
//!
//! Synchronisation is by events only: the orchestrator's ready line, stream
//! messages, and the job's done channel on Redis pub/sub. Every wait has a
//! deadline so a bug fails the test instead of hanging it.

// A failed unwrap here is the test's failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::StreamExt as _;
use rrq_proto::v1::runner_service_client::RunnerServiceClient;
use rrq_proto::v1::{
    ExecutionRequest, Heartbeat, OrchestratorMessage, Outcome, OutcomeBatch, Retry, RunnerHello,
    RunnerMessage, Success, orchestrator_message, outcome, runner_message,
};
use rrq_store::{EnqueueRequest, Enqueued, JobStatus, QueueKeys, Settle, SettleAction, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        let me = Self { child, port };
        // Wait for the condition "PING answers", with a deadline.
        let client = redis::Client::open(me.dsn()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return me;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn dsn(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.dsn()).unwrap()
    }

    async fn store(&self) -> Store {
        Store::connect(&self.client()).await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `rrq` binary under test, killed on drop.
struct Orchestrator {
    child: Child,
    dir: PathBuf,
    /// `host:port` of the `python` runner listener.
    addr: String,
}

impl Orchestrator {
    async fn start(redis: &Redis, extra: &str) -> Self {
        Self::start_with(redis, extra, &[]).await
    }

    async fn start_with(redis: &Redis, extra: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rrq-test-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("rrq.toml");
        std::fs::write(
            &config,
            format!(
                "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
                 retry_backoff_initial_seconds = 0.01\n{extra}\n[rrq.runners.python]\nmax_in_flight = 4\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrq"))
            .args(["worker", "run", "--config"])
            .arg(&config)
            .args(args)
            // The file names a dead port on purpose: the env must win.
            .env("RRQ_REDIS_DSN", redis.dsn())
            .env("RUST_LOG", "info,rrq=debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rrq] {line}");
                if let Some(rest) = line.split("rrq orchestrator ready").nth(1) {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
            .await
            .unwrap()
            .expect("orchestrator did not print its ready line");
        let addr = ready
            .split("python=")
            .nth(1)
            .and_then(|s| s.split([',', ']']).next())
            .expect("ready line names the python listener")
            .to_owned();
        Self { child, dir, addr }
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
struct TestRunner {
    tx: mpsc::Sender<RunnerMessage>,
    inbound: tonic::Streaming<OrchestratorMessage>,
    /// Executions received but not yet consumed by `next_execution`.
    pending: Vec<ExecutionRequest>,
}

impl TestRunner {
    async fn connect(addr: &str, handlers: &[&str]) -> Self {
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
                runner_name: "python".into(),
                language: "test".into(),
                handlers: handlers.iter().map(|h| (*h).to_owned()).collect(),
                max_in_flight: 4,
                pid: std::process::id(),
                process_token: String::new(),
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

    async fn next_execution(&mut self) -> ExecutionRequest {
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

    async fn send(&self, job_id: &str, attempt: i64, result: outcome::Result) {
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

    async fn heartbeat(&self) {
        self.tx
            .send(RunnerMessage {
                kind: Some(runner_message::Kind::Heartbeat(Heartbeat { in_flight: 0 })),
            })
            .await
            .unwrap();
    }
}

fn job(queue: &str, id: &str, function: &str, max_retries: i64) -> EnqueueRequest {
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
struct DoneWatch {
    messages: redis::aio::PubSubStream,
}

impl DoneWatch {
    async fn new(redis: &Redis, queue: &str, id: &str) -> Self {
        let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
        pubsub
            .subscribe(QueueKeys::new(queue).done_channel(id))
            .await
            .unwrap();
        Self {
            messages: pubsub.into_on_message(),
        }
    }

    async fn wait(&mut self) -> i32 {
        let msg = tokio::time::timeout(WAIT, self.messages.next())
            .await
            .expect("job did not reach a terminal status")
            .unwrap();
        msg.get_payload::<i32>().unwrap()
    }
}

async fn job_field(store: &Store, queue: &str, id: &str, field: &str) -> String {
    let v: Option<String> = redis::cmd("HGET")
        .arg(QueueKeys::new(queue).job(id))
        .arg(field)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    v.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_succeeds() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["echo"]).await;

    let mut done = DoneWatch::new(&redis, "default", "ok-1").await;
    let enq = store
        .enqueue(&job("default", "ok-1", "echo", 3))
        .await
        .unwrap();
    assert!(matches!(enq, Enqueued::Created { .. }));

    let exec = runner.next_execution().await;
    assert_eq!(exec.job_id, "ok-1");
    assert_eq!(exec.attempt, 1);
    assert_eq!(exec.function_name, "echo");
    assert_eq!(exec.queue_name, "default");
    assert_eq!(exec.max_retries, 3);
    // Default timeout 300s from the claim's Redis time.
    assert!(exec.deadline_ms > exec.enqueued_at_ms + 299_000, "{exec:?}");
    runner
        .send(
            &exec.job_id,
            exec.attempt,
            outcome::Result::Success(Success {
                result_json: exec.params_json.clone(),
            }),
        )
        .await;

    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    assert_eq!(
        job_field(&store, "default", "ok-1", "result_json").await,
        r#"{"x": 1}"#
    );
    assert_eq!(job_field(&store, "default", "ok-1", "attempt").await, "1");
    runner.heartbeat().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_retries_then_succeeds() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    // A queue discovered through its wake-up, not configured anywhere.
    let queue = "retry-q";
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["flaky"]).await;

    let mut done = DoneWatch::new(&redis, queue, "r-1").await;
    store.enqueue(&job(queue, "r-1", "flaky", 2)).await.unwrap();

    let first = runner.next_execution().await;
    assert_eq!((first.job_id.as_str(), first.attempt), ("r-1", 1));
    runner
        .send(
            "r-1",
            1,
            outcome::Result::Retry(Retry {
                delay_ms: Some(0),
                message: "not yet".into(),
            }),
        )
        .await;

    let second = runner.next_execution().await;
    assert_eq!((second.job_id.as_str(), second.attempt), ("r-1", 2));
    assert_eq!(
        job_field(&store, queue, "r-1", "last_error").await,
        "not yet"
    );
    runner
        .send(
            "r-1",
            2,
            outcome::Result::Success(Success {
                result_json: "42".into(),
            }),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    assert_eq!(job_field(&store, queue, "r-1", "result_json").await, "42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_fails_fast() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let _runner = TestRunner::connect(&orch.addr, &["echo", "other"]).await;

    let mut done = DoneWatch::new(&redis, "default", "u-1").await;
    let started = std::time::Instant::now();
    store
        .enqueue(&job("default", "u-1", "nope", 3))
        .await
        .unwrap();
    assert_eq!(done.wait().await, JobStatus::Failed as i32);
    // Far sooner than any timeout would fire.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        job_field(&store, "default", "u-1", "last_error_type").await,
        "UnknownFunction"
    );
    let message = job_field(&store, "default", "u-1", "last_error").await;
    assert!(
        message.contains("nope") && message.contains("python") && message.contains("echo"),
        "{message}"
    );
    let in_dlq: Option<f64> = redis::cmd("ZSCORE")
        .arg(QueueKeys::new("default").dlq())
        .arg("u-1")
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert!(in_dlq.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_outcomes_and_settles_are_rejected() {
    let redis = Redis::start().await;
    let store = redis.store().await;

    // Store level: the fence rejects a wrong owner and a wrong attempt.
    store
        .enqueue(&job("fence", "f-1", "echo", 1))
        .await
        .unwrap();
    let claim = store.claim("fence", 10, "owner-a", 30_000).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    let settle = |owner: &str, attempt: i64| Settle {
        queue: "fence".into(),
        job_id: "f-1".into(),
        attempt,
        owner: owner.into(),
        action: SettleAction::Complete {
            result_json: "1".into(),
        },
        default_result_ttl_ms: 60_000,
        dlq_retention_ms: 60_000,
    };
    let results = store
        .settle(&[
            settle("owner-b", 1),
            settle("owner-a", 2),
            settle("owner-a", 1),
        ])
        .await
        .unwrap();
    assert!(
        matches!(results[0], Err(rrq_store::Error::StaleFence { .. })),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Err(rrq_store::Error::StaleFence { .. })),
        "{results:?}"
    );
    assert_eq!(
        results[2].as_ref().unwrap().status,
        JobStatus::Completed as i32
    );
    // A terminal job absorbs: settling again is stale too.
    let again = store.settle(&[settle("owner-a", 1)]).await.unwrap();
    assert!(matches!(
        again[0],
        Err(rrq_store::Error::StaleFence {
            status: 4,
            attempt: 1,
            ..
        })
    ));

    // Orchestrator level: an outcome for another attempt is ignored.
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["echo"]).await;
    let mut done = DoneWatch::new(&redis, "default", "f-2").await;
    store
        .enqueue(&job("default", "f-2", "echo", 1))
        .await
        .unwrap();
    let exec = runner.next_execution().await;
    runner
        .send(
            "f-2",
            exec.attempt + 1,
            outcome::Result::Success(Success {
                result_json: "\"stale\"".into(),
            }),
        )
        .await;
    runner
        .send(
            "f-2",
            exec.attempt,
            outcome::Result::Success(Success {
                result_json: "\"fresh\"".into(),
            }),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    assert_eq!(
        job_field(&store, "default", "f-2", "result_json").await,
        "\"fresh\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_runner_retries_its_jobs() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut first = TestRunner::connect(&orch.addr, &["echo"]).await;

    let mut done = DoneWatch::new(&redis, "default", "l-1").await;
    store
        .enqueue(&job("default", "l-1", "echo", 2))
        .await
        .unwrap();
    let exec = first.next_execution().await;
    assert_eq!(exec.attempt, 1);
    drop(first);

    let mut second = TestRunner::connect(&orch.addr, &["echo"]).await;
    let exec = second.next_execution().await;
    assert_eq!((exec.job_id.as_str(), exec.attempt), ("l-1", 2));
    assert_eq!(
        job_field(&store, "default", "l-1", "last_error_type").await,
        "RunnerLost"
    );
    second
        .send(
            "l-1",
            2,
            outcome::Result::Success(Success {
                result_json: "null".into(),
            }),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
}

#[test]
fn config_errors_exit_2() {
    let dir = std::env::temp_dir().join(format!("rrq-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[rrq.runners.python]\nfoo = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rrq"))
        .args(["worker", "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rrq.runners.python.foo"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cancels_retries_and_closes_a_stuck_runner() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "cancel_grace_seconds = 0.2").await;
    let mut runner = TestRunner::connect(&orch.addr, &["hang"]).await;

    let mut done = DoneWatch::new(&redis, "default", "t-1").await;
    let mut req = job("default", "t-1", "hang", 0);
    req.job_timeout_ms = 300;
    store.enqueue(&req).await.unwrap();
    let exec = runner.next_execution().await;
    // Deadline = claim time (Redis clock, just after the enqueue) + timeout.
    let lead = exec.deadline_ms - exec.enqueued_at_ms;
    assert!((300..1300).contains(&lead), "{exec:?}");

    // The deadline passes: a cancel(TIMEOUT) arrives and the attempt is
    // settled (no retries left, so it is dead-lettered).
    let msg = tokio::time::timeout(WAIT, runner.inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match msg.kind {
        Some(orchestrator_message::Kind::Cancel(c)) => {
            assert_eq!((c.job_id.as_str(), c.attempt), ("t-1", 1));
            assert_eq!(c.reason, rrq_proto::v1::CancelReason::Timeout as i32);
        }
        other => panic!("expected cancel, got {other:?}"),
    }
    assert_eq!(done.wait().await, JobStatus::Failed as i32);
    assert_eq!(
        job_field(&store, "default", "t-1", "last_error_type").await,
        "JobTimeout"
    );
    assert_eq!(
        job_field(&store, "default", "t-1", "last_error").await,
        "job timed out after 0.3s"
    );

    // The runner ignores the cancel: after cancel_grace its stream is ended.
    let end = tokio::time::timeout(WAIT, runner.inbound.message())
        .await
        .unwrap();
    match end {
        Err(status) => assert_eq!(status.code(), tonic::Code::Aborted),
        other => panic!("expected the stream to be aborted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_exits_when_idle() {
    let redis = Redis::start().await;
    let mut orch = Orchestrator::start_with(&redis, "", &["--burst"]).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = orch.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "burst run did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_running_jobs() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "shutdown_grace_seconds = 0.2").await;
    let mut runner = TestRunner::connect(&orch.addr, &["hang"]).await;
    store
        .enqueue(&job("default", "s-1", "hang", 3))
        .await
        .unwrap();
    let exec = runner.next_execution().await;
    assert_eq!(exec.attempt, 1);

    let pid = libc::pid_t::try_from(orch.child.id()).unwrap();
    // SAFETY: plain kill(2) of our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let msg = tokio::time::timeout(WAIT, runner.inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match msg.kind {
        Some(orchestrator_message::Kind::Cancel(c)) => {
            assert_eq!(c.reason, rrq_proto::v1::CancelReason::Shutdown as i32)
        }
        other => panic!("expected cancel, got {other:?}"),
    }
    let mut orch = orch;
    let status = tokio::task::spawn_blocking(move || {
        let s = orch.child.wait().unwrap();
        (s, orch)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "{status}");
    // Released without charging the attempt: pending again, attempt 0.
    assert_eq!(job_field(&store, "default", "s-1", "status").await, "1");
    assert_eq!(job_field(&store, "default", "s-1", "attempt").await, "0");
}
