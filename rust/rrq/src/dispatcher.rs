//! The dispatcher: every connected session, its outstanding executions (the
//! runner's credit), jobs held for a busy runner, and every transition of an
//! execution (dispatch, outcome, timeout, lease loss, runner loss, drain).
//!
//! All of it sits behind one mutex that is never held across an `.await`:
//! each method decides under the lock, then hands Redis writes to the
//! [`Settler`] and stream messages to the sessions' unbounded senders.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rrq_proto::v1::{
    CancelJob, CancelReason, ExecuteBatch, ExecutionRequest, OrchestratorMessage, Outcome,
    orchestrator_message, outcome,
};
use rrq_store::{ClaimedJob, Settle, SettleAction};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::scheduler::Wake;
use crate::session::{
    ExecState, Execution, Outbound, Pick, Session, SessionId, SessionView, pick_session, route,
};
use crate::settle::{Policy, Settler, action_for, error_type};
use crate::supervisor::Supervisor;
use crate::telemetry::Telemetry;

/// `last_error` of a job cancelled on a user's request.
pub const CANCELLED_ON_REQUEST: &str = "cancelled on request";

/// Largest total of params in one `execute` message: stays under the 4 MiB
/// default decoding limit of gRPC clients (a bigger single job still goes alone).
const MAX_EXECUTE_BYTES: usize = 3 * 1024 * 1024;

/// After a timeout, the retry waits at least the cancel grace plus this long,
/// so the old attempt's process is gone (killed at the end of the grace)
/// before the new attempt starts.
const TIMEOUT_RETRY_MARGIN_MS: i64 = 500;

/// A job the claim returned, with what the dispatcher needs to run it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Queue it came from.
    pub queue: String,
    /// The job.
    pub job: ClaimedJob,
    /// Redis time of the claim (ms).
    pub claim_now_ms: i64,
    /// Monotonic time of the claim.
    pub claimed_at: Instant,
    /// Until when the claim's lease is known valid (monotonic).
    pub lease_valid_until: Instant,
}

/// A claimed job waiting for a free slot of its runner.
#[derive(Debug)]
struct Held {
    claimed: Claimed,
    handler: String,
}

#[derive(Debug, Default)]
struct State {
    sessions: BTreeMap<SessionId, Session>,
    /// Jobs held per runner, oldest first.
    held: BTreeMap<String, VecDeque<Held>>,
    /// Set on shutdown: nothing new is dispatched.
    draining: bool,
}

/// What a new session declared in its hello.
#[derive(Debug)]
pub struct NewSession {
    /// Runner name.
    pub runner: String,
    /// Registered handlers.
    pub handlers: BTreeSet<String>,
    /// Capacity.
    pub max_in_flight: usize,
    /// Process id.
    pub pid: u32,
    /// How the stream authenticated (held for the session's life).
    pub admission: crate::auth::Admission,
    /// Outbound stream sender.
    pub tx: Outbound,
    /// Close signal of the session's reader.
    pub close: tokio_util::sync::CancellationToken,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Dispatcher {
    cfg: Arc<Config>,
    owner: String,
    policy: Policy,
    settler: Settler,
    supervisor: Supervisor,
    wake: Arc<Wake>,
    state: Mutex<State>,
    next_session: AtomicU64,
    /// Notified whenever an execution ends or a session goes away.
    changed: Notify,
    /// Notified when a session connects or goes away, or the drain starts
    /// (what the health heartbeat reports).
    pub sessions_changed: Notify,
    telemetry: Option<Arc<Telemetry>>,
}

/// Connected sessions and free slots of one runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerStats {
    /// Connected sessions.
    pub sessions: usize,
    /// Free execution slots over those sessions.
    pub free_slots: usize,
}

