//! Settling attempts: what each outcome means for the job, and the task that
//! writes settles to Redis in pipelined batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rrq_proto::v1::{FailureKind, outcome};
use rrq_store::{Error as StoreError, Settle, SettleAction, Store};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, warn};

use crate::error_text::{MAX_ERROR_TYPE_BYTES, cut_head, cut_tail};

/// Error types written to `last_error_type` by the orchestrator itself.
pub mod error_type {
    /// The attempt passed its deadline.
    pub const JOB_TIMEOUT: &str = "JobTimeout";
    /// The runner's stream ended (or went silent) before the outcome arrived.
    pub const RUNNER_LOST: &str = "RunnerLost";
    /// No connected session of the target runner registered the handler.
    pub const UNKNOWN_FUNCTION: &str = "UnknownFunction";
    /// The result exceeded `max_payload_bytes`.
    pub const RESULT_TOO_LARGE: &str = "ResultTooLarge";
    /// The handler asked to be retried.
    pub const RETRY: &str = "Retry";
    /// The runner reported a cancel the orchestrator did not ask for.
    pub const CANCELLED: &str = "Cancelled";
}

/// Longest retry delay a runner may ask for: MAX_DURATION_MS (3,650 days,
/// rust/rrq-store/limits.toml), the longest duration a producer may give.
/// A longer one is clamped, per job, and the stored message says so.
pub const MAX_RETRY_DELAY_MS: i64 = rrq_store::limits::MAX_DURATION_MS;

/// Inputs of [`action_for`] that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Largest result stored.
    pub max_payload_bytes: usize,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Retry delay cap.
    pub backoff_max: Duration,
    /// Cap on a message kept as `last_error` and in `errors_json`.
    pub max_message_bytes: usize,
    /// Cap on a traceback kept in `errors_json`.
    pub max_traceback_bytes: usize,
}

impl Policy {
    /// Backoff delay after `attempt` failed.
    pub fn backoff_ms(&self, attempt: i64) -> i64 {
        // retry_backoff_max_seconds may be set past MAX_DURATION_MS (config
        // durations go to 100 years); a delay never does (settle.lua would
        // clamp it anyway, and the record must say what will happen).
        crate::backoff::retry_delay_ms(attempt, self.backoff_initial, self.backoff_max)
            .min(MAX_RETRY_DELAY_MS)
    }
}

/// What to write for a runner's outcome of a running attempt; `None` when
/// nothing must be written.
pub fn action_for(
    result: Option<&outcome::Result>,
    attempt: i64,
    policy: &Policy,
) -> Option<SettleAction> {
    let retry = |error_type: &str, message: String| SettleAction::Retry {
        message,
        error_type: error_type.to_owned(),
        delay_ms: policy.backoff_ms(attempt),
        traceback: String::new(),
    };
    Some(match result {
        Some(outcome::Result::Success(s)) => {
            if s.result_json.len() > policy.max_payload_bytes {
                retry(
                    error_type::RESULT_TOO_LARGE,
                    format!(
                        "result is {} bytes, the limit is {} (max_payload_bytes)",
                        s.result_json.len(),
                        policy.max_payload_bytes
                    ),
                )
            } else {
                SettleAction::Complete {
                    result_json: s.result_json.clone(),
                }
            }
        }
        Some(outcome::Result::Retry(r)) => {
            let mut message = if r.message.is_empty() {
                "the handler asked to be retried".to_owned()
            } else {
                cut_head(&r.message, policy.max_message_bytes).into_owned()
            };
            let delay_ms = match r.delay_ms {
                None => policy.backoff_ms(attempt),
                Some(d) if d > MAX_RETRY_DELAY_MS => {
                    message.push_str(&format!(
                        " [rrq: retry delay of {d} ms clamped to {MAX_RETRY_DELAY_MS} ms]"
                    ));
                    MAX_RETRY_DELAY_MS
                }
                Some(d) => d.max(0),
            };
            SettleAction::Retry {
                message,
                error_type: error_type::RETRY.to_owned(),
                delay_ms,
                traceback: String::new(),
            }
        }
        Some(outcome::Result::Failure(f)) => {
            let kind = FailureKind::try_from(f.kind).unwrap_or(FailureKind::HandlerError);
            let error_type = if f.error_type.is_empty() {
                kind.as_str_name()
                    .trim_start_matches("FAILURE_KIND_")
                    .to_owned()
            } else {
                cut_head(&f.error_type, MAX_ERROR_TYPE_BYTES).into_owned()
            };
            let message = failure_message(&cut_head(&f.message, policy.max_message_bytes));
            let traceback = cut_tail(&f.traceback, policy.max_traceback_bytes).into_owned();
            match kind {
                FailureKind::UnknownHandler | FailureKind::InvalidParams | FailureKind::Fatal => {
                    SettleAction::Fail {
                        message,
                        error_type,
                        traceback,
                    }
                }
                FailureKind::Unspecified
                | FailureKind::HandlerError
                | FailureKind::ResultNotSerializable
                | FailureKind::ResultTooLarge => SettleAction::Retry {
                    message,
                    error_type,
                    delay_ms: policy.backoff_ms(attempt),
                    traceback,
                },
            }
        }
        // A cancel we did not send (ours are settled when sent): count it as
        // a failed attempt so the job is not left ACTIVE until its lease expires.
        Some(outcome::Result::Cancelled(_)) => retry(
            error_type::CANCELLED,
            "the runner cancelled the attempt".to_owned(),
        ),
        // The runner enforced the deadline before our own timer fired.
        Some(outcome::Result::TimedOut(_)) => retry(
            error_type::JOB_TIMEOUT,
            "job timed out (reported by the runner)".to_owned(),
        ),
        None => retry(
            "InvalidOutcome",
            "the runner sent an outcome without a result".to_owned(),
        ),
    })
}

