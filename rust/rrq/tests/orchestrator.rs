//! End-to-end tests: a private redis-server, the real `rrq` binary, and a test
//! runner speaking the protocol through the generated tonic client.
//!
//! Synchronisation is by events only: the orchestrator's ready line, stream
//! messages, and the job's done channel on Redis pub/sub. Every wait has a
//! deadline so a bug fails the test instead of hanging it.

// A failed unwrap here is the test's failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rrq_proto::v1::{ExecutionRequest, Retry, Success, orchestrator_message, outcome};
use rrq_store::{Enqueued, JobStatus, Namespace, Settle, SettleAction, Store};

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

/// Claim script calls so far, by the one `ZRANGE` each claim makes (no
/// other script or command of a running orchestrator outside `--burst` uses it).
async fn claim_calls(store: &Store) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut store.connection())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_zrange:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Runs job `id` through `runner` and waits for its done message.
async fn run_one(redis: &Redis, store: &Store, runner: &mut TestRunner, id: &str) {
    let mut done = DoneWatch::new(redis, "default", id).await;
    store.enqueue(&job("default", id, "echo", 0)).await.unwrap();
    let exec = runner.next_execution().await;
    assert_eq!(exec.job_id, id);
    succeed(runner, &exec).await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
}

/// Reports `exec` as a success that returns its params.
async fn succeed(runner: &TestRunner, exec: &ExecutionRequest) {
    let result_json = exec.params_json.clone();
    runner
        .send(
            &exec.job_id,
            exec.attempt,
            outcome::Result::Success(Success { result_json }),
        )
        .await;
}

/// A freed slot is worth a claim only where slots ran out before due jobs
/// did: jobs run one at a time cost one claim each, not a second, empty
/// claim after every outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_claim_per_job_when_slots_are_free() {
    const JOBS: u64 = 30;
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["echo"]).await;
    // The session's first claim is behind us once a job has run.
    run_one(&redis, &store, &mut runner, "warm-up").await;

    let started = std::time::Instant::now();
    let before = claim_calls(&store).await;
    for i in 0..JOBS {
        run_one(&redis, &store, &mut runner, &format!("seq-{i}")).await;
    }
    let claims = claim_calls(&store).await - before;
    // Besides one claim per job: the safety tick claims every queue once a
    // second, and the read of the counter may race one claim.
    let allowed = JOBS + started.elapsed().as_secs() + 2;
    assert!(claims >= JOBS, "{claims} claims for {JOBS} jobs");
    assert!(
        claims <= allowed,
        "{claims} claims for {JOBS} jobs (allowed {allowed})"
    );
}

/// The other side of the rule above: a queue with more due jobs than free
/// slots gets its next job when a slot frees, with no new wake-up message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_slot_claims_a_backlogged_queue() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    for i in 0..6 {
        store
            .enqueue(&job("default", &format!("b-{i}"), "echo", 0))
            .await
            .unwrap();
    }
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["echo"]).await; // 4 slots
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(runner.next_execution().await);
    }
    for exec in running.iter().take(2) {
        succeed(&runner, exec).await;
    }
    let mut ids: Vec<String> = running.iter().map(|e| e.job_id.clone()).collect();
    ids.push(runner.next_execution().await.job_id);
    ids.push(runner.next_execution().await.job_id);
    ids.sort();
    let want: Vec<String> = (0..6).map(|i| format!("b-{i}")).collect();
    assert_eq!(ids, want);
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
        .arg(Namespace::default().queue("default").dlq())
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
    assert_eq!(job_field(&store, "default", "s-1", "attempt").await, ""); // 0: not stored
}