impl Dispatcher {
    /// A dispatcher for orchestrator instance `owner`.
    pub fn new(
        cfg: Arc<Config>,
        owner: String,
        settler: Settler,
        supervisor: Supervisor,
        wake: Arc<Wake>,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Arc<Self> {
        let policy = Policy {
            max_payload_bytes: usize::try_from(cfg.max_payload_bytes).unwrap_or(usize::MAX),
            backoff_initial: cfg.backoff_initial(),
            backoff_max: cfg.backoff_max(),
            max_message_bytes: cfg.max_error_message_bytes as usize,
            max_traceback_bytes: cfg.max_traceback_bytes as usize,
        };
        Arc::new(Self {
            cfg,
            owner,
            policy,
            settler,
            supervisor,
            wake,
            state: Mutex::new(State::default()),
            next_session: AtomicU64::new(1),
            changed: Notify::new(),
            sessions_changed: Notify::new(),
            telemetry,
        })
    }

    /// True once the drain started.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Sessions and free slots of every configured runner (and of any other
    /// runner name that connected).
    pub fn runner_stats(&self) -> BTreeMap<String, RunnerStats> {
        let st = self.lock();
        let mut out: BTreeMap<String, RunnerStats> = self
            .cfg
            .runners
            .keys()
            .map(|r| (r.clone(), RunnerStats::default()))
            .collect();
        for s in st.sessions.values() {
            let e = out.entry(s.runner.clone()).or_default();
            e.sessions += 1;
            e.free_slots += s.free();
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still
        // consistent enough to keep settling, so recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, queue: &str, job_id: &str, attempt: i64, action: SettleAction) -> Settle {
        Settle {
            queue: queue.to_owned(),
            job_id: job_id.to_owned(),
            attempt,
            owner: self.owner.clone(),
            action,
            default_result_ttl_ms: self.cfg.default_result_ttl_ms(),
            dlq_retention_ms: self.cfg.dlq_retention_ms(),
        }
    }

    /// Registers a session after its hello; returns its id.
    pub fn register(self: &Arc<Self>, new: NewSession) -> SessionId {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let runner = new.runner.clone();
        let mut settles = Vec::new();
        {
            let mut st = self.lock();
            st.sessions.insert(
                id,
                Session {
                    id,
                    runner: new.runner,
                    handlers: new.handlers,
                    max_in_flight: new.max_in_flight,
                    pid: new.pid,
                    admission: new.admission,
                    tx: new.tx,
                    close: new.close,
                    executions: HashMap::new(),
                    jobs_sent: 0,
                    retiring: false,
                },
            );
            self.drain_held(&mut st, &runner, &mut settles);
        }
        self.settler.submit(settles);
        self.wake.all();
        self.sessions_changed.notify_one();
        id
    }

    /// Free slots of `runner` not promised to held jobs: how many jobs a
    /// claim for one of its queues may take.
    pub fn claimable(&self, runner: &str) -> usize {
        let st = self.lock();
        if st.draining {
            return 0;
        }
        let free: usize = st
            .sessions
            .values()
            .filter(|s| s.runner == runner)
            .map(Session::free)
            .sum();
        free.saturating_sub(st.held.get(runner).map_or(0, VecDeque::len))
    }

    /// Sends freshly claimed jobs to sessions (or holds them, or fails them
    /// fast when no session knows their handler).
    pub fn dispatch(self: &Arc<Self>, claimed: Vec<Claimed>) {
        let mut settles = Vec::new();
        {
            let mut st = self.lock();
            let mut batches: BTreeMap<SessionId, Vec<ExecutionRequest>> = BTreeMap::new();
            for c in claimed {
                let queue_runner = self.cfg.runner_for_queue(&c.queue).map(str::to_owned);
                let (runner, handler) = route(&c.job.function_name, queue_runner.as_deref());
                let (runner, handler) = (runner.map(str::to_owned), handler.to_owned());
                self.place(&mut st, c, runner, handler, &mut batches, &mut settles);
            }
            send_batches(&st, batches);
        }
        self.settler.submit(settles);
    }

    fn place(
        self: &Arc<Self>,
        st: &mut State,
        c: Claimed,
        runner: Option<String>,
        handler: String,
        batches: &mut BTreeMap<SessionId, Vec<ExecutionRequest>>,
        settles: &mut Vec<Settle>,
    ) {
        let fail = |message: String| {
            self.settle(
                &c.queue,
                &c.job.id,
                c.job.attempt,
                SettleAction::Fail {
                    message,
                    error_type: error_type::UNKNOWN_FUNCTION.to_owned(),
                    traceback: String::new(),
                },
            )
        };
        let Some(runner) = runner.filter(|r| self.cfg.runners.contains_key(r)) else {
            settles.push(fail(format!(
                "no configured runner serves handler {handler:?} of function {:?} in queue {:?}",
                c.job.function_name, c.queue
            )));
            return;
        };
        if st.draining {
            settles.push(self.settle(&c.queue, &c.job.id, c.job.attempt, SettleAction::Release));
            return;
        }
        let views: Vec<SessionView<'_>> = st
            .sessions
            .values()
            .filter(|s| s.runner == runner)
            .map(|s| SessionView {
                id: s.id,
                free: s.free(),
                handlers: &s.handlers,
            })
            .collect();
        match pick_session(&views, &handler) {
            Pick::Session(sid) => {
                let request = self.start_execution(st, sid, c, handler);
                if let Some(r) = request {
                    batches.entry(sid).or_default().push(r);
                }
            }
            Pick::NoFreeSlot | Pick::NoSession => {
                debug!(job_id = %c.job.id, %runner, "holding job until the runner has a free slot");
                st.held.entry(runner).or_default().push_back(Held {
                    claimed: c,
                    handler,
                });
            }
            Pick::UnknownHandler => {
                let registered: BTreeSet<&str> = views
                    .iter()
                    .flat_map(|v| v.handlers.iter().map(String::as_str))
                    .collect();
                let registered: Vec<&str> = registered.into_iter().collect();
                warn!(job_id = %c.job.id, %runner, %handler, "unknown function");
                settles.push(fail(format!(
                    "no handler {handler:?} is registered on runner {runner:?}; registered handlers: [{}]",
                    registered.join(", ")
                )));
            }
        }
    }

    /// Records an execution on session `sid`, starts its deadline timer and
    /// returns the request to send.
    fn start_execution(
        self: &Arc<Self>,
        st: &mut State,
        sid: SessionId,
        c: Claimed,
        handler: String,
    ) -> Option<ExecutionRequest> {
        let session = st.sessions.get_mut(&sid)?;
        let timeout_ms = if c.job.job_timeout_ms > 0 {
            c.job.job_timeout_ms
        } else {
            self.cfg.default_job_timeout().as_millis() as i64
        };
        let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
        // A held job starts its clock when it is dispatched, not when claimed.
        let held_ms = c.claimed_at.elapsed().as_millis() as i64;
        let held_ms = if held_ms < 5 { 0 } else { held_ms };
        // Saturating: job_timeout_ms comes from the job hash, which may hold
        // any integer (a planted or foreign job), e.g. i64::MAX.
        let deadline_ms = c
            .claim_now_ms
            .saturating_add(held_ms)
            .saturating_add(timeout_ms);
        let fire_at = tokio::time::Instant::from_std(c.claimed_at)
            + Duration::from_millis(held_ms as u64)
            + timeout;

        let trace = self
            .telemetry
            .as_ref()
            .and_then(|t| t.begin(&c, &session.runner, &handler));
        let (trace_parent, trace_state) = match &trace {
            Some(t) => (t.traceparent.clone(), t.tracestate.clone()),
            None => (c.job.trace_parent.clone(), c.job.trace_state.clone()),
        };
        let (job_id, attempt) = (c.job.id.clone(), c.job.attempt);
        let me = self.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(fire_at).await;
            me.on_timeout(sid, &job_id, attempt, timeout);
        })
        .abort_handle();

        session.jobs_sent += 1;
        if !session.retiring
            && session.admission.spawn_token().is_some()
            && self
                .cfg
                .runners
                .get(&session.runner)
                .and_then(|r| r.max_jobs_per_runner)
                .is_some_and(|max| session.jobs_sent >= max)
        {
            info!(runner = %session.runner, pid = session.pid, jobs = session.jobs_sent,
                "runner process reached max_jobs_per_runner; recycling it once its jobs end");
            session.retiring = true;
        }
        session.executions.insert(
            c.job.id.clone(),
            Execution {
                queue: c.queue.clone(),
                attempt: c.job.attempt,
                handler: handler.clone(),
                state: ExecState::Running,
                timer: Some(timer),
                lease_valid_until: c.lease_valid_until,
                trace,
            },
        );
        Some(ExecutionRequest {
            job_id: c.job.id,
            attempt: c.job.attempt,
            function_name: handler,
            params_json: c.job.params_json,
            queue_name: c.queue,
            enqueued_at_ms: c.job.enqueued_at_ms,
            deadline_ms,
            trace_parent,
            trace_state,
            max_retries: c.job.max_retries,
        })
    }

