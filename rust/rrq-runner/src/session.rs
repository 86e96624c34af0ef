//! One connected stream: runs executions as tokio tasks, answers cancels,
//! batches outcomes and sends heartbeats (docs/protocol.md).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use rrq_proto::v1::{
    self, CancelJob, CancelReason, Cancelled, Failure, FailureKind, Heartbeat, HelloAck,
    OrchestratorMessage, Outcome, OutcomeBatch, Retry, RunnerMessage, Success, TimedOut,
    orchestrator_message, outcome, runner_message,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{debug, info, warn};

use crate::handler::{ExecutionRequest, HandlerError, Registry};
use rrq_proto::error_text::{MAX_ERROR_TYPE_BYTES, cut_head, cut_tail};

/// Longest retry delay the orchestrator accepts: MAX_DURATION_MS, 3,650 days
/// (rust/rrq-store/limits.toml; docs/protocol.md).
const MAX_RETRY_DELAY: Duration =
    Duration::from_millis(rrq_proto::limits::MAX_DURATION_MS.unsigned_abs());

/// Heartbeat interval used when the hello_ack does not give one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a stopping runner waits for the orchestrator to close its side.
const FINISH_SENDING_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The orchestrator ended the stream (or the connection broke).
    Stream,
    /// The runner was asked to stop and closed the stream itself.
    Stopped,
}

/// Why an execution was cancelled, which decides its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CancelKind {
    Timeout,
    Other,
}

/// One execution this runner holds until its outcome is sent.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    cancelled: Option<CancelKind>,
    task: JoinHandle<()>,
}

/// An execution's task finished with this result (before any cancel override).
#[derive(Debug)]
struct Done {
    job_id: String,
    attempt: i64,
    result: outcome::Result,
}

/// Settings of one session.
#[derive(Debug)]
pub(crate) struct Session {
    pub registry: Arc<Registry>,
    pub ack: HelloAck,
    pub outbound: mpsc::UnboundedSender<RunnerMessage>,
    pub stop: CancellationToken,
    pub shutdown_grace: Duration,
}

impl Session {
    /// Serves the stream until it ends or the runner is stopped.
    pub(crate) async fn run(self, mut inbound: Streaming<OrchestratorMessage>) -> Ended {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut state = State {
            registry: self.registry.clone(),
            max_result_bytes: self.ack.max_result_bytes,
            max_error_bytes: usize::try_from(self.ack.max_error_bytes).unwrap_or(0),
            running: HashMap::new(),
            pending: Vec::new(),
            done_tx,
            outbound: self.outbound,
        };

        let every = u64::try_from(self.ack.heartbeat_interval_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);

        // Set once stopping: no new executions; running ones get until the deadline.
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if drain_deadline.is_some() && state.running.is_empty() {
                debug!("stopping: no job running");
                break;
            }
            let grace_expired = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => state.handle(message, drain_deadline.is_none()),
                    Ok(None) => {
                        info!("stream ended by the orchestrator");
                        state.abandon_all();
                        return Ended::Stream;
                    }
                    Err(status) => {
                        info!("stream ended: {status}");
                        state.abandon_all();
                        return Ended::Stream;
                    }
                },
                Some(done) = done_rx.recv() => {
                    state.finished(done);
                    // Everything that is ready goes in the same batch.
                    while let Ok(done) = done_rx.try_recv() {
                        state.finished(done);
                    }
                    state.flush();
                }
                _ = heartbeat.tick() => {
                    let in_flight = u32::try_from(state.running.len()).unwrap_or(u32::MAX);
                    state.send(runner_message::Kind::Heartbeat(Heartbeat { in_flight }));
                }
                () = self.stop.cancelled(), if drain_deadline.is_none() => {
                    info!(
                        "stopping: {} job(s) running, grace {:?}",
                        state.running.len(),
                        self.shutdown_grace
                    );
                    drain_deadline = Some(Instant::now() + self.shutdown_grace);
                }
                () = grace_expired => {
                    warn!("stopping: abandoning {} job(s) still running", state.running.len());
                    state.abandon_all();
                }
            }
        }
        state.flush();
        // Half-close our side, then give the orchestrator a moment to close its own.
        drop(state);
        let _ = tokio::time::timeout(FINISH_SENDING_TIMEOUT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        Ended::Stopped
    }
}

