//! `stream`: the orchestrator's side of one `RunnerService.Connect` stream.
//!
//! Drives the real code in process, with no socket: `server::Endpoint::connect`
//! (hello checks, then `read_loop`), tonic's gRPC frame decoder
//! (`Streaming::new_request` with the prost codec and the server's size
//! limit) and a real `Dispatcher` (sessions, credit, held jobs, timers).
//! Its `Settler` writes to a Redis that does not exist, so settles fail
//! quietly; nothing here needs a server.
//!
//! The input is a script of records `[op u8][len u16 LE][payload]`:
//!
//! | op % 8 | record |
//! |---|---|
//! | 0 | one gRPC message: `payload` gets the 5-byte header (uncompressed, length) |
//! | 1 | raw bytes as one body chunk (partial headers, compressed flags, ...) |
//! | 2 | a dispatcher event, see [`Event`] |
//! | 3 | sleep `payload` as u32 LE ms (capped at 1 h) on the paused clock |
//! | 4 | an HTTP/2 trailers frame |
//! | 5 | a body error (the connection broke) |
//! | 6 | stall: the body never yields again (heartbeat silence) |
//! | 7 | several messages in one chunk: `payload` = `([len u16 LE][message])*` |
//!
//! Events run when the stream asks for its next chunk, i.e. after every
//! message already received was handled: the interleaving is deterministic.
//! The runtime is current-thread on a paused clock, so job deadlines, the
//! cancel grace and the heartbeat silence fire instantly and in order.
//!
//! Authentication: the endpoint knows `py`'s external token, live spawn
//! tokens of `py` and `ts` and a revoked one of `py` (see `frame::TOKEN_*`);
//! hellos carry those, near misses, other runners' tokens or random ones.
//!
//! Checks besides no panic/hang: a hello without a token valid for its
//! runner never gets a `hello_ack` or a session (UNAUTHENTICATED), and the
//! status never shows the token; the first message out is the only
//! `hello_ack`; every `execute` carries a job that was claimed, with its
//! runner prefix stripped and a deadline after the claim; every status a
//! runner sees is one the protocol names (in particular a frame over the size
//! limit is RESOURCE_EXHAUSTED, never tonic's OUT_OF_RANGE); held and running
//! jobs are ones that were claimed; and when the stream is over its session
//! is gone.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use rrq::auth::RunnerAuth;
use rrq::config::Config;
use rrq::dispatcher::{Claimed, Dispatcher};
use rrq::scheduler::Wake;
use rrq::server::Endpoint;
use rrq::settle::Settler;
use rrq::supervisor::Supervisor;
use rrq_proto::v1::runner_service_server::RunnerService as _;
use rrq_proto::v1::{OrchestratorMessage, RunnerMessage, orchestrator_message, outcome};
use rrq_store::{ClaimedJob, Store};
use tonic::codec::Codec as _;
use tonic::{Code, Request};

use super::frame;
use crate::Target;

/// See the module documentation.
pub const TARGET: Target = Target {
    name: "stream",
    about: "Endpoint::connect + read_loop + Dispatcher over a scripted inbound stream",
    run,
    generate,
    dictionary: DICTIONARY,
    // The server accepts messages up to 64 MiB and tonic reserves a
    // message's announced length as soon as its 5-byte header arrives; its
    // buffer's growth can ask for up to twice that (a 64 MiB header after a
    // drain and a dispatch asked for 96 MiB: crashers/stream/1b11a5d31547e219).
    alloc_limit: 2 * DECODING_LIMIT + crate::alloc::DEFAULT_LIMIT / 2,
    seeds,
};

const DICTIONARY: &[&[u8]] = &[
    &[0, 0, 0, 0, 0],
    &[1, 0, 0, 0, 0],
    &[0, 0x04, 0, 0, 1],
    &[0, 0x04, 0, 0, 0],
    &[0, 0xff, 0xff, 0xff, 0xff],
    &[2, 0, 0],
    &[3, 4, 0, 0xe8, 0x03, 0, 0],
    &[3, 4, 0, 0x30, 0x75, 0, 0],
    &[6, 0, 0],
    &[5, 0, 0],
    &[0x0a],
    &[0x12],
    &[0x1a],
];

/// `server::MIN_DECODING_LIMIT`: the inbound message size limit when
/// `max_payload_bytes` is at most 16 MiB (the server uses the larger of this
/// and 4 × `max_payload_bytes`).
const DECODING_LIMIT: usize = 64 * 1024 * 1024;