    /// Dispatches held jobs of `runner` while its sessions have free slots.
    fn drain_held(self: &Arc<Self>, st: &mut State, runner: &str, settles: &mut Vec<Settle>) {
        let Some(mut queue) = st.held.remove(runner) else {
            return;
        };
        let mut batches = BTreeMap::new();
        let mut still_held = VecDeque::new();
        while let Some(h) = queue.pop_front() {
            let before = st.held.get(runner).map_or(0, VecDeque::len);
            self.place(
                st,
                h.claimed,
                Some(runner.to_owned()),
                h.handler,
                &mut batches,
                settles,
            );
            // place() re-holds a job that still has no slot; keep order and
            // stop trying the rest, which would not find a slot either.
            if st.held.get(runner).map_or(0, VecDeque::len) > before {
                if let Some(back) = st.held.get_mut(runner).and_then(VecDeque::pop_back) {
                    still_held.push_back(back);
                }
                still_held.extend(queue.drain(..));
                break;
            }
        }
        if !still_held.is_empty() {
            st.held.insert(runner.to_owned(), still_held);
        } else {
            st.held.remove(runner);
        }
        send_batches(st, batches);
    }

    /// Applies a batch of outcomes from session `sid`.
    pub fn on_outcomes(self: &Arc<Self>, sid: SessionId, outcomes: Vec<Outcome>) {
        let mut settles = Vec::new();
        let mut freed = 0;
        {
            let mut st = self.lock();
            let Some(session) = st.sessions.get_mut(&sid) else {
                return;
            };
            for o in outcomes {
                let matches = session
                    .executions
                    .get(&o.job_id)
                    .is_some_and(|e| e.attempt == o.attempt);
                if !matches {
                    debug!(job_id = %o.job_id, attempt = o.attempt, "ignoring outcome of an execution not outstanding on this session");
                    continue;
                }
                let Some(mut exec) = session.executions.remove(&o.job_id) else {
                    continue;
                };
                freed += 1;
                if let Some(t) = &exec.timer {
                    t.abort();
                }
                let action = match exec.state {
                    ExecState::Running => action_for(o.result.as_ref(), o.attempt, &self.policy),
                    ExecState::Cancelling => match o.result.as_ref() {
                        Some(outcome::Result::Cancelled(_)) => Some(SettleAction::Cancel {
                            message: CANCELLED_ON_REQUEST.to_owned(),
                        }),
                        other => action_for(other, o.attempt, &self.policy),
                    },
                    ExecState::Settled => None,
                };
                if let Some(trace) = exec.trace.take() {
                    match &action {
                        Some(SettleAction::Retry {
                            message,
                            error_type,
                            ..
                        })
                        | Some(SettleAction::Fail {
                            message,
                            error_type,
                            ..
                        }) => trace.end_error(error_type, message),
                        Some(SettleAction::Cancel { message }) => {
                            trace.end_error(error_type::CANCELLED, message)
                        }
                        _ => trace.end_ok(),
                    }
                }
                if let Some(action) = action {
                    settles.push(self.settle(&exec.queue, &o.job_id, o.attempt, action));
                }
            }
            if freed > 0 {
                self.check_memory(session);
                self.retire_if_done(session);
                let runner = session.runner.clone();
                self.drain_held(&mut st, &runner, &mut settles);
            }
        }
        self.settler.submit(settles);
        if freed > 0 {
            self.wake.slots_freed();
            self.changed.notify_waiters();
        }
    }

