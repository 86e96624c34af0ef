//! Issue 13 items 4 and 5 for the Rust runner runtime: jobs finishing
//! together, one with 5 MB of error text and one asking for a retry delay
//! past the orchestrator's limit, next to a success. The success completes
//! once, the others end with a recorded error (cut and marked, or naming the
//! bad delay), and the runner keeps its stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rrq_runner::{HandlerError, Registry, Runner};
use rrq_store::JobStatus;
use serde_json::json;

const CONFIG: &str = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"rust\"\n\
     retry_backoff_initial_seconds = 0.01\nmax_error_message_bytes = 1024\n\
     [rrq.runners.rust]\nmax_in_flight = 8\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_outcomes_end_their_own_jobs_only() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start_config(&redis, CONFIG, &[], &[]).await;
    let addr = orch.addrs.get("rust").cloned().expect("rust listener");

    // The three jobs finish together, so their outcomes share a batch.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let mut registry = Registry::new();
    registry.register("together", move |req, _c| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            match req.params["mode"].as_str() {
                Some("huge") => Err(HandlerError::failed(
                    "Boom",
                    format!("HEAD{}", "m".repeat(5 * 1024 * 1024)),
                )),
                Some("forever") => Err(HandlerError::retry(
                    Some(Duration::from_secs(u64::MAX)),
                    "much later",
                )),
                _ => Ok(json!(std::process::id())),
            }
        }
    });
    let runner = Runner::new(registry)
        .process_token(TOKEN)
        .runner_name("rust")
        .max_in_flight(8)
        .handle_signals(false);
    let stop = runner.stop_token();
    let runner = tokio::spawn(runner.run(addr));

    let mut watches = Vec::new();
    for (id, mode) in [("ok", "ok"), ("huge", "huge"), ("forever", "forever")] {
        let mut req = job("default", id, "together", 0);
        req.params_json = json!({ "mode": mode }).to_string();
        watches.push(DoneWatch::new(&redis, "default", id).await);
        store.enqueue(&req).await.unwrap();
    }
    let mut statuses = Vec::new();
    for w in &mut watches {
        statuses.push(w.wait().await);
    }
    assert_eq!(
        statuses,
        [
            JobStatus::Completed as i32,
            JobStatus::Failed as i32,
            JobStatus::Failed as i32
        ]
    );
    assert_eq!(job_field(&store, "default", "ok", "attempt").await, "1");

    let huge = job_field(&store, "default", "huge", "last_error").await;
    assert!(huge.starts_with("HEADmmm"));
    assert!(huge.contains("… [truncated by rrq: "), "{}", &huge[1000..]);
    assert!(huge.len() <= 1024 + 96, "{}", huge.len());

    assert_eq!(
        job_field(&store, "default", "forever", "last_error_type").await,
        "InvalidRetryDelay"
    );
    let forever = job_field(&store, "default", "forever", "last_error").await;
    assert!(forever.contains("at most 315360000 s"), "{forever}");

    // Still the same stream: one connection in the orchestrator's view.
    let mut req = job("default", "after", "together", 0);
    req.params_json = json!({ "mode": "ok" }).to_string();
    let mut done = DoneWatch::new(&redis, "default", "after").await;
    store.enqueue(&req).await.unwrap();
    // The barrier needs three: two more jobs of the same kind join it.
    for id in ["after-2", "after-3"] {
        let mut req = job("default", id, "together", 0);
        req.params_json = json!({ "mode": "ok" }).to_string();
        store.enqueue(&req).await.unwrap();
    }
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    assert!(!runner.is_finished());

    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("runner did not stop")
        .unwrap()
        .unwrap();
}
