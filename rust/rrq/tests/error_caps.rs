//! Issue 13 items 4 and 5, orchestrator side: a runner is not trusted to bound
//! its error text or its retry delay. One outcome batch from a raw protocol
//! runner holds a success, a retry asking for `i64::MAX` ms and a failure with
//! 5 MB of message and traceback: each job settles on its own terms, the error
//! text is cut to the configured caps and marked, the delay is clamped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rrq_proto::v1::{
    Failure, FailureKind, Outcome, OutcomeBatch, Retry, RunnerMessage, Success, outcome,
    runner_message,
};
use rrq_store::JobStatus;

const MESSAGE_CAP: usize = 1024;
const TRACEBACK_CAP: usize = 2048;
const MARKER_ROOM: usize = 96;
const MAX_DELAY_MS: i64 = rrq::settle::MAX_RETRY_DELAY_MS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_error_text_and_delay_are_bounded_per_job() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let queue = "caps-q";
    let orch = Orchestrator::start(
        &redis,
        &format!("max_error_message_bytes = {MESSAGE_CAP}\nmax_traceback_bytes = {TRACEBACK_CAP}"),
    )
    .await;
    let mut runner = TestRunner::connect(&orch.addr, &["f"]).await;

    let mut ok_done = DoneWatch::new(&redis, queue, "ok").await;
    let mut huge_done = DoneWatch::new(&redis, queue, "huge").await;
    for (id, retries) in [("ok", 0), ("late", 1), ("huge", 0)] {
        store.enqueue(&job(queue, id, "f", retries)).await.unwrap();
    }
    let mut attempts = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let e = runner.next_execution().await;
        attempts.insert(e.job_id, e.attempt);
    }

    let five_mb = 5 * 1024 * 1024;
    let message = format!("HEAD{}", "m".repeat(five_mb));
    let traceback = format!("{}raise Boom", "é".repeat(five_mb / 2));
    let results = [
        (
            "ok",
            outcome::Result::Success(Success {
                result_json: "1".into(),
            }),
        ),
        (
            "late",
            outcome::Result::Retry(Retry {
                delay_ms: Some(i64::MAX),
                message: "much later".into(),
            }),
        ),
        (
            "huge",
            outcome::Result::Failure(Failure {
                kind: FailureKind::Fatal as i32,
                error_type: "Boom".into(),
                message: message.clone(),
                traceback,
            }),
        ),
    ];
    // One message: the three settle in one batch, in this order.
    runner
        .tx
        .send(RunnerMessage {
            kind: Some(runner_message::Kind::Outcomes(OutcomeBatch {
                outcomes: results
                    .into_iter()
                    .map(|(id, result)| Outcome {
                        job_id: id.to_owned(),
                        attempt: attempts[id],
                        result: Some(result),
                    })
                    .collect(),
            })),
        })
        .await
        .unwrap();

    assert_eq!(ok_done.wait().await, JobStatus::Completed as i32);
    assert_eq!(huge_done.wait().await, JobStatus::Failed as i32);

    let last_error = job_field(&store, queue, "huge", "last_error").await;
    assert!(last_error.starts_with("HEADmmm"));
    assert!(
        last_error.ends_with(&format!(
            "… [truncated by rrq: {} bytes, kept {MESSAGE_CAP}]",
            message.len()
        )),
        "{}",
        &last_error[MESSAGE_CAP..]
    );
    assert!(last_error.len() <= MESSAGE_CAP + MARKER_ROOM);
    let errors: serde_json::Value =
        serde_json::from_str(&job_field(&store, queue, "huge", "errors_json").await).unwrap();
    let kept_tb = errors[0]["traceback"].as_str().unwrap();
    assert!(
        kept_tb.starts_with("[truncated by rrq: "),
        "{}",
        &kept_tb[..80]
    );
    assert!(kept_tb.ends_with("éraise Boom"));
    assert!(kept_tb.len() <= TRACEBACK_CAP + MARKER_ROOM);
    let record_bytes: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(rrq_store::Namespace::default().queue(queue).job("huge"))
        .query_async(&mut store.connection())
        .await
        .unwrap();
    eprintln!("record of the job with 5 MB of error text: {record_bytes} bytes");
    assert!(record_bytes < 16 * 1024, "{record_bytes}");

    // Settled before "huge" (same pipeline, earlier): RETRYING, MAX_DURATION_MS (3,650 days) out.
    assert_eq!(
        job_field(&store, queue, "late", "status").await,
        (JobStatus::Retrying as i32).to_string()
    );
    let late_error = job_field(&store, queue, "late", "last_error").await;
    assert!(
        late_error.starts_with("much later [rrq: retry delay of"),
        "{late_error}"
    );
    let run_at = job_run_at_ms(&store, queue, "late").await;
    let enqueued: i64 = job_field(&store, queue, "late", "enqueued_at_ms")
        .await
        .parse()
        .unwrap();
    let delay = run_at - enqueued;
    assert!(
        (MAX_DELAY_MS - 60_000..=MAX_DELAY_MS + 60_000).contains(&delay),
        "{delay}"
    );

    // The stream is still up: the next job reaches the same runner.
    store.enqueue(&job(queue, "after", "f", 0)).await.unwrap();
    assert_eq!(runner.next_execution().await.job_id, "after");
}