    /// Between jobs: marks a spawned session retiring when its process's
    /// resident memory is over `max_memory_per_runner`.
    fn check_memory(&self, session: &mut Session) {
        let Some(token) = session.admission.spawn_token() else {
            return;
        };
        if session.retiring {
            return;
        }
        let Some(limit) = self
            .cfg
            .runners
            .get(&session.runner)
            .and_then(|r| r.max_memory_per_runner)
        else {
            return;
        };
        let Some(rss_kib) = self.supervisor.rss_kib(token, session.pid) else {
            return;
        };
        if rss_kib.saturating_mul(1024) > limit.0 {
            info!(runner = %session.runner, pid = session.pid, rss_kib, limit_bytes = limit.0,
                "runner process is over max_memory_per_runner; recycling it once its jobs end");
            session.retiring = true;
        }
    }

    /// A retiring session with nothing outstanding: its process is stopped
    /// gracefully and the supervisor starts a fresh one. Its stream then ends
    /// with no execution to charge.
    fn retire_if_done(&self, session: &Session) {
        if session.retiring
            && session.executions.is_empty()
            && session
                .admission
                .spawn_token()
                .is_some_and(|token| self.supervisor.retire(token))
        {
            info!(runner = %session.runner, pid = session.pid, jobs = session.jobs_sent,
                "recycling runner process");
        }
    }

