//! End-to-end tests of the Rust runner runtime (`rrq-runner`): the real `rrq`
//! binary configured with an external runner (no `cmd`), and an in-process
//! `rrq_runner::Runner` dialling its listener.
//!
//! Synchronisation is by events only: the ready line, the job's done channel,
//! and channels the handlers signal on. Every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use rrq_runner::{HandlerError, Registry, Runner};
use rrq_store::{JobStatus, Store};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"rust\"\n\
     retry_backoff_initial_seconds = 0.01\nmax_payload_bytes = 4096\n\
     [rrq.runners.rust]\nmax_in_flight = 8\n";

/// A private Redis, the orchestrator, and a Rust runner serving `registry`.
struct Setup {
    redis: Redis,
    store: Store,
    _orch: Orchestrator,
    stop: CancellationToken,
    runner: tokio::task::JoinHandle<rrq_runner::Result<()>>,
}

impl Setup {
    async fn start(registry: Registry) -> Self {
        let redis = Redis::start().await;
        let store = redis.store().await;
        let orch = Orchestrator::start_config(&redis, CONFIG, &[], &[]).await;
        let addr = orch.addrs.get("rust").cloned().expect("rust listener");
        let runner = Runner::new(registry)
            .process_token(TOKEN)
            .runner_name("rust")
            .max_in_flight(8)
            .handle_signals(false);
        let stop = runner.stop_token();
        let runner = tokio::spawn(runner.run(addr));
        Self {
            redis,
            store,
            _orch: orch,
            stop,
            runner,
        }
    }

    /// Enqueues `function(params)` and waits for its terminal status.
    async fn run(&self, id: &str, function: &str, params: Value, max_retries: i64) -> i32 {
        let mut done = DoneWatch::new(&self.redis, "default", id).await;
        let mut req = job("default", id, function, max_retries);
        req.params_json = params.to_string();
        self.store.enqueue(&req).await.unwrap();
        done.wait().await
    }

