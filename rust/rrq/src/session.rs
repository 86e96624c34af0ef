//! Runner sessions and the pure rules for routing a job to one of them.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use rrq_proto::v1::OrchestratorMessage;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// Identifies a session for the life of the orchestrator.
pub type SessionId = u64;

/// Messages to a runner; an `Err` ends the stream with that status.
pub type Outbound = mpsc::UnboundedSender<Result<OrchestratorMessage, tonic::Status>>;

/// One connected runner stream.
#[derive(Debug)]
pub struct Session {
    /// Session id.
    pub id: SessionId,
    /// Runner name from the hello.
    pub runner: String,
    /// Handlers the runner registered.
    pub handlers: BTreeSet<String>,
    /// Executions the runner accepts at once.
    pub max_in_flight: usize,
    /// Runner process id (informational).
    pub pid: u32,
    /// How the stream authenticated: the spawn token of the process the
    /// supervisor spawned (to kill it), none for external runners. Dropped
    /// with the session, which frees the token for the process's next stream.
    pub admission: crate::auth::Admission,
    /// Sender of the stream's outbound messages.
    pub tx: Outbound,
    /// Cancelled to make the session's reader end the stream.
    pub close: CancellationToken,
    /// Outstanding executions by job id: from the `execute` that carried them
    /// until the runner's outcome arrives (this is the credit the runner gave).
    pub executions: HashMap<String, Execution>,
    /// Executions sent to this session so far (`max_jobs_per_runner`).
    pub jobs_sent: u64,
    /// A recycling limit was reached: no new job is sent; once its running
    /// jobs end, its process is stopped gracefully and replaced.
    pub retiring: bool,
}

impl Session {
    /// Free execution slots (none while retiring).
    pub fn free(&self) -> usize {
        if self.retiring {
            return 0;
        }
        self.max_in_flight.saturating_sub(self.executions.len())
    }
}

/// Where an outstanding execution stands on our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// Running under our lease; its outcome will be settled.
    Running,
    /// A user asked to cancel it and the runner was sent `cancel(REQUESTED)`:
    /// still under our lease; its outcome (or the grace expiring) is settled.
    Cancelling,
    /// Already settled by us (timeout, lease lost, shutdown release): the slot
    /// stays taken until the runner's outcome arrives, which is then dropped.
    Settled,
}

/// One attempt outstanding on a session.
#[derive(Debug)]
pub struct Execution {
    /// Queue of the job.
    pub queue: String,
    /// Attempt (fence token).
    pub attempt: i64,
    /// Handler name sent to the runner.
    pub handler: String,
    /// Our side of the execution.
    pub state: ExecState,
    /// Deadline timer (or cancel-grace watcher), aborted when the outcome arrives.
    pub timer: Option<AbortHandle>,
    /// Until when our lease is known valid (monotonic).
    pub lease_valid_until: Instant,
    /// The attempt's `process` span, when OpenTelemetry is on.
    pub trace: Option<crate::telemetry::AttemptTrace>,
}

impl Execution {
    /// True while the attempt runs under our lease (its outcome will be settled).
    pub fn is_live(&self) -> bool {
        matches!(self.state, ExecState::Running | ExecState::Cancelling)
    }

    /// Ends the attempt's span (if any) as a failure.
    pub fn end_trace_error(&mut self, error_type: &str, message: &str) {
        if let Some(t) = self.trace.take() {
            t.end_error(error_type, message);
        }
    }
}

/// A session's view for [`pick_session`].
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    /// Session id.
    pub id: SessionId,
    /// Free slots.
    pub free: usize,
    /// Registered handlers.
    pub handlers: &'a BTreeSet<String>,
}

/// Result of [`pick_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Send it to this session.
    Session(SessionId),
    /// Sessions know the handler but none has a free slot: hold the job.
    NoFreeSlot,
    /// The runner has sessions, and none registered the handler: fail fast.
    UnknownHandler,
    /// The runner has no session connected: hold the job.
    NoSession,
}

/// Picks the session of a runner to run `handler`: among the sessions that
/// registered it, the one with the most free slots (ties: the oldest session).
pub fn pick_session(sessions: &[SessionView<'_>], handler: &str) -> Pick {
    if sessions.is_empty() {
        return Pick::NoSession;
    }
    let mut knows = sessions
        .iter()
        .filter(|s| s.handlers.contains(handler))
        .peekable();
    if knows.peek().is_none() {
        return Pick::UnknownHandler;
    }
    knows
        .filter(|s| s.free > 0)
        .max_by_key(|s| (s.free, std::cmp::Reverse(s.id)))
        .map_or(Pick::NoFreeSlot, |s| Pick::Session(s.id))
}

/// The runner and handler of a job: a `runner#handler` function name names
/// its runner; otherwise the queue's runner runs `function_name` as is.
pub fn route<'a>(
    function_name: &'a str,
    queue_runner: Option<&'a str>,
) -> (Option<&'a str>, &'a str) {
    match function_name.split_once('#') {
        Some((runner, handler)) if !runner.is_empty() => (Some(runner), handler),
        _ => (queue_runner, function_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn routes_by_prefix_or_queue() {
        assert_eq!(route("ts#send", Some("py")), (Some("ts"), "send"));
        assert_eq!(route("send", Some("py")), (Some("py"), "send"));
        assert_eq!(route("send", None), (None, "send"));
        assert_eq!(route("#send", Some("py")), (Some("py"), "#send"));
    }

    #[test]
    fn picks_the_freest_session_that_knows_the_handler() {
        let a = set(&["echo"]);
        let b = set(&["echo", "sleep"]);
        let views = [
            SessionView {
                id: 1,
                free: 1,
                handlers: &a,
            },
            SessionView {
                id: 2,
                free: 3,
                handlers: &b,
            },
            SessionView {
                id: 3,
                free: 3,
                handlers: &b,
            },
        ];
        assert_eq!(pick_session(&views, "echo"), Pick::Session(2));
        assert_eq!(pick_session(&views, "sleep"), Pick::Session(2));
        assert_eq!(pick_session(&views, "nope"), Pick::UnknownHandler);
        assert_eq!(pick_session(&[], "echo"), Pick::NoSession);
    }

    #[test]
    fn full_sessions_hold_the_job() {
        let a = set(&["echo"]);
        let b = set(&["other"]);
        let views = [
            SessionView {
                id: 1,
                free: 0,
                handlers: &a,
            },
            SessionView {
                id: 2,
                free: 5,
                handlers: &b,
            },
        ];
        assert_eq!(pick_session(&views, "echo"), Pick::NoFreeSlot);
    }
}