    /// The session's stream ended: its running executions count as failed
    /// attempts (`RunnerLost`). A spawned runner's process group is killed:
    /// its attempts are settled (and may run again elsewhere), so the
    /// process must not run on with them, nor hold its slot frozen; the
    /// supervisor replaces it.
    pub fn session_lost(self: &Arc<Self>, sid: SessionId, reason: &str) {
        let mut settles = Vec::new();
        {
            let mut st = self.lock();
            let Some(session) = st.sessions.remove(&sid) else {
                return;
            };
            info!(
                runner = %session.runner, pid = session.pid, outstanding = session.executions.len(),
                "runner disconnected: {reason}"
            );
            // A retiring process is already being stopped gracefully.
            if !session.retiring
                && session
                    .admission
                    .spawn_token()
                    .is_some_and(|token| self.supervisor.kill(token))
            {
                warn!(runner = %session.runner, pid = session.pid,
                    "killed the lost runner's process group ({reason}); the supervisor replaces it");
            }
            for (job_id, mut exec) in session.executions {
                if let Some(t) = &exec.timer {
                    t.abort();
                }
                exec.end_trace_error(error_type::RUNNER_LOST, reason);
                if exec.state == ExecState::Cancelling {
                    settles.push(self.settle(
                        &exec.queue,
                        &job_id,
                        exec.attempt,
                        SettleAction::Cancel {
                            message: format!(
                                "{CANCELLED_ON_REQUEST} (runner {:?} was lost before it answered: {reason})",
                                session.runner
                            ),
                        },
                    ));
                } else if exec.state == ExecState::Running {
                    settles.push(self.settle(
                        &exec.queue,
                        &job_id,
                        exec.attempt,
                        SettleAction::Retry {
                            message: format!(
                                "runner {:?} (pid {}) was lost during attempt {}: {reason}",
                                session.runner, session.pid, exec.attempt
                            ),
                            error_type: error_type::RUNNER_LOST.to_owned(),
                            delay_ms: self.policy.backoff_ms(exec.attempt),
                            traceback: String::new(),
                        },
                    ));
                }
            }
        }
        self.settler.submit(settles);
        self.wake.all();
        self.changed.notify_waiters();
        self.sessions_changed.notify_one();
    }

    /// Deadline timer of an execution fired.
    fn on_timeout(self: &Arc<Self>, sid: SessionId, job_id: &str, attempt: i64, timeout: Duration) {
        let settle = {
            let mut st = self.lock();
            let Some(session) = st.sessions.get_mut(&sid) else {
                return;
            };
            let Some(exec) = session.executions.get_mut(job_id) else {
                return;
            };
            if exec.attempt != attempt || exec.state != ExecState::Running {
                return;
            }
            exec.state = ExecState::Settled;
            warn!(%job_id, attempt, runner = %session.runner, "job timed out after {}s", timeout.as_secs_f64());
            exec.end_trace_error(error_type::JOB_TIMEOUT, "job timed out");
            exec.timer = Some(self.watch_cancel(sid, job_id, attempt));
            let queue = exec.queue.clone();
            send_cancel(&session.tx, job_id, attempt, CancelReason::Timeout);
            self.settle(
                &queue,
                job_id,
                attempt,
                SettleAction::Retry {
                    message: format!("job timed out after {}s", timeout.as_secs_f64()),
                    error_type: error_type::JOB_TIMEOUT.to_owned(),
                    // The timed-out attempt may run on until the cancel grace
                    // ends and its process is killed: the retry must not start
                    // before then, or two attempts of the job would overlap.
                    delay_ms: self.policy.backoff_ms(attempt).max(
                        i64::try_from(self.cfg.cancel_grace().as_millis())
                            .unwrap_or(i64::MAX)
                            .saturating_add(TIMEOUT_RETRY_MARGIN_MS),
                    ),
                    traceback: String::new(),
                },
            )
        };
        self.settler.submit([settle]);
        self.changed.notify_waiters();
    }