/// Redis time of every claim in a scenario.
const NOW_MS: i64 = 1_700_000_000_000;

const CONFIG: &str = r#"
[rrq]
redis_dsn = "redis+unix:///nonexistent/rrq-fuzz.sock"
default_runner_name = "py"
runner_heartbeat_interval_seconds = 1
runner_heartbeat_timeout_seconds = 3
cancel_grace_seconds = 2
default_job_timeout_seconds = 30
retry_backoff_initial_seconds = 0.1
retry_backoff_max_seconds = 1

[rrq.runner_routes]
q-ts = "ts"

[rrq.runners.py]
max_in_flight = 4

[rrq.runners.ts]
max_in_flight = 2
"#;

fn config() -> Result<Arc<Config>, String> {
    static CFG: OnceLock<Result<Arc<Config>, String>> = OnceLock::new();
    CFG.get_or_init(|| {
        Config::from_toml(CONFIG, "stream.toml")
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// One record of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One message, framed.
    Frame(Vec<u8>),
    /// Raw body bytes.
    Raw(Vec<u8>),
    /// A dispatcher event.
    Event(Vec<u8>),
    /// Sleep (ms).
    Sleep(u32),
    /// Trailers frame.
    Trailers,
    /// Body error.
    Error,
    /// Never yield again.
    Stall,
    /// Several messages in one chunk.
    Frames(Vec<Vec<u8>>),
}

/// Encodes a script.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut record = |op: u8, payload: &[u8]| {
        let len = payload.len().min(usize::from(u16::MAX));
        out.push(op);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&payload[..len]);
    };
    for s in steps {
        match s {
            Step::Frame(m) => record(0, m),
            Step::Raw(b) => record(1, b),
            Step::Event(e) => record(2, e),
            Step::Sleep(ms) => record(3, &ms.to_le_bytes()),
            Step::Trailers => record(4, &[]),
            Step::Error => record(5, &[]),
            Step::Stall => record(6, &[]),
            Step::Frames(ms) => {
                let mut payload = Vec::new();
                for m in ms {
                    let len = m.len().min(usize::from(u16::MAX));
                    payload.extend_from_slice(&(len as u16).to_le_bytes());
                    payload.extend_from_slice(&m[..len]);
                }
                record(7, &payload)
            }
        }
    }
    out
}

/// Decodes a script; a truncated last record keeps what is there.
pub fn parse(mut data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    while let [op, rest @ ..] = data {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), &rest[rest.len()..]),
        };
        let payload = &rest[..len.min(rest.len())];
        data = &rest[payload.len()..];
        steps.push(match op % 8 {
            0 => Step::Frame(payload.to_vec()),
            1 => Step::Raw(payload.to_vec()),
            2 => Step::Event(payload.to_vec()),
            3 => {
                let mut b = [0u8; 4];
                for (d, s) in b.iter_mut().zip(payload) {
                    *d = *s;
                }
                Step::Sleep(u32::from_le_bytes(b))
            }
            4 => Step::Trailers,
            5 => Step::Error,
            6 => Step::Stall,
            _ => {
                let mut frames = Vec::new();
                let mut p = payload;
                while let [a, b, rest @ ..] = p {
                    let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
                    frames.push(rest[..n].to_vec());
                    p = &rest[n..];
                }
                Step::Frames(frames)
            }
        });
    }
    steps
}

/// A gRPC length-prefixed message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(message);
    out
}

/// Dispatcher events (first payload byte % 9), on job bytes `b`: job id
/// `j{b & 7}`, queue `q-ts` (routed to runner `ts`) when `b & 8`, else `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Event {
    /// Claimed jobs arrive: groups of `[job, attempt, function, timeout]` bytes.
    Dispatch = 0,
    /// A user cancels `[job]`.
    CancelRequested = 1,
    /// Lease renewal says `[job...]` are lost.
    LeasesLost = 2,
    /// Shutdown starts.
    BeginDrain = 3,
    /// The drain grace ended.
    ReleaseRunning = 4,
    /// Every session is closed.
    CloseAll = 5,
    /// Leases not renewed for `[seconds]` expire (self-fence).
    ExpireLeases = 6,
    /// Every lease is renewed for `[seconds]`.
    RenewAll = 7,
    /// Check the dispatcher's books.
    Observe = 8,
}