struct State {
    registry: Arc<Registry>,
    max_result_bytes: i64,
    /// Cap on each error text sent (0: none).
    max_error_bytes: usize,
    running: HashMap<(String, i64), Running>,
    pending: Vec<Outcome>,
    done_tx: mpsc::UnboundedSender<Done>,
    outbound: mpsc::UnboundedSender<RunnerMessage>,
}

impl State {
    fn send(&self, kind: runner_message::Kind) {
        // A closed stream is noticed on the inbound side.
        let _ = self.outbound.send(RunnerMessage { kind: Some(kind) });
    }

    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for outcomes in frames(pending) {
            self.send(runner_message::Kind::Outcomes(OutcomeBatch { outcomes }));
        }
    }

    fn handle(&mut self, message: OrchestratorMessage, accepting: bool) {
        match message.kind {
            Some(orchestrator_message::Kind::Execute(batch)) => {
                for request in batch.requests {
                    if accepting {
                        self.start(request);
                    } else {
                        // Stopping: the job goes back to the queue when the stream ends.
                        info!(
                            "not starting job {} (attempt {}): stopping",
                            request.job_id, request.attempt
                        );
                    }
                }
                self.flush();
            }
            Some(orchestrator_message::Kind::Cancel(cancel)) => self.cancel(&cancel),
            Some(orchestrator_message::Kind::HelloAck(_)) => warn!("ignoring a second hello_ack"),
            None => warn!("ignoring an empty orchestrator message"),
        }
    }

    fn start(&mut self, wire: v1::ExecutionRequest) {
        let key = (wire.job_id.clone(), wire.attempt);
        if self.running.contains_key(&key) {
            warn!("job {} attempt {} is already running here", key.0, key.1);
            return;
        }
        let Some(handler) = self.registry.get(&wire.function_name).cloned() else {
            let names = self.registry.names().join(", ");
            let message = format!(
                "no handler named {:?} (this runner has: {names})",
                wire.function_name
            );
            self.push(
                &key,
                failure(FailureKind::UnknownHandler, "UnknownFunction", message),
            );
            return;
        };
        let params = match serde_json::from_str::<Value>(&wire.params_json) {
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                let message = format!("params must be a JSON object, got {}", json_type(&other));
                self.push(
                    &key,
                    failure(FailureKind::InvalidParams, "InvalidParams", message),
                );
                return;
            }
            Err(e) => {
                let message = format!("params are not valid JSON: {e}");
                self.push(
                    &key,
                    failure(FailureKind::InvalidParams, "InvalidParams", message),
                );
                return;
            }
        };
        let request = ExecutionRequest {
            job_id: wire.job_id,
            function_name: wire.function_name,
            params,
            attempt: wire.attempt,
            queue_name: wire.queue_name,
            enqueued_at: epoch_ms(wire.enqueued_at_ms),
            deadline: epoch_ms(wire.deadline_ms),
            trace_parent: wire.trace_parent,
            trace_state: wire.trace_state,
            max_retries: wire.max_retries,
        };
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let done_tx = self.done_tx.clone();
        let max_bytes = self.max_result_bytes;
        let (job_id, attempt) = key.clone();
        let task = tokio::spawn(async move {
            let call = AssertUnwindSafe(async move { handler(request, token).await });
            let result = match call.catch_unwind().await {
                Ok(Ok(value)) => encode_result(&value, max_bytes),
                Ok(Err(err)) => from_handler_error(err),
                Err(panic) => failure(FailureKind::HandlerError, "Panic", panic_message(&*panic)),
            };
            let _ = done_tx.send(Done {
                job_id,
                attempt,
                result,
            });
        });
        self.running.insert(
            key,
            Running {
                cancel,
                cancelled: None,
                task,
            },
        );
    }

    fn cancel(&mut self, cancel: &CancelJob) {
        let key = (cancel.job_id.clone(), cancel.attempt);
        let Some(running) = self.running.get_mut(&key) else {
            return; // finished already, or another attempt: ignore
        };
        if running.cancelled.is_some() {
            return;
        }
        let reason = CancelReason::try_from(cancel.reason).unwrap_or(CancelReason::Unspecified);
        running.cancelled = Some(if reason == CancelReason::Timeout {
            CancelKind::Timeout
        } else {
            CancelKind::Other
        });
        info!(
            "cancelling job {} attempt {} ({})",
            key.0,
            key.1,
            reason.as_str_name()
        );
        running.cancel.cancel();
    }

    fn finished(&mut self, done: Done) {
        let key = (done.job_id, done.attempt);
        let Some(running) = self.running.remove(&key) else {
            return; // abandoned
        };
        let result = match running.cancelled {
            Some(CancelKind::Timeout) => outcome::Result::TimedOut(TimedOut {}),
            Some(CancelKind::Other) => outcome::Result::Cancelled(Cancelled {}),
            None => done.result,
        };
        self.push(&key, result);
    }

    fn push(&mut self, key: &(String, i64), result: outcome::Result) {
        self.pending.push(Outcome {
            job_id: key.0.clone(),
            attempt: key.1,
            result: Some(bound_error_text(result, self.max_error_bytes)),
        });
    }

    /// The stream is gone or the drain grace ran out: no outcome will be sent
    /// for the executions still running; signal and drop them.
    fn abandon_all(&mut self) {
        for (_, running) in self.running.drain() {
            running.cancel.cancel();
            running.task.abort();
        }
    }
}