    /// After a cancel, gives the runner `cancel_grace` to send the outcome;
    /// then kills its process (or ends an external runner's stream).
    fn watch_cancel(
        self: &Arc<Self>,
        sid: SessionId,
        job_id: &str,
        attempt: i64,
    ) -> tokio::task::AbortHandle {
        let me = self.clone();
        let job_id = job_id.to_owned();
        let grace = self.cfg.cancel_grace();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            me.enforce_cancel(sid, &job_id, attempt);
        })
        .abort_handle()
    }

    fn enforce_cancel(&self, sid: SessionId, job_id: &str, attempt: i64) {
        let mut st = self.lock();
        let Some(session) = st.sessions.get_mut(&sid) else {
            return;
        };
        let Some(exec) = session
            .executions
            .get_mut(job_id)
            .filter(|e| e.attempt == attempt)
        else {
            return;
        };
        // A cancel on request ends the job CANCELLED even when the runner
        // never answers; the slot stays taken until the runner is gone.
        let settle = (exec.state == ExecState::Cancelling).then(|| {
            exec.state = ExecState::Settled;
            exec.end_trace_error(error_type::CANCELLED, CANCELLED_ON_REQUEST);
            self.settle(
                &exec.queue,
                job_id,
                attempt,
                SettleAction::Cancel {
                    message: format!(
                        "{CANCELLED_ON_REQUEST} (the runner did not stop the job within cancel_grace_seconds)"
                    ),
                },
            )
        });
        if let Some(s) = settle {
            self.settler.submit([s]);
            self.changed.notify_waiters();
        }
        if let Some(token) = session.admission.spawn_token()
            && self.supervisor.kill(token)
        {
            warn!(%job_id, attempt, runner = %session.runner, pid = session.pid,
                "runner did not stop the job within cancel_grace_seconds; killed its process");
        } else {
            warn!(%job_id, attempt, runner = %session.runner, pid = session.pid,
                "runner did not stop the job within cancel_grace_seconds; closing its stream");
            let _ = session.tx.send(Err(tonic::Status::aborted(format!(
                "job {job_id} attempt {attempt} did not stop within cancel_grace_seconds after a cancel"
            ))));
            session.close.cancel();
        }
    }

    /// Ids and attempts of the jobs whose leases this instance must renew, by queue.
    pub fn lease_snapshot(&self) -> BTreeMap<String, Vec<(String, i64)>> {
        let st = self.lock();
        let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for s in st.sessions.values() {
            for (id, e) in &s.executions {
                if e.is_live() {
                    out.entry(e.queue.clone())
                        .or_default()
                        .push((id.clone(), e.attempt));
                }
            }
        }
        for h in st.held.values().flatten() {
            out.entry(h.claimed.queue.clone())
                .or_default()
                .push((h.claimed.job.id.clone(), h.claimed.job.attempt));
        }
        out
    }

    /// Records that the leases of `jobs` in `queue` are valid until `until`.
    pub fn leases_renewed(&self, queue: &str, jobs: &[(String, i64)], until: Instant) {
        let mut st = self.lock();
        let wanted: HashMap<&str, i64> = jobs.iter().map(|(id, a)| (id.as_str(), *a)).collect();
        for s in st.sessions.values_mut() {
            for (id, e) in s.executions.iter_mut() {
                if e.queue == queue && wanted.get(id.as_str()) == Some(&e.attempt) {
                    e.lease_valid_until = e.lease_valid_until.max(until);
                }
            }
        }
        for h in st.held.values_mut().flatten() {
            if h.claimed.queue == queue
                && wanted.get(h.claimed.job.id.as_str()) == Some(&h.claimed.job.attempt)
            {
                h.claimed.lease_valid_until = h.claimed.lease_valid_until.max(until);
            }
        }
    }

    /// The earliest instant at which a lease we hold stops being known valid.
    pub fn earliest_lease_expiry(&self) -> Option<Instant> {
        let st = self.lock();
        let running = st
            .sessions
            .values()
            .flat_map(|s| s.executions.values())
            .filter(|e| e.is_live())
            .map(|e| e.lease_valid_until);
        let held = st
            .held
            .values()
            .flatten()
            .map(|h| h.claimed.lease_valid_until);
        running.chain(held).min()
    }

    /// Jobs whose lease is no longer known valid at `now` (renewals failed).
    pub fn expired_leases(&self, now: Instant) -> Vec<(String, String)> {
        let st = self.lock();
        let mut out = Vec::new();
        for s in st.sessions.values() {
            for (id, e) in &s.executions {
                if e.is_live() && e.lease_valid_until <= now {
                    out.push((e.queue.clone(), id.clone()));
                }
            }
        }
        for h in st.held.values().flatten() {
            if h.claimed.lease_valid_until <= now {
                out.push((h.claimed.queue.clone(), h.claimed.job.id.clone()));
            }
        }
        out
    }

    /// We no longer hold the leases of `ids` in `queue`: cancel their
    /// executions (self-fence) and forget held ones. Nothing is settled; the
    /// new owner (or lease recovery) decides.
    pub fn leases_lost(self: &Arc<Self>, queue: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let lost: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let mut st = self.lock();
        let sids: Vec<SessionId> = st.sessions.keys().copied().collect();
        for sid in sids {
            let Some(session) = st.sessions.get_mut(&sid) else {
                continue;
            };
            for (id, e) in session.executions.iter_mut() {
                if e.queue == queue
                    && e.state == ExecState::Cancelling
                    && lost.contains(id.as_str())
                {
                    // Already told to stop; the grace watcher stays armed.
                    e.state = ExecState::Settled;
                    e.end_trace_error("LeaseLost", "lease lost");
                    continue;
                }
                if e.queue == queue && e.state == ExecState::Running && lost.contains(id.as_str()) {
                    warn!(job_id = %id, attempt = e.attempt, "lease lost; cancelling the execution");
                    e.state = ExecState::Settled;
                    e.end_trace_error("LeaseLost", "lease lost");
                    if let Some(t) = &e.timer {
                        t.abort();
                    }
                    e.timer = Some(self.watch_cancel(sid, id, e.attempt));
                    send_cancel(&session.tx, id, e.attempt, CancelReason::LeaseLost);
                }
            }
        }
        for held in st.held.values_mut() {
            held.retain(|h| {
                !(h.claimed.queue == queue && lost.contains(h.claimed.job.id.as_str()))
            });
        }
        st.held.retain(|_, v| !v.is_empty());
        drop(st);
        self.changed.notify_waiters();
    }

    /// Executions still running under our lease plus held jobs.
    pub fn local_work(&self) -> usize {
        let st = self.lock();
        let running: usize = st
            .sessions
            .values()
            .map(|s| s.executions.values().filter(|e| e.is_live()).count())
            .sum();
        running + st.held.values().map(VecDeque::len).sum::<usize>()
    }

    /// Starts the drain: nothing new is dispatched and held jobs go back to
    /// their queues without charging the attempt.
    pub fn begin_drain(&self) {
        self.sessions_changed.notify_one();
        let settles: Vec<Settle> = {
            let mut st = self.lock();
            st.draining = true;
            std::mem::take(&mut st.held)
                .into_values()
                .flatten()
                .map(|h| {
                    self.settle(
                        &h.claimed.queue,
                        &h.claimed.job.id,
                        h.claimed.job.attempt,
                        SettleAction::Release,
                    )
                })
                .collect()
        };
        self.settler.submit(settles);
    }

    /// Waits until no execution runs under our lease, or until `deadline`.
    pub async fn wait_idle(
        &self,
        deadline: tokio::time::Instant,
        hurry: &tokio_util::sync::CancellationToken,
    ) {
        loop {
            let changed = self.changed.notified();
            if self.local_work() == 0 {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return,
                _ = hurry.cancelled() => return,
            }
        }
    }

    /// Cancels (SHUTDOWN) every execution still running and releases its job.
    pub fn release_running(&self) -> usize {
        let mut settles = Vec::new();
        {
            let mut st = self.lock();
            for session in st.sessions.values_mut() {
                for (id, e) in session.executions.iter_mut() {
                    if e.is_live() {
                        let action = if e.state == ExecState::Cancelling {
                            SettleAction::Cancel {
                                message: format!(
                                    "{CANCELLED_ON_REQUEST} (the orchestrator shut down before the runner answered)"
                                ),
                            }
                        } else {
                            SettleAction::Release
                        };
                        e.state = ExecState::Settled;
                        if let Some(t) = &e.timer {
                            t.abort();
                        }
                        e.end_trace_error("Released", "released on shutdown");
                        send_cancel(&session.tx, id, e.attempt, CancelReason::Shutdown);
                        settles.push(self.settle(&e.queue, id, e.attempt, action));
                    }
                }
            }
        }
        let n = settles.len();
        self.settler.submit(settles);
        n
    }

    /// A user asked to cancel job `job_id` of `queue` (cancel channel, or the
    /// lease renewal's backstop list). A held job is settled CANCELLED at
    /// once; a running one gets `cancel(REQUESTED)` and `cancel_grace` to
    /// answer. Idempotent: an attempt is sent at most one such cancel.
    pub fn cancel_requested(self: &Arc<Self>, queue: &str, job_id: &str) {
        let mut settles = Vec::new();
        {
            let mut st = self.lock();
            for held in st.held.values_mut() {
                while let Some(pos) = held
                    .iter()
                    .position(|h| h.claimed.queue == queue && h.claimed.job.id == job_id)
                {
                    if let Some(h) = held.remove(pos) {
                        info!(%job_id, queue, "cancelled a job waiting for a runner slot");
                        settles.push(self.settle(
                            queue,
                            job_id,
                            h.claimed.job.attempt,
                            SettleAction::Cancel {
                                message: CANCELLED_ON_REQUEST.to_owned(),
                            },
                        ));
                    }
                }
            }
            st.held.retain(|_, v| !v.is_empty());
            for (sid, session) in st.sessions.iter_mut() {
                let Some(e) = session.executions.get_mut(job_id) else {
                    continue;
                };
                if e.queue != queue || e.state != ExecState::Running {
                    continue;
                }
                info!(%job_id, attempt = e.attempt, runner = %session.runner, "cancel requested; telling the runner");
                e.state = ExecState::Cancelling;
                if let Some(t) = e.timer.take() {
                    t.abort();
                }
                e.timer = Some(self.watch_cancel(*sid, job_id, e.attempt));
                send_cancel(&session.tx, job_id, e.attempt, CancelReason::Requested);
            }
        }
        if !settles.is_empty() {
            self.settler.submit(settles);
            self.changed.notify_waiters();
            self.wake.all();
        }
    }

    /// Ends every session's stream.
    pub fn close_all(&self) {
        let mut st = self.lock();
        for s in st.sessions.values() {
            s.close.cancel();
        }
        st.sessions.clear();
    }
}