fn failure_message(message: &str) -> String {
    if message.is_empty() {
        "the handler failed".to_owned()
    } else {
        message.to_owned()
    }
}

/// Queue of settles feeding one writer task that batches them into pipelines.
#[derive(Debug, Clone)]
pub struct Settler {
    // One message per submit: a runner's outcomes frame reaches the writer
    // whole. Per-settle messages let the writer wake on the first of them and
    // write batches of one, one script call each.
    tx: mpsc::UnboundedSender<Vec<Settle>>,
    pending: Arc<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

/// Most settles in one pipeline.
const MAX_BATCH: usize = 512;

impl Settler {
    /// Starts the writer task.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending::default());
        tokio::spawn(run(store, rx, pending.clone()));
        Self { tx, pending }
    }

    /// Queues settles; they are written in order of submission.
    pub fn submit(&self, settles: impl IntoIterator<Item = Settle>) {
        let settles: Vec<Settle> = settles.into_iter().collect();
        let count = settles.len();
        if count == 0 {
            return;
        }
        self.pending.count.fetch_add(count, Ordering::SeqCst);
        if self.tx.send(settles).is_err() {
            // The writer only stops when the runtime does.
            self.pending.count.fetch_sub(count, Ordering::SeqCst);
        }
    }

    /// Settles queued but not yet written.
    pub fn pending(&self) -> usize {
        self.pending.count.load(Ordering::SeqCst)
    }