fn epoch_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn failure(kind: FailureKind, error_type: &str, message: String) -> outcome::Result {
    outcome::Result::Failure(Failure {
        kind: kind as i32,
        error_type: error_type.to_owned(),
        message,
        traceback: String::new(),
    })
}

/// `result_json` for a returned value, or the failure when it is too large.
fn encode_result(value: &Value, max_bytes: i64) -> outcome::Result {
    let text = match serde_json::to_string(value) {
        Ok(text) => text,
        Err(e) => {
            return failure(
                FailureKind::ResultNotSerializable,
                "ResultNotSerializable",
                e.to_string(),
            );
        }
    };
    let size = text.len();
    if max_bytes > 0 && i64::try_from(size).unwrap_or(i64::MAX) > max_bytes {
        return failure(
            FailureKind::ResultTooLarge,
            "ResultTooLarge",
            format!("result is {size} bytes of JSON, the limit is {max_bytes}"),
        );
    }
    outcome::Result::Success(Success { result_json: text })
}

/// Outcomes in one message stop at this size: the orchestrator refuses a
/// frame over its decoding limit (at least 64 MiB) by ending the stream, which
/// would lose every outcome in it. One outcome larger than this goes alone.
const MAX_OUTCOMES_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// `outcomes` split into batches of at most [`MAX_OUTCOMES_FRAME_BYTES`].
fn frames(outcomes: Vec<Outcome>) -> Vec<Vec<Outcome>> {
    use prost::Message as _;
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for o in outcomes {
        let n = o.encoded_len() + 8; // the field tag and length in the batch
        if !chunk.is_empty() && size + n > MAX_OUTCOMES_FRAME_BYTES {
            out.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += n;
        chunk.push(o);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// `result` with its error text cut to `cap` bytes per field (0: no cap),
/// as the orchestrator cuts it (`rrq_proto::error_text`).
fn bound_error_text(result: outcome::Result, cap: usize) -> outcome::Result {
    let cap = if cap == 0 { usize::MAX } else { cap };
    let head = |text: String, cap: usize| cut_head(&text, cap).into_owned();
    match result {
        outcome::Result::Retry(r) => outcome::Result::Retry(Retry {
            delay_ms: r.delay_ms,
            message: head(r.message, cap),
        }),
        outcome::Result::Failure(f) => outcome::Result::Failure(Failure {
            kind: f.kind,
            error_type: head(f.error_type, MAX_ERROR_TYPE_BYTES),
            message: head(f.message, cap),
            traceback: cut_tail(&f.traceback, cap).into_owned(),
        }),
        other => other,
    }
}

fn from_handler_error(err: HandlerError) -> outcome::Result {
    match err {
        // A delay past the orchestrator's limit is a handler bug: say so
        // rather than clamp it silently.
        HandlerError::Retry {
            delay: Some(delay),
            message,
        } if delay > MAX_RETRY_DELAY => failure(
            FailureKind::HandlerError,
            "InvalidRetryDelay",
            format!(
                "HandlerError::retry delay must be at most {} s (3,650 days), got {} s (retry message: {message})",
                MAX_RETRY_DELAY.as_secs(),
                delay.as_secs()
            ),
        ),
        HandlerError::Retry { delay, message } => outcome::Result::Retry(Retry {
            delay_ms: delay.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            message: if message.is_empty() {
                "retry requested".to_owned()
            } else {
                message
            },
        }),
        HandlerError::Fatal(message) => failure(FailureKind::Fatal, "FatalJobError", message),
        HandlerError::Failed {
            error_type,
            message,
        } => failure(FailureKind::HandlerError, &error_type, message),
        HandlerError::NotSerializable(message) => failure(
            FailureKind::ResultNotSerializable,
            "ResultNotSerializable",
            message,
        ),
        HandlerError::Cancelled => failure(
            FailureKind::HandlerError,
            "Cancelled",
            "the handler stopped as cancelled without a cancel".to_owned(),
        ),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "the handler panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    #[test]
    fn results_over_the_limit_fail() {
        let v = serde_json::json!({"data": "xxxx"});
        assert!(matches!(
            encode_result(&v, 1000),
            outcome::Result::Success(Success { ref result_json }) if result_json == r#"{"data":"xxxx"}"#
        ));
        match encode_result(&v, 5) {
            outcome::Result::Failure(f) => {
                assert_eq!(f.kind, FailureKind::ResultTooLarge as i32);
                assert_eq!(f.error_type, "ResultTooLarge");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn out_of_range_retry_delays_fail_the_attempt() {
        for secs in [MAX_RETRY_DELAY.as_secs() + 1, u64::MAX] {
            match from_handler_error(HandlerError::retry(Some(Duration::from_secs(secs)), "x")) {
                outcome::Result::Failure(f) => {
                    assert_eq!(f.error_type, "InvalidRetryDelay");
                    assert!(
                        f.message.contains(&format!("got {secs} s")),
                        "{}",
                        f.message
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(
            from_handler_error(HandlerError::retry(Some(MAX_RETRY_DELAY), "x")),
            outcome::Result::Retry(_)
        ));
    }

    #[test]
    fn outcome_frames_stay_under_the_budget() {
        let big = |i: usize| Outcome {
            job_id: i.to_string(),
            attempt: 1,
            result: Some(outcome::Result::Success(Success {
                result_json: "x".repeat(3 << 19), // 1.5 MiB
            })),
        };
        let sizes: Vec<usize> = frames((0..5).map(big).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(frames(Vec::new()).is_empty());
    }

    #[test]
    fn error_text_is_cut_to_the_ack_cap() {
        let cut = bound_error_text(
            failure(FailureKind::HandlerError, "E", "m".repeat(1 << 20)),
            1024,
        );
        match cut {
            outcome::Result::Failure(f) => {
                assert!(
                    f.message
                        .ends_with("… [truncated by rrq: 1048576 bytes, kept 1024]")
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn handler_errors_map_one_to_one() {
        let retry = from_handler_error(HandlerError::retry(Some(Duration::from_millis(1500)), ""));
        assert_eq!(
            retry,
            outcome::Result::Retry(Retry {
                delay_ms: Some(1500),
                message: "retry requested".into()
            })
        );
        match from_handler_error(HandlerError::fatal("no")) {
            outcome::Result::Failure(f) => assert_eq!(f.kind, FailureKind::Fatal as i32),
            other => panic!("unexpected {other:?}"),
        }
        match from_handler_error(HandlerError::failed("FixtureError", "always fails")) {
            outcome::Result::Failure(f) => {
                assert_eq!(f.kind, FailureKind::HandlerError as i32);
                assert_eq!(f.error_type, "FixtureError");
                assert_eq!(f.message, "always fails");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