const ATTEMPTS: [i64; 8] = [1, 2, 3, 1, 0, -1, i64::MAX, i64::MIN];
const FUNCTIONS: [&str; 8] = [
    "echo",
    "sleep",
    "py#echo",
    "ts#echo",
    "nope#echo",
    "missing",
    "#echo",
    "py#",
];
const TIMEOUTS: [i64; 8] = [0, 1_000, 5_000, 60_000, 1, -5, 1 << 53, i64::MAX];

fn job_of(b: u8) -> (String, &'static str) {
    let queue = if b & 8 != 0 { "q-ts" } else { "default" };
    (format!("j{}", b & 7), queue)
}

/// What the scenario did, for the checks.
#[derive(Debug)]
struct Ctx {
    dispatcher: Arc<Dispatcher>,
    /// (job id, attempt) of every claimed job.
    claimed: Mutex<HashSet<(String, i64)>>,
    drained: Mutex<bool>,
    violation: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    fn violate(&self, message: String) {
        lock(&self.violation).get_or_insert(message);
    }

    fn apply(&self, event: &[u8]) {
        let Some((&kind, args)) = event.split_first() else {
            return;
        };
        let d = &self.dispatcher;
        match kind % 9 {
            0 => {
                let now = Instant::now();
                let claimed: Vec<Claimed> = args
                    .chunks(4)
                    .take(16)
                    .map(|g| {
                        let at = |i: usize| g.get(i).copied().unwrap_or(0);
                        let (id, queue) = job_of(at(0));
                        let attempt = ATTEMPTS[usize::from(at(1) % 8)];
                        let big = at(2) & 0x80 != 0;
                        lock(&self.claimed).insert((id.clone(), attempt));
                        Claimed {
                            queue: queue.to_owned(),
                            job: ClaimedJob {
                                id,
                                attempt,
                                function_name: FUNCTIONS[usize::from(at(2) % 8)].to_owned(),
                                params_json: if big {
                                    format!("{{\"pad\":\"{}\"}}", "x".repeat(1_600_000))
                                } else {
                                    "{}".to_owned()
                                },
                                max_retries: i64::from(at(1) >> 4),
                                job_timeout_ms: TIMEOUTS[usize::from(at(3) % 8)],
                                enqueued_at_ms: NOW_MS - 1000,
                                trace_parent: String::new(),
                                trace_state: String::new(),
                                run_at_ms: NOW_MS,
                            },
                            claim_now_ms: NOW_MS,
                            claimed_at: now,
                            lease_valid_until: now + Duration::from_secs(30),
                        }
                    })
                    .collect();
                d.dispatch(claimed);
            }
            1 => {
                let (id, queue) = job_of(args.first().copied().unwrap_or(0));
                d.cancel_requested(queue, &id);
            }
            2 => {
                let mut by_queue: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for &b in args.iter().take(16) {
                    let (id, queue) = job_of(b);
                    by_queue.entry(queue).or_default().push(id);
                }
                for (queue, ids) in by_queue {
                    d.leases_lost(queue, &ids);
                }
            }
            3 => {
                *lock(&self.drained) = true;
                d.begin_drain();
            }
            4 => {
                d.release_running();
            }
            5 => d.close_all(),
            6 => {
                let secs = u64::from(args.first().copied().unwrap_or(0));
                let expired = d.expired_leases(Instant::now() + Duration::from_secs(secs));
                let mut by_queue: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (queue, id) in expired {
                    by_queue.entry(queue).or_default().push(id);
                }
                for (queue, ids) in by_queue {
                    d.leases_lost(&queue, &ids);
                }
            }
            7 => {
                let secs = u64::from(args.first().copied().unwrap_or(0));
                let until = Instant::now() + Duration::from_secs(secs);
                for (queue, jobs) in d.lease_snapshot() {
                    d.leases_renewed(&queue, &jobs, until);
                }
            }
            _ => self.observe(),
        }
    }

    /// The dispatcher's books agree with what happened.
    fn observe(&self) {
        let d = &self.dispatcher;
        for (runner, stats) in d.runner_stats() {
            let claimable = d.claimable(&runner);
            if claimable > stats.free_slots {
                self.violate(format!(
                    "runner {runner}: claimable {claimable} > free slots {}",
                    stats.free_slots
                ));
            }
        }
        let claimed = lock(&self.claimed).clone();
        for (queue, jobs) in d.lease_snapshot() {
            for job in jobs {
                if !claimed.contains(&job) {
                    self.violate(format!(
                        "{queue}: {job:?} is held or running but was never claimed"
                    ));
                }
            }
        }
        if *lock(&self.drained) && !d.is_draining() {
            self.violate("drain started but the dispatcher is not draining".to_owned());
        }
        if d.is_draining() && d.runner_stats().keys().any(|r| d.claimable(r) > 0) {
            self.violate("draining, yet a runner may claim".to_owned());
        }
    }