    /// Waits until every queued settle was written (or given up on).
    pub async fn flushed(&self) {
        loop {
            let idle = self.pending.idle.notified();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Vec<Settle>>, pending: Arc<Pending>) {
    let mut messages = Vec::new();
    let mut batch: Vec<Settle> = Vec::with_capacity(MAX_BATCH);
    // Whatever queued while the last write was in flight goes in the next one.
    while rx.recv_many(&mut messages, MAX_BATCH).await > 0 {
        for settles in messages.drain(..) {
            batch.extend(settles);
        }
        for chunk in batch.chunks(MAX_BATCH) {
            write(&store, chunk).await;
            pending.count.fetch_sub(chunk.len(), Ordering::SeqCst);
            pending.idle.notify_waiters();
        }
        batch.clear();
    }
}

async fn write(store: &Store, batch: &[Settle]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=6 {
        match store.settle(batch).await {
            Ok(results) => {
                for (s, r) in batch.iter().zip(results) {
                    match r {
                        Ok(done) => debug!(
                            job_id = %s.job_id, attempt = s.attempt, status = done.status,
                            "settled"
                        ),
                        Err(e @ StoreError::StaleFence { .. }) => {
                            debug!(queue = %s.queue, "settle rejected: {e}")
                        }
                        Err(e) => warn!(job_id = %s.job_id, "settle failed: {e}"),
                    }
                }
                return;
            }
            Err(e) if e.is_retryable() && attempt < 6 => {
                warn!("settle batch of {} failed, retrying: {e}", batch.len());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                // The leases of these jobs are no longer renewed, so lease
                // recovery gives them back: delivery stays at least once.
                warn!(
                    "settle batch of {} failed, leaving the jobs to lease recovery: {e}",
                    batch.len()
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rrq_proto::v1::{Cancelled, Failure, Retry, Success, TimedOut};

    const POLICY: Policy = Policy {
        max_payload_bytes: 10,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        max_message_bytes: 256,
        max_traceback_bytes: 512,
    };

    #[test]
    fn success_completes() {
        let r = outcome::Result::Success(Success {
            result_json: "{}".into(),
        });
        assert_eq!(
            action_for(Some(&r), 1, &POLICY),
            Some(SettleAction::Complete {
                result_json: "{}".into()
            })
        );
    }

    #[test]
    fn oversized_result_retries() {
        let r = outcome::Result::Success(Success {
            result_json: "x".repeat(11),
        });
        match action_for(Some(&r), 1, &POLICY) {
            Some(SettleAction::Retry { error_type, .. }) => {
                assert_eq!(error_type, "ResultTooLarge")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_uses_the_handlers_delay() {
        let r = outcome::Result::Retry(Retry {
            delay_ms: Some(1234),
            message: "later".into(),
        });
        assert_eq!(
            action_for(Some(&r), 1, &POLICY),
            Some(SettleAction::Retry {
                message: "later".into(),
                error_type: "Retry".into(),
                delay_ms: 1234,
                traceback: String::new(),
            })
        );
        let r = outcome::Result::Retry(Retry {
            delay_ms: None,
            message: String::new(),
        });
        match action_for(Some(&r), 2, &POLICY) {
            Some(SettleAction::Retry { delay_ms, .. }) => {
                assert!((1000..=2000).contains(&delay_ms))
            }
            other => panic!("{other:?}"),
        }
    }

    fn failure(kind: FailureKind) -> outcome::Result {
        outcome::Result::Failure(Failure {
            kind: kind as i32,
            error_type: "ValueError".into(),
            message: "bad".into(),
            traceback: "Traceback...".into(),
        })
    }

    #[test]
    fn failure_kinds_decide_retry_or_fail() {
        for kind in [
            FailureKind::Unspecified,
            FailureKind::HandlerError,
            FailureKind::ResultNotSerializable,
            FailureKind::ResultTooLarge,
        ] {
            match action_for(Some(&failure(kind)), 1, &POLICY) {
                Some(SettleAction::Retry {
                    error_type,
                    message,
                    traceback,
                    ..
                }) => {
                    assert_eq!(error_type, "ValueError");
                    assert_eq!(message, "bad");
                    assert_eq!(traceback, "Traceback...");
                }
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        for kind in [
            FailureKind::UnknownHandler,
            FailureKind::InvalidParams,
            FailureKind::Fatal,
        ] {
            assert!(
                matches!(
                    action_for(Some(&failure(kind)), 1, &POLICY),
                    Some(SettleAction::Fail { .. })
                ),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn long_error_texts_are_cut_to_the_policy() {
        let r = outcome::Result::Failure(Failure {
            kind: FailureKind::HandlerError as i32,
            error_type: "E".repeat(5000),
            message: format!("START{}", "m".repeat(5 * 1024 * 1024)),
            traceback: format!("{}END", "é".repeat(10_000)),
        });
        match action_for(Some(&r), 1, &POLICY) {
            Some(SettleAction::Retry {
                message,
                error_type,
                traceback,
                ..
            }) => {
                assert!(message.starts_with("START"));
                assert!(message.ends_with("… [truncated by rrq: 5242885 bytes, kept 256]"));
                assert!(traceback.ends_with("END"));
                assert!(traceback.starts_with("[truncated by rrq: 20003 bytes, kept the last"));
                assert!(traceback.len() <= 512 + crate::error_text::MARKER_ROOM);
                assert!(error_type.len() <= MAX_ERROR_TYPE_BYTES + crate::error_text::MARKER_ROOM);
            }
            other => panic!("{other:?}"),
        }
        let r = outcome::Result::Retry(Retry {
            delay_ms: None,
            message: "r".repeat(100_000),
        });
        match action_for(Some(&r), 1, &POLICY) {
            Some(SettleAction::Retry { message, .. }) => {
                assert!(message.ends_with("… [truncated by rrq: 100000 bytes, kept 256]"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(failure_message(""), "the handler failed");
    }

    #[test]
    fn out_of_range_retry_delays_are_clamped_and_noted() {
        for (asked, kept) in [
            (i64::MAX, MAX_RETRY_DELAY_MS),
            (MAX_RETRY_DELAY_MS + 1, MAX_RETRY_DELAY_MS),
            (MAX_RETRY_DELAY_MS, MAX_RETRY_DELAY_MS),
            (i64::MIN, 0),
            (-5, 0),
        ] {
            let r = outcome::Result::Retry(Retry {
                delay_ms: Some(asked),
                message: "later".into(),
            });
            match action_for(Some(&r), 1, &POLICY) {
                Some(SettleAction::Retry {
                    delay_ms, message, ..
                }) => {
                    assert_eq!(delay_ms, kept, "{asked}");
                    assert_eq!(
                        message.contains("clamped"),
                        asked > MAX_RETRY_DELAY_MS,
                        "{message}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unsolicited_cancel_and_timeout_retry() {
        for r in [
            outcome::Result::Cancelled(Cancelled {}),
            outcome::Result::TimedOut(TimedOut {}),
        ] {
            assert!(matches!(
                action_for(Some(&r), 1, &POLICY),
                Some(SettleAction::Retry { .. })
            ));
        }
    }
}