    async fn field(&self, id: &str, field: &str) -> String {
        job_field(&self.store, "default", id, field).await
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.runner)
            .await
            .expect("runner did not stop")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_result_completes_the_job() {
    let mut r = Registry::new();
    r.register("echo", |req, _c| async move { Ok(req.params) });
    let s = Setup::start(r).await;
    let status = s
        .run("ok", "echo", json!({"b": 1, "a": [1.5, "é"]}), 3)
        .await;
    assert_eq!(status, JobStatus::Completed as i32);
    // The params come back as the handler returned them, compact JSON.
    let result: Value = serde_json::from_str(&s.field("ok", "result_json").await).unwrap();
    assert_eq!(result, json!({"b": 1, "a": [1.5, "é"]}));
    assert_eq!(s.field("ok", "attempt").await, "1");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempt_retries_then_succeeds() {
    let mut r = Registry::new();
    r.register("flaky", |req, _c| async move {
        if req.attempt == 1 {
            return Err(HandlerError::failed("FlakyError", "first attempt fails"));
        }
        Ok(json!({"attempt": req.attempt}))
    });
    let s = Setup::start(r).await;
    assert_eq!(
        s.run("flaky", "flaky", json!({}), 2).await,
        JobStatus::Completed as i32
    );
    assert_eq!(s.field("flaky", "attempt").await, "2");
    assert_eq!(s.field("flaky", "result_json").await, r#"{"attempt":2}"#);
    let errors: Value = serde_json::from_str(&s.field("flaky", "errors_json").await).unwrap();
    assert_eq!(errors[0]["error_type"], "FlakyError");
    assert_eq!(errors[0]["message"], "first attempt fails");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delay_is_honoured() {
    let mut r = Registry::new();
    r.register("later", |req, _c| async move {
        if req.attempt == 1 {
            return Err(HandlerError::retry(
                Some(Duration::from_millis(1200)),
                "not yet",
            ));
        }
        Ok(Value::Null)
    });
    let s = Setup::start(r).await;
    assert_eq!(
        s.run("later", "later", json!({}), 3).await,
        JobStatus::Completed as i32
    );
    let errors: Value = serde_json::from_str(&s.field("later", "errors_json").await).unwrap();
    assert_eq!(errors[0]["message"], "not yet");
    let failed_at = errors[0]["at_ms"].as_i64().unwrap();
    let second_start: i64 = s.field("later", "started_at_ms").await.parse().unwrap();
    assert!(
        second_start - failed_at >= 1200,
        "attempt 2 started {} ms after the retry",
        second_start - failed_at
    );
    assert_eq!(s.field("later", "result_json").await, "null");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_unknown_panic_and_large_results_fail() {
    let mut r = Registry::new();
    r.register("fatal", |_req, _c| async move {
        Err(HandlerError::fatal("never works"))
    });
    r.register("boom", |_req, _c| async move {
        let fail = true;
        if fail {
            panic!("kaboom");
        }
        Ok(Value::Null)
    });
    r.register("big", |_req, _c| async move {
        Ok(json!({"data": "x".repeat(5000)}))
    });
    let s = Setup::start(r).await;

    // Fatal: FAILED at once although retries remain.
    assert_eq!(
        s.run("f", "fatal", json!({}), 3).await,
        JobStatus::Failed as i32
    );
    assert_eq!(s.field("f", "attempt").await, "1");
    assert_eq!(s.field("f", "last_error_type").await, "FatalJobError");
    assert_eq!(s.field("f", "last_error").await, "never works");

    // No handler of that name: FAILED at once.
    assert_eq!(
        s.run("u", "nope", json!({}), 3).await,
        JobStatus::Failed as i32
    );
    assert_eq!(s.field("u", "attempt").await, "1");

    // A panic is a handler error of type Panic (retried while retries remain).
    assert_eq!(
        s.run("p", "boom", json!({}), 1).await,
        JobStatus::Failed as i32
    );
    assert_eq!(s.field("p", "attempt").await, "2");
    assert_eq!(s.field("p", "last_error_type").await, "Panic");
    assert_eq!(s.field("p", "last_error").await, "kaboom");

    // Larger than max_result_bytes (= max_payload_bytes, 4096).
    assert_eq!(
        s.run("l", "big", json!({}), 0).await,
        JobStatus::Failed as i32
    );
    assert_eq!(s.field("l", "last_error_type").await, "ResultTooLarge");

    // The runner survived all of it.
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_handler_token() {
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (observed_tx, mut observed) = mpsc::unbounded_channel::<String>();
    let mut r = Registry::new();
    r.register("wait", move |req, cancel| {
        let started_tx = started_tx.clone();
        let observed_tx = observed_tx.clone();
        async move {
            let _ = started_tx.send(req.job_id.clone());
            cancel.cancelled().await;
            let _ = observed_tx.send(req.job_id);
            Err(HandlerError::Cancelled)
        }
    });
    let s = Setup::start(r).await;
    let mut done = DoneWatch::new(&s.redis, "default", "c").await;
    s.store
        .enqueue(&job("default", "c", "wait", 3))
        .await
        .unwrap();
    let id = tokio::time::timeout(WAIT, started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, "c");
    let outcome = s
        .store
        .cancel("default", "c", "cancelled on request", 60_000)
        .await
        .unwrap();
    assert_eq!(outcome, rrq_store::CancelOutcome::Requested);
    let id = tokio::time::timeout(WAIT, observed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, "c");
    assert_eq!(done.wait().await, JobStatus::Cancelled as i32);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_serializable_results_fail() {
    #[derive(serde::Serialize)]
    struct NotJson {
        value: f64,
    }
    let mut r = Registry::new();
    r.register_typed(
        "nan",
        |_req, _c| async move { Ok(NotJson { value: f64::NAN }) },
    );
    let s = Setup::start(r).await;
    assert_eq!(
        s.run("n", "nan", json!({}), 0).await,
        JobStatus::Failed as i32
    );
    assert_eq!(
        s.field("n", "last_error_type").await,
        "ResultNotSerializable"
    );
    s.stop().await;
}