    fn check_execute(&self, r: &rrq_proto::v1::ExecutionRequest) {
        if !lock(&self.claimed).contains(&(r.job_id.clone(), r.attempt)) {
            self.violate(format!(
                "execute of {} attempt {} that was never claimed",
                r.job_id, r.attempt
            ));
        }
        if r.function_name.starts_with("py#") || r.function_name.starts_with("ts#") {
            self.violate(format!(
                "execute kept the runner prefix: {:?}",
                r.function_name
            ));
        }
        if r.deadline_ms <= NOW_MS {
            self.violate(format!(
                "execute of {} with deadline {} not after the claim at {NOW_MS}",
                r.job_id, r.deadline_ms
            ));
        }
    }
}

/// The request body of the stream: plays the script.
struct ScenarioBody {
    steps: VecDeque<Step>,
    ctx: Arc<Ctx>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
}

impl http_body::Body for ScenarioBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            if this.stalled {
                return Poll::Pending;
            }
            let Some(step) = this.steps.pop_front() else {
                return Poll::Ready(None);
            };
            let chunk = match step {
                Step::Frame(m) => framed(&m),
                Step::Raw(b) => b,
                Step::Frames(ms) => ms.iter().flat_map(|m| framed(m)).collect(),
                Step::Event(e) => {
                    this.ctx.apply(&e);
                    continue;
                }
                Step::Sleep(ms) => {
                    let ms = u64::from(ms).min(3_600_000);
                    this.sleep = Some(Box::pin(tokio::time::sleep(Duration::from_millis(ms))));
                    continue;
                }
                Step::Trailers => {
                    return Poll::Ready(Some(Ok(http_body::Frame::trailers(
                        http::HeaderMap::new(),
                    ))));
                }
                Step::Error => {
                    return Poll::Ready(Some(Err(std::io::Error::other("connection reset"))));
                }
                Step::Stall => {
                    this.stalled = true;
                    return Poll::Pending;
                }
            };
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))));
        }
    }
}

/// Statuses `connect` may end with (before any hello_ack).
const CONNECT_CODES: &[Code] = &[
    Code::Unauthenticated,
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::NotFound,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::ResourceExhausted,
    Code::Unknown,
];

/// The (runner, token) pairs the endpoint admits; every other pair is refused.
const VALID_TOKENS: &[(&str, &str)] = &[
    ("py", frame::TOKEN_PY_EXTERNAL),
    ("py", frame::TOKEN_PY_SPAWNED),
    ("ts", frame::TOKEN_TS_SPAWNED),
];

/// The first gRPC message of the inbound body as the server decodes it: the
/// data chunks up to the first trailers, error or stall, concatenated.
fn first_message(steps: &[Step]) -> Option<RunnerMessage> {
    let mut body = Vec::new();
    for step in steps {
        match step {
            Step::Frame(m) => body.extend(framed(m)),
            Step::Raw(b) => body.extend_from_slice(b),
            Step::Frames(ms) => ms.iter().for_each(|m| body.extend(framed(m))),
            Step::Event(_) | Step::Sleep(_) => continue,
            Step::Trailers | Step::Error | Step::Stall => break,
        }
        if body.len() >= 5 {
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if body.len() >= 5 + len {
                break;
            }
        }
    }
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if flag != 0 {
        return None;
    }
    RunnerMessage::decode(rest.get(4..4 + len)?).ok()
}

/// Statuses that may end an accepted stream.
const STREAM_CODES: &[Code] = &[
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::ResourceExhausted,
    Code::Unknown,
    Code::Aborted,
];