fn send_cancel(tx: &Outbound, job_id: &str, attempt: i64, reason: CancelReason) {
    let _ = tx.send(Ok(OrchestratorMessage {
        kind: Some(orchestrator_message::Kind::Cancel(CancelJob {
            job_id: job_id.to_owned(),
            attempt,
            reason: reason as i32,
        })),
    }));
}

/// Sends each session's requests, split so no message grows past
/// [`MAX_EXECUTE_BYTES`] of params.
fn send_batches(st: &State, batches: BTreeMap<SessionId, Vec<ExecutionRequest>>) {
    for (sid, requests) in batches {
        let Some(session) = st.sessions.get(&sid) else {
            continue;
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for r in requests {
            let size = r.params_json.len();
            if !chunk.is_empty() && bytes + size > MAX_EXECUTE_BYTES {
                send_execute(&session.tx, std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(r);
        }
        if !chunk.is_empty() {
            send_execute(&session.tx, chunk);
        }
    }
}

fn send_execute(tx: &Outbound, requests: Vec<ExecutionRequest>) {
    // A closed stream is noticed by the session's reader, which then settles
    // these executions as RunnerLost.
    let _ = tx.send(Ok(OrchestratorMessage {
        kind: Some(orchestrator_message::Kind::Execute(ExecuteBatch {
            requests,
        })),
    }));
}