fn run(data: &[u8]) -> Result<(), String> {
    let steps = parse(data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    let result = rt.block_on(drive(steps));
    drop(rt);
    result
}

async fn drive(steps: Vec<Step>) -> Result<(), String> {
    let cfg = config()?;
    let client = redis::Client::open(cfg.redis_dsn.as_str()).map_err(|e| e.to_string())?;
    let conn = redis::aio::ConnectionManager::new_lazy_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .map_err(|e| e.to_string())?;
    let auth = Arc::new(RunnerAuth::with_external([(
        "py".to_owned(),
        frame::TOKEN_PY_EXTERNAL.to_owned(),
    )]));
    auth.insert_spawn_token("py", frame::TOKEN_PY_SPAWNED.to_owned());
    auth.insert_spawn_token("ts", frame::TOKEN_TS_SPAWNED.to_owned());
    auth.insert_spawn_token("py", frame::TOKEN_PY_EXITED.to_owned());
    auth.revoke("py", frame::TOKEN_PY_EXITED);
    let first_hello = first_message(&steps).and_then(|m| match m.kind {
        Some(rrq_proto::v1::runner_message::Kind::Hello(h)) => Some(h),
        _ => None,
    });
    let dispatcher = Dispatcher::new(
        cfg.clone(),
        "fuzz-owner".to_owned(),
        Settler::start(Store::new(conn, rrq_store::Namespace::default())),
        Supervisor::new(auth.clone()),
        Arc::new(Wake::default()),
        None,
    );
    let ctx = Arc::new(Ctx {
        dispatcher: dispatcher.clone(),
        claimed: Mutex::new(HashSet::new()),
        drained: Mutex::new(false),
        violation: Mutex::new(None),
    });
    let body = ScenarioBody {
        steps: steps.into(),
        ctx: ctx.clone(),
        sleep: None,
        stalled: false,
    };
    let limit = DECODING_LIMIT.max(
        usize::try_from(cfg.max_payload_bytes)
            .unwrap_or(usize::MAX)
            .saturating_mul(4),
    );
    let decoder = tonic_prost::ProstCodec::<RunnerMessage, RunnerMessage>::default().decoder();
    let inbound = tonic::Streaming::new_request(decoder, body, None, Some(limit));
    let endpoint = Endpoint::new(
        cfg.clone(),
        dispatcher.clone(),
        auth.clone(),
        "fuzz-orchestrator".to_owned(),
        "py".to_owned(),
    );
    let hello_is_valid = first_hello.as_ref().is_some_and(|h| {
        VALID_TOKENS.contains(&(h.runner_name.as_str(), h.process_token.as_str()))
    });
    match endpoint.connect(Request::new(inbound)).await {
        Err(status) => {
            if tracing() {
                eprintln!("stream: connect {:?}: {}", status.code(), status.message());
            }
            if let Some(h) = &first_hello
                && h.process_token.len() >= 8
                && status.message().contains(&h.process_token)
            {
                ctx.violate(format!("the status shows the token: {}", status.message()));
            }
            if status.code() == Code::Unauthenticated && hello_is_valid {
                ctx.violate(format!("a valid token was refused: {}", status.message()));
            }
            if !CONNECT_CODES.contains(&status.code()) {
                ctx.violate(format!(
                    "connect ended with {:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
        }
        Ok(response) => {
            if !hello_is_valid {
                ctx.violate(format!(
                    "a hello without a valid token was accepted: {:?}",
                    first_hello
                        .as_ref()
                        .map(|h| (&h.runner_name, &h.process_token))
                ));
            }
            let mut outbound = response.into_inner();
            let mut first = true;
            while let Some(item) = outbound.next().await {
                check_outbound(&ctx, item, first);
                first = false;
            }
        }
    }
    ctx.observe();
    for (runner, stats) in dispatcher.runner_stats() {
        if stats.sessions != 0 {
            ctx.violate(format!(
                "runner {runner} still has {} session(s) after its stream ended",
                stats.sessions
            ));
        }
    }
    match lock(&ctx.violation).take() {
        Some(v) => Err(v),
        None => Ok(()),
    }
}

/// `RRQ_FUZZ_TRACE=1`: print what the orchestrator sends (for `--replay`).
fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RRQ_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

fn check_outbound(ctx: &Ctx, item: Result<OrchestratorMessage, tonic::Status>, first: bool) {
    use orchestrator_message::Kind;
    if tracing() {
        match &item {
            Ok(m) => eprintln!("stream: out {:?}", m.kind),
            Err(s) => eprintln!("stream: out status {:?}: {}", s.code(), s.message()),
        }
    }
    match item {
        Ok(OrchestratorMessage {
            kind: Some(Kind::HelloAck(ack)),
        }) => {
            if !first {
                ctx.violate("a second hello_ack".to_owned());
            }
            if ack.protocol_version != 1 || ack.heartbeat_interval_ms <= 0 {
                ctx.violate(format!("bad hello_ack {ack:?}"));
            }
        }
        Ok(_) if first => ctx.violate("the first message out is not hello_ack".to_owned()),
        Ok(OrchestratorMessage {
            kind: Some(Kind::Execute(batch)),
        }) => {
            if batch.requests.is_empty() {
                ctx.violate("an empty execute".to_owned());
            }
            for r in &batch.requests {
                ctx.check_execute(r);
            }
        }
        Ok(OrchestratorMessage {
            kind: Some(Kind::Cancel(c)),
        }) => {
            if rrq_proto::v1::CancelReason::try_from(c.reason).is_err() {
                ctx.violate(format!("cancel with reason {}", c.reason));
            }
        }
        Ok(OrchestratorMessage { kind: None }) => {
            ctx.violate("a message without a kind".to_owned())
        }
        Err(status) => {
            if !STREAM_CODES.contains(&status.code()) {
                ctx.violate(format!(
                    "stream ended with {:?}: {}",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

// --- generation and seeds ----------------------------------------------------

fn arbitrary_event(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let kind: u8 = if u.ratio(1, 3)? {
        0
    } else {
        u.int_in_range(0..=8)?
    };
    let mut e = vec![kind];
    let n = if kind == 0 {
        4 * u.int_in_range(1..=5)?
    } else {
        u.int_in_range(0..=3)?
    };
    for i in 0..n {
        let b: u8 = u.arbitrary()?;
        // Keep most jobs on the default queue with small ids and attempts.
        e.push(if kind == 0 && i % 4 != 3 && u.ratio(3, 4)? {
            b & 0x03
        } else {
            b
        });
    }
    Ok(e)
}

fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut steps = Vec::new();
    if u.ratio(1, 3)? {
        steps.push(Step::Event(arbitrary_event(u)?));
    }
    if u.ratio(7, 8)? {
        let hello = if u.ratio(3, 4)? {
            let mut m = frame::hello(u.int_in_range(1..=4)?);
            // A third of the well-formed hellos present another runner's,
            // a revoked, a near-miss or a random token instead of py's own.
            if u.ratio(1, 3)?
                && let Some(rrq_proto::v1::runner_message::Kind::Hello(h)) = &mut m.kind
            {
                h.process_token = frame::short_string(
                    u,
                    &[
                        "",
                        frame::TOKEN_TS_SPAWNED,
                        frame::TOKEN_PY_EXITED,
                        frame::TOKEN_NEAR_MISS,
                        frame::TOKEN_PY_SPAWNED,
                    ],
                )?;
            }
            m
        } else {
            frame::arbitrary_message(u)?
        };
        steps.push(Step::Frame(hello.encode_to_vec()));
    }
    for _ in 0..u.int_in_range(0..=12)? {
        let step = match u.int_in_range(0..=15)? {
            0..=4 => Step::Frame(frame::arbitrary_message(u)?.encode_to_vec()),
            5..=8 => Step::Event(arbitrary_event(u)?),
            9 => Step::Sleep(*u.choose(&[10, 999, 1_001, 2_100, 3_100, 29_000, 31_000, 61_000])?),
            10 => {
                let flag: u8 = *u.choose(&[0, 1, 2, 0x80])?;
                let len: u32 = *u.choose(&[0, 1, 100, 1 << 20, 64 << 20, (64 << 20) + 1])?;
                let mut raw = vec![flag];
                raw.extend_from_slice(&len.to_be_bytes());
                let tail: Vec<u8> = u.arbitrary()?;
                raw.extend(tail.into_iter().take(64));
                Step::Raw(raw)
            }
            11 => Step::Frames(
                (0..u.int_in_range(1..=4)?)
                    .map(|_| frame::arbitrary_message(u).map(|m| m.encode_to_vec()))
                    .collect::<arbitrary::Result<_>>()?,
            ),
            12 => Step::Trailers,
            13 => Step::Error,
            14 => Step::Stall,
            _ => {
                let raw: Vec<u8> = u.arbitrary()?;
                Step::Raw(raw.into_iter().take(64).collect())
            }
        };
        steps.push(step);
    }
    Ok(encode(&steps))
}

fn msg(m: &RunnerMessage) -> Step {
    Step::Frame(m.encode_to_vec())
}

fn result(name: &str) -> outcome::Result {
    frame::sample_results()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| r)
        .unwrap_or(outcome::Result::TimedOut(rrq_proto::v1::TimedOut {}))
}

/// `[job, attempt, function, timeout]` indices → one dispatch group.
fn dispatch(jobs: &[[u8; 4]]) -> Step {
    let mut e = vec![Event::Dispatch as u8];
    for j in jobs {
        e.extend_from_slice(j);
    }
    Step::Event(e)
}

fn event(kind: Event, args: &[u8]) -> Step {
    let mut e = vec![kind as u8];
    e.extend_from_slice(args);
    Step::Event(e)
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let hello = msg(&frame::hello(4));
    let hello1 = msg(&frame::hello(1));
    let hb = msg(&frame::heartbeat(1));
    let ok = |job: &str, attempt: i64| msg(&frame::outcomes(job, attempt, result("success")));
    let observe = event(Event::Observe, &[]);
    let mut bad_version = frame::hello(4);
    let mut unknown_runner = frame::hello(4);
    let mut zero_slots = frame::hello(4);
    if let Some(rrq_proto::v1::runner_message::Kind::Hello(h)) = &mut bad_version.kind {
        h.protocol_version = 2;
    }
    if let Some(rrq_proto::v1::runner_message::Kind::Hello(h)) = &mut unknown_runner.kind {
        h.runner_name = "nope".to_owned();
    }
    if let Some(rrq_proto::v1::runner_message::Kind::Hello(h)) = &mut zero_slots.kind {
        h.max_in_flight = 0;
    }
    let with_token = |runner: &str, token: &str| {
        let mut m = frame::hello(4);
        if let Some(rrq_proto::v1::runner_message::Kind::Hello(h)) = &mut m.kind {
            runner.clone_into(&mut h.runner_name);
            token.clone_into(&mut h.process_token);
        }
        msg(&m)
    };
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "happy-path",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 0], [2, 0, 1, 0]]),
                ok("j1", 1),
                hb.clone(),
                msg(&frame::outcomes("j2", 1, result("retry"))),
                observe.clone(),
            ],
        ),
        (
            "claimed-before-hello",
            vec![
                dispatch(&[[1, 0, 0, 0], [2, 1, 2, 0], [3, 2, 3, 0], [4, 0, 4, 0]]),
                hello.clone(),
                ok("j1", 1),
                msg(&frame::outcomes("j2", 2, result("failure"))),
                observe.clone(),
            ],
        ),
        (
            "held-until-a-slot-frees",
            vec![
                hello1.clone(),
                dispatch(&[[1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]]),
                observe.clone(),
                ok("j1", 1),
                ok("j2", 1),
                ok("j3", 1),
                observe.clone(),
            ],
        ),
        (
            "timeout-then-late-outcome",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 1]]),
                hb.clone(),
                Step::Sleep(900),
                hb.clone(),
                Step::Sleep(900),
                msg(&frame::outcomes("j1", 1, result("timed_out"))),
                observe.clone(),
            ],
        ),
        (
            "cancel-answered",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 3]]),
                event(Event::CancelRequested, &[1]),
                msg(&frame::outcomes("j1", 1, result("cancelled"))),
                observe.clone(),
            ],
        ),
        (
            "cancel-ignored-past-grace",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 3]]),
                event(Event::CancelRequested, &[1]),
                hb.clone(),
                Step::Sleep(900),
                hb.clone(),
                Step::Sleep(900),
                hb.clone(),
                Step::Sleep(900),
                ok("j1", 1),
            ],
        ),
        (
            "lease-lost-and-drain",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 3], [2, 0, 0, 3], [3, 0, 0, 3]]),
                event(Event::LeasesLost, &[1]),
                ok("j1", 1),
                event(Event::RenewAll, &[60]),
                event(Event::ExpireLeases, &[45]),
                event(Event::BeginDrain, &[]),
                dispatch(&[[4, 0, 0, 0]]),
                event(Event::ReleaseRunning, &[]),
                ok("j3", 1),
                observe.clone(),
            ],
        ),
        (
            "stale-and-unknown-outcomes",
            vec![
                hello.clone(),
                dispatch(&[[1, 1, 0, 0]]),
                ok("j1", 1),
                ok("j9", 1),
                ok("", 0),
                ok("j1", 2),
                ok("j1", 2),
                msg(&RunnerMessage {
                    kind: Some(rrq_proto::v1::runner_message::Kind::Outcomes(
                        rrq_proto::v1::OutcomeBatch {
                            outcomes: vec![rrq_proto::v1::Outcome {
                                job_id: "j1".to_owned(),
                                attempt: 2,
                                result: None,
                            }],
                        },
                    )),
                }),
            ],
        ),
        (
            "second-hello",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 0]]),
                hello.clone(),
                ok("j1", 1),
            ],
        ),
        (
            "empty-message",
            vec![hello.clone(), Step::Frame(Vec::new())],
        ),
        ("heartbeat-first", vec![hb.clone(), hello.clone()]),
        ("bad-version", vec![msg(&bad_version)]),
        // Authentication: a forged runner knocks while jobs wait for `py`.
        (
            "auth-no-token",
            vec![
                dispatch(&[[1, 0, 0, 0]]),
                with_token("py", ""),
                ok("j1", 1),
                observe.clone(),
            ],
        ),
        (
            "auth-wrong-token",
            vec![
                dispatch(&[[1, 0, 0, 0]]),
                with_token("py", frame::TOKEN_NEAR_MISS),
                ok("j1", 1),
            ],
        ),
        (
            "auth-other-runners-token",
            vec![
                dispatch(&[[1, 0, 0, 0]]),
                with_token("py", frame::TOKEN_TS_SPAWNED),
                ok("j1", 1),
            ],
        ),
        (
            "auth-exited-process-token",
            vec![
                dispatch(&[[1, 0, 0, 0]]),
                with_token("py", frame::TOKEN_PY_EXITED),
                ok("j1", 1),
            ],
        ),
        (
            "auth-spawn-token",
            vec![
                dispatch(&[[1, 0, 0, 0]]),
                with_token("py", frame::TOKEN_PY_SPAWNED),
                ok("j1", 1),
                with_token("py", frame::TOKEN_PY_SPAWNED),
                observe.clone(),
            ],
        ),
        (
            "auth-ts-spawn-token",
            vec![with_token("ts", frame::TOKEN_TS_SPAWNED), hb.clone()],
        ),
        ("unknown-runner", vec![msg(&unknown_runner)]),
        ("zero-slots", vec![msg(&zero_slots)]),
        ("no-hello", vec![Step::Stall]),
        ("end-before-hello", vec![]),
        (
            "silent-runner",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 3]]),
                Step::Sleep(5_000),
                ok("j1", 1),
            ],
        ),
        (
            "stall-after-hello",
            vec![hello.clone(), dispatch(&[[1, 0, 0, 0]]), Step::Stall],
        ),
        (
            "oversize-frame",
            vec![hello.clone(), Step::Raw(vec![0, 0x04, 0, 0, 1])],
        ),
        (
            "oversize-first-frame",
            vec![Step::Raw(vec![0, 0x04, 0, 0, 1])],
        ),
        (
            "truncated-frame",
            vec![hello.clone(), Step::Raw(vec![0, 0, 0, 1, 0, 0x0a])],
        ),
        (
            "compressed-flag",
            vec![hello.clone(), Step::Raw(vec![1, 0, 0, 0, 2, 0x1a, 0])],
        ),
        (
            "garbage-message",
            vec![hello.clone(), Step::Frame(vec![0xff, 0xff, 0xff])],
        ),
        (
            "split-and-coalesced",
            vec![
                Step::Raw(vec![0, 0]),
                Step::Raw({
                    let h = frame::hello(2).encode_to_vec();
                    let mut v = framed(&h);
                    v.drain(..2);
                    v
                }),
                dispatch(&[[1, 0, 0, 0], [2, 0, 0, 0]]),
                Step::Frames(vec![
                    frame::outcomes("j1", 1, result("success")).encode_to_vec(),
                    frame::heartbeat(1).encode_to_vec(),
                    frame::outcomes("j2", 1, result("success")).encode_to_vec(),
                ]),
            ],
        ),
        (
            "body-error",
            vec![hello.clone(), dispatch(&[[1, 0, 0, 0]]), Step::Error],
        ),
        ("trailers", vec![hello.clone(), Step::Trailers, hb.clone()]),
        (
            "close-all",
            vec![
                hello.clone(),
                dispatch(&[[1, 0, 0, 0]]),
                event(Event::CloseAll, &[]),
                hb,
            ],
        ),
        (
            "routing",
            vec![
                hello,
                dispatch(&[
                    [8 | 1, 0, 0, 0],
                    [2, 0, 3, 0],
                    [3, 0, 4, 0],
                    [4, 0, 5, 0],
                    [5, 0, 6, 0],
                    [6, 0, 7, 0],
                ]),
                observe,
            ],
        ),
    ];
    scripts
        .into_iter()
        .map(|(name, steps)| (name.to_owned(), encode(&steps)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_round_trip() {
        let steps = vec![
            Step::Frame(vec![1, 2]),
            Step::Raw(vec![]),
            Step::Event(vec![0, 1, 2, 3, 4]),
            Step::Sleep(1234),
            Step::Trailers,
            Step::Error,
            Step::Stall,
            Step::Frames(vec![vec![9], vec![]]),
        ];
        assert_eq!(parse(&encode(&steps)), steps);
    }
}
