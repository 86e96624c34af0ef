//! [`Client`]: enqueue jobs, read their status, wait for their result, cancel them.

use rrq_store::limits::{MAX_DURATION_MS, MAX_RETRIES};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use rrq_store::{CancelOutcome, EnqueueRequest, EnqueueRule, Enqueued, Namespace, Store};
use serde_json::Value;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::job::{JobResult, JobStatus};

/// Reason kept in `last_error` of a job cancelled through [`Client::cancel`].
const CANCEL_REASON: &str = "cancelled on request";
/// How many job id -> queue entries the client remembers for its own jobs.
const QUEUE_CACHE_SIZE: usize = 10_000;
/// Jobs per `enqueue.lua` call in [`Client::enqueue_many`], as the Python
/// client's `ENQUEUE_MANY_CHUNK`: a call holds Redis for its whole run (about
/// 10 µs a job), so chunks keep other clients waiting briefly.
pub const ENQUEUE_MANY_CHUNK: usize = 500;

/// Options of an enqueue; every field is optional (`Default` gives none).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// Params passed to the handler: a JSON object (default `{}`; `Null` means `{}`).
    pub params: Option<Value>,
    /// Queue (default `default_queue_name`).
    pub queue_name: Option<String>,
    /// Your id; an id that already exists fails with [`Error::DuplicateJob`].
    pub job_id: Option<String>,
    /// Retries after the first attempt (default `default_max_retries`).
    pub max_retries: Option<i64>,
    /// Per-attempt timeout (default: the orchestrator's).
    pub job_timeout: Option<Duration>,
    /// How long the finished job and its result are kept.
    pub result_ttl: Option<Duration>,
    /// Run no earlier than this long after the enqueue (Redis time).
    pub defer_by: Option<Duration>,
    /// Run no earlier than this time.
    pub defer_until: Option<SystemTime>,
    /// W3C traceparent stored with the job (the producer's span).
    pub trace_parent: Option<String>,
    /// W3C tracestate that goes with `trace_parent`.
    pub trace_state: Option<String>,
}

impl EnqueueOptions {
    /// Options with these params and nothing else.
    pub fn with_params(params: Value) -> Self {
        Self {
            params: Some(params),
            ..Self::default()
        }
    }

    /// Sets the params.
    pub fn params(mut self, params: Value) -> Self {
        self.params = Some(params);
        self
    }

    /// Sets the queue.
    pub fn queue_name(mut self, queue: impl Into<String>) -> Self {
        self.queue_name = Some(queue.into());
        self
    }

    /// Sets an explicit job id.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.job_id = Some(id.into());
        self
    }

    /// Sets max_retries.
    pub fn max_retries(mut self, n: i64) -> Self {
        self.max_retries = Some(n);
        self
    }

    /// Sets the per-attempt timeout.
    pub fn job_timeout(mut self, d: Duration) -> Self {
        self.job_timeout = Some(d);
        self
    }

    /// Sets the result TTL.
    pub fn result_ttl(mut self, d: Duration) -> Self {
        self.result_ttl = Some(d);
        self
    }

    /// Defers the job by `d`.
    pub fn defer_by(mut self, d: Duration) -> Self {
        self.defer_by = Some(d);
        self
    }

    /// Defers the job until `t`.
    pub fn defer_until(mut self, t: SystemTime) -> Self {
        self.defer_until = Some(t);
        self
    }

    /// Sets the W3C trace context stored with the job.
    pub fn trace_context(
        mut self,
        trace_parent: impl Into<String>,
        trace_state: impl Into<String>,
    ) -> Self {
        self.trace_parent = Some(trace_parent.into());
        self.trace_state = Some(trace_state.into());
        self
    }
}

/// The rate-limit rule of [`Client::enqueue_with_rate_limit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Rule key (per queue).
    pub key: String,
    /// Window: at most one job per key per window.
    pub window: Duration,
}

/// The debounce rule of [`Client::enqueue_with_debounce`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debounce {
    /// Rule key (per queue).
    pub key: String,
    /// The job runs this long after the last call...
    pub delay: Duration,
    /// ...but at most this long after the first (at least `delay`).
    pub max_wait: Option<Duration>,
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// `e`, a params error of entry `index` of an `enqueue_many`, saying which.
fn naming_entry(index: usize, e: Error) -> Error {
    match e {
        Error::InvalidParams(m) => Error::InvalidParams(format!("params_list[{index}]: {m}")),
        Error::PayloadTooLarge(m) => Error::PayloadTooLarge(format!("params_list[{index}]: {m}")),
        other => other,
    }
}

/// A new job id: a ULID, 26 Crockford base32 characters that sort by the
/// millisecond they were made. Ten characters shorter than a UUID: the id is
/// stored twice for every waiting job (docs/redis-schema.md), and that is most
/// of a backlog's memory. A UUIDv7 has a ULID's layout (48-bit Unix ms
/// timestamp first, then random bits), so one is encoded as the other.
pub fn ulid() -> String {
    let value = uuid::Uuid::now_v7().as_u128();
    (0..26)
        .rev()
        .map(|group| char::from(CROCKFORD[((value >> (group * 5)) & 31) as usize]))
        .collect()
}

/// Enqueues jobs and reads their status. Cheap to share: `&self` everywhere.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    redis: redis::Client,
    store: Store,
    registered_queues: Mutex<HashSet<String>>,
    job_queues: Mutex<HashMap<String, String>>,
}

impl Client {
    /// Connects to `dsn` with the default settings.
    pub async fn connect(dsn: &str) -> Result<Self> {
        Self::with_config(ClientConfig::with_dsn(dsn)).await
    }

    /// Connects with the `[rrq]` settings of an `rrq.toml` (`RRQ_REDIS_DSN` overrides the DSN).
    pub async fn from_config_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::with_config(ClientConfig::from_file(path)?).await
    }

    /// Connects with `config`.
    pub async fn with_config(config: ClientConfig) -> Result<Self> {
        // redis-rs spells unix sockets redis+unix://; accept the Python spelling too.
        let dsn = match config.redis_dsn.strip_prefix("unix://") {
            Some(rest) => format!("redis+unix://{rest}"),
            None => config.redis_dsn.clone(),
        };
        let redis = rrq_store::open_client(dsn.as_str())?;
        let ns = Namespace::of_client(&config.key_prefix, &redis)
            .map_err(|e| Error::Config(format!("rrq.{e}")))?;
        let store = Store::connect(&redis, ns).await?;
        Ok(Self {
            config,
            redis,
            store,
            registered_queues: Mutex::new(HashSet::new()),
            job_queues: Mutex::new(HashMap::new()),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    // --- enqueue --------------------------------------------------------------

    /// Enqueues a job and returns its id. Fails with [`Error::InvalidOption`],
    /// [`Error::InvalidParams`] or [`Error::PayloadTooLarge`] before anything
    /// is written, or [`Error::DuplicateJob`] when an explicit `job_id`
    /// already exists in any queue.
    pub async fn enqueue(&self, function_name: &str, options: EnqueueOptions) -> Result<String> {
        let explicit = options.job_id.is_some();
        let req = self.build(function_name, &options)?;
        Ok(self.submit(req, explicit).await?.0)
    }

    /// Enqueues one job per entry of `params_list`; returns their ids in order.
    ///
    /// `options` are those of [`Client::enqueue`] except `params` (each job's
    /// params are its entry of `params_list`) and `job_id` (every job gets a
    /// new ULID), both refused with [`Error::InvalidOption`], and apply to
    /// every job. Every entry is validated as `enqueue` validates its params
    /// before anything is written; then the jobs are written by one
    /// `enqueue.lua` call per [`ENQUEUE_MANY_CHUNK`] jobs, a round trip each.
    /// Each job is written atomically on its own; the batch as a whole is
    /// not: an error after the first chunk leaves the chunks before it
    /// written. An empty list checks the options and writes nothing.
    pub async fn enqueue_many(
        &self,
        function_name: &str,
        params_list: &[Value],
        options: EnqueueOptions,
    ) -> Result<Vec<String>> {
        if options.params.is_some() {
            return Err(Error::option(
                "params",
                "params is not an option of enqueue_many(): each job's params are its entry of params_list",
            ));
        }
        if options.job_id.is_some() {
            return Err(Error::option(
                "job_id",
                "job_id is not an option of enqueue_many(): every job gets a new id",
            ));
        }
        let Some((first, rest)) = params_list.split_first() else {
            self.build(function_name, &options)?;
            return Ok(Vec::new());
        };
        // The options are checked once; each entry's params as enqueue() checks them.
        let mut shared = self
            .build_with(function_name, &options, Some(first))
            .map_err(|e| naming_entry(0, e))?;
        let mut jobs = Vec::with_capacity(params_list.len());
        jobs.push((
            std::mem::take(&mut shared.id),
            std::mem::take(&mut shared.params_json),
        ));
        for (i, params) in rest.iter().enumerate() {
            let params_json = self
                .params_json(Some(params))
                .map_err(|e| naming_entry(i + 1, e))?;
            jobs.push((ulid(), params_json));
        }

        let mut ids = Vec::with_capacity(jobs.len());
        let mut chunks = jobs.chunks(ENQUEUE_MANY_CHUNK);
        let mut in_flight = FuturesOrdered::new();
        // Two chunks in flight: the client packs the next one while Redis runs
        // the script of the last, and neither waits for the other.
        let outcome = loop {
            while in_flight.len() < 2
                && let Some(chunk) = chunks.next()
            {
                let register = !lock(&self.registered_queues).contains(&shared.queue);
                in_flight.push_back(self.enqueue_chunk(&shared, chunk, register));
            }
            let Some(replies) = in_flight.next().await else {
                break Ok(());
            };
            if let Err(e) = replies.and_then(|r| self.collect_chunk(r, &shared.queue, &mut ids)) {
                break Err(e);
            }
        };
        if let Err(e) = outcome {
            // Let the chunk still in flight end: a write landing after the
            // caller saw the error would surprise it.
            while in_flight.next().await.is_some() {}
            return Err(e);
        }
        Ok(ids)
    }

    /// Writes one chunk of `enqueue_many`: its first job carries the shared
    /// options, the others come as (id, params_json) pairs.
    async fn enqueue_chunk(
        &self,
        shared: &EnqueueRequest,
        chunk: &[(String, String)],
        register: bool,
    ) -> Result<Vec<Enqueued>> {
        let Some(((id, params_json), more)) = chunk.split_first() else {
            return Ok(Vec::new());
        };
        let first = EnqueueRequest {
            id: id.clone(),
            params_json: params_json.clone(),
            ..shared.clone()
        };
        let replies = self.store.enqueue_many(&first, more, register).await?;
        // The pipeline ran, so its SADD did too (as in submit()).
        lock(&self.registered_queues).insert(first.queue);
        Ok(replies)
    }

    /// Takes the ids of one chunk's replies, in order.
    fn collect_chunk(
        &self,
        replies: Vec<Enqueued>,
        queue: &str,
        ids: &mut Vec<String>,
    ) -> Result<()> {
        for reply in replies {
            match reply {
                Enqueued::Created { id, .. } => {
                    self.remember(&id, queue);
                    ids.push(id);
                }
                // A ULID collision: not expected, but never a silent loss.
                Enqueued::Exists { id, status } => {
                    return Err(Error::DuplicateJob {
                        job_id: id,
                        status: JobStatus::from_number(status),
                        queue_name: queue.to_owned(),
                    });
                }
                other => {
                    return Err(Error::Store(rrq_store::Error::Protocol {
                        script: "enqueue",
                        detail: format!("{other:?} for a job without a rule"),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Enqueues a job unless `unique_key` is held (per queue); returns the
    /// holder's id. The key is held for `unique_ttl` (default
    /// `default_unique_job_lock_ttl_seconds`), whatever happens to the job.
    pub async fn enqueue_with_unique_key(
        &self,
        function_name: &str,
        unique_key: &str,
        options: EnqueueOptions,
        unique_ttl: Option<Duration>,
    ) -> Result<String> {
        let explicit = options.job_id.is_some();
        let mut req = self.build(function_name, &options)?;
        let key = nonempty("unique_key", unique_key)?;
        let ttl_ms = match unique_ttl {
            Some(d) => positive_ms("unique_ttl_seconds", d)?,
            None => (self.config.default_unique_job_lock_ttl_seconds * 1000.0).round() as i64,
        };
        req.rule = Some(EnqueueRule::Unique { key, ttl_ms });
        Ok(self.submit(req, explicit).await?.0)
    }

    /// Enqueues a job unless its rate-limit window is closed; `None` when it is
    /// (nothing written).
    pub async fn enqueue_with_rate_limit(
        &self,
        function_name: &str,
        options: EnqueueOptions,
        rate_limit: RateLimit,
    ) -> Result<Option<String>> {
        let explicit = options.job_id.is_some();
        let mut req = self.build(function_name, &options)?;
        let key = nonempty("rate_limit_key", &rate_limit.key)?;
        let window_ms = positive_ms("rate_limit_seconds", rate_limit.window)?;
        req.rule = Some(EnqueueRule::RateLimit { key, window_ms });
        let (id, limited) = self.submit(req, explicit).await?;
        Ok((!limited).then_some(id))
    }

    /// Enqueues a debounced job: only the last call in a window runs, with the
    /// last params; every call in a window returns the same id. `job_id`
    /// cannot be given: the window decides the id.
    pub async fn enqueue_with_debounce(
        &self,
        function_name: &str,
        options: EnqueueOptions,
        debounce: Debounce,
    ) -> Result<String> {
        if options.job_id.is_some() {
            return Err(Error::option(
                "job_id",
                "job_id cannot be combined with enqueue_with_debounce(): the debounce window decides the job id",
            ));
        }
        let mut req = self.build(function_name, &options)?;
        let key = nonempty("debounce_key", &debounce.key)?;
        let delay_ms = positive_ms("debounce_seconds", debounce.delay)?;
        let max_wait_ms = match debounce.max_wait {
            None => 0,
            Some(d) => {
                let ms = positive_ms("debounce_max_wait_seconds", d)?;
                if ms < delay_ms {
                    return Err(Error::option(
                        "debounce_max_wait_seconds",
                        format!(
                            "debounce_max_wait_seconds must be at least debounce_seconds, got {:?} < {:?}",
                            d, debounce.delay
                        ),
                    ));
                }
                ms
            }
        };
        req.rule = Some(EnqueueRule::Debounce {
            key,
            delay_ms,
            max_wait_ms,
        });
        Ok(self.submit(req, false).await?.0)
    }

    /// Validates everything before anything is written, in the Python client's order.
    fn build(&self, function_name: &str, o: &EnqueueOptions) -> Result<EnqueueRequest> {
        self.build_with(function_name, o, o.params.as_ref())
    }

    /// [`Client::build`] with these params instead of `o.params`.
    fn build_with(
        &self,
        function_name: &str,
        o: &EnqueueOptions,
        params: Option<&Value>,
    ) -> Result<EnqueueRequest> {
        let function_name = nonempty("function_name", function_name)?;
        let params_json = self.params_json(params)?;
        let limit = self.config.max_payload_bytes;
        let queue = nonempty(
            "queue_name",
            o.queue_name
                .as_deref()
                .unwrap_or(&self.config.default_queue_name),
        )?;
        if queue.contains(['{', '}']) {
            return Err(Error::option(
                "queue_name",
                format!("queue_name must not contain braces, got {queue:?}"),
            ));
        }
        let id = match &o.job_id {
            Some(id) => nonempty("job_id", id)?,
            None => ulid(),
        };
        let max_retries = o.max_retries.unwrap_or(self.config.default_max_retries);
        if !(0..=MAX_RETRIES).contains(&max_retries) {
            return Err(Error::option(
                "max_retries",
                format!(
                    "max_retries must be an integer from 0 to {MAX_RETRIES}, got {max_retries}"
                ),
            ));
        }
        let job_timeout_ms = o
            .job_timeout
            .map(|d| positive_ms("job_timeout_seconds", d))
            .transpose()?
            .unwrap_or(0);
        let result_ttl_ms = o
            .result_ttl
            .map(|d| positive_ms("result_ttl_seconds", d))
            .transpose()?
            .unwrap_or(0);
        let defer_ms = o
            .defer_by
            .map(|d| bounded_ms("defer_by_seconds", d))
            .transpose()?
            .unwrap_or(0);
        if o.defer_until.is_some() && o.defer_by.is_some() {
            return Err(Error::option(
                "defer_until",
                "pass either defer_by_seconds or defer_until, not both",
            ));
        }
        let run_at_ms = match o.defer_until {
            None => 0,
            Some(t) => {
                let since = t.duration_since(UNIX_EPOCH).map_err(|_| {
                    Error::option("defer_until", "defer_until must not be before 1970")
                })?;
                let ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
                // enqueue.lua checks this against Redis's clock; this copy saves a round trip.
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                if ms > now.saturating_add(MAX_DURATION_MS) {
                    return Err(Error::option(
                        "defer_until",
                        "defer_until must be at most 3,650 days from now",
                    ));
                }
                ms
            }
        };
        Ok(EnqueueRequest {
            id,
            function_name,
            queue,
            params_json,
            max_retries,
            job_timeout_ms,
            result_ttl_ms,
            defer_ms,
            run_at_ms,
            trace_parent: o.trace_parent.clone().unwrap_or_default(),
            trace_state: o.trace_state.clone().unwrap_or_default(),
            max_params_bytes: i64::try_from(limit).unwrap_or(i64::MAX),
            rule: None,
            registered_id: false,
        })
    }

    /// A job's params as the JSON text stored, checked against the payload limit.
    fn params_json(&self, params: Option<&Value>) -> Result<String> {
        let params_json = match params {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(v @ Value::Object(_)) => serde_json::to_string(v).map_err(|e| {
                Error::InvalidParams(format!("params are not JSON-serializable: {e}"))
            })?,
            Some(other) => {
                return Err(Error::InvalidParams(format!(
                    "params must be a JSON object, got {}",
                    json_type(other)
                )));
            }
        };
        let limit = self.config.max_payload_bytes;
        if params_json.len() > limit {
            return Err(Error::PayloadTooLarge(format!(
                "params are {} bytes of JSON, the limit (max_payload_bytes) is {limit}",
                params_json.len()
            )));
        }
        Ok(params_json)
    }

    /// Runs enqueue.lua for a validated request; returns (job id, rate limited).
    async fn submit(&self, mut req: EnqueueRequest, explicit_id: bool) -> Result<(String, bool)> {
        // A chosen id names one job across every queue: enqueue.lua checks
        // the id registry and writes the job in one step.
        req.registered_id = explicit_id;
        let register = !lock(&self.registered_queues).contains(&req.queue);
        let reply = self.store.enqueue_pipelined(&req, register).await?;
        lock(&self.registered_queues).insert(req.queue.clone());
        let (id, limited) = match reply {
            Enqueued::Exists { id, status } => {
                return Err(Error::DuplicateJob {
                    job_id: id,
                    status: JobStatus::from_number(status),
                    queue_name: req.queue,
                });
            }
            Enqueued::ExistsInQueue { id, queue, status } => {
                return Err(Error::DuplicateJob {
                    job_id: id,
                    status: JobStatus::from_number(status),
                    queue_name: queue,
                });
            }
            Enqueued::RateLimited => (String::new(), true),
            Enqueued::Created { id, .. }
            | Enqueued::UniqueHeld { id, .. }
            | Enqueued::Debounced { id, .. } => (id, false),
        };
        if !limited {
            self.remember(&id, &req.queue);
        }
        Ok((id, limited))
    }

    // --- status -------------------------------------------------------------------

    fn remember(&self, id: &str, queue: &str) {
        let mut cache = lock(&self.job_queues);
        if cache.len() >= QUEUE_CACHE_SIZE && !cache.contains_key(id) {
            cache.clear();
        }
        cache.insert(id.to_owned(), queue.to_owned());
    }

    /// The job's queue and record: the remembered queue first, else every queue.
    async fn locate(&self, id: &str) -> Result<Option<(String, JobResult)>> {
        let cached = lock(&self.job_queues).get(id).cloned();
        if let Some(queue) = cached
            && let Some(fields) = self.store.job(&queue, id).await?
        {
            let result = JobResult::from_fields(&fields, id, &queue);
            return Ok(Some((queue, result)));
        }
        let Some(queue) = self.store.find_job_queue(id).await? else {
            return Ok(None);
        };
        let Some(fields) = self.store.job(&queue, id).await? else {
            return Ok(None);
        };
        self.remember(id, &queue);
        let result = JobResult::from_fields(&fields, id, &queue);
        Ok(Some((queue, result)))
    }

    /// The job's current record, or `None` when no such job exists (or it expired).
    pub async fn get_job_status(&self, job_id: &str) -> Result<Option<JobResult>> {
        Ok(self.locate(job_id).await?.map(|(_, r)| r))
    }

    /// Waits until the job is terminal (COMPLETED, FAILED or CANCELLED).
    ///
    /// Subscribes to the job's done channel before reading its status, so a
    /// transition between the two cannot be missed, then waits for the
    /// message without polling. [`Error::NotFound`] for an unknown id,
    /// [`Error::Timeout`] when `timeout` passes first.
    pub async fn wait_for_result(
        &self,
        job_id: &str,
        timeout: Option<Duration>,
    ) -> Result<JobResult> {
        let wait = self.wait_inner(job_id);
        match timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait)
                .await
                .map_err(|_| Error::Timeout(job_id.to_owned()))?,
        }
    }

    async fn wait_inner(&self, job_id: &str) -> Result<JobResult> {
        let Some((queue, _)) = self.locate(job_id).await? else {
            return Err(Error::NotFound(job_id.to_owned()));
        };
        let mut pubsub = self.redis.get_async_pubsub().await?;
        pubsub
            .subscribe(self.store.namespace().queue(&queue).done_channel(job_id))
            .await?;
        let mut messages = pubsub.into_on_message();
        loop {
            let Some(fields) = self.store.job(&queue, job_id).await? else {
                return Err(Error::NotFound(job_id.to_owned()));
            };
            let result = JobResult::from_fields(&fields, job_id, &queue);
            if result.status.is_terminal() {
                return Ok(result);
            }
            if messages.next().await.is_none() {
                return Err(Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the pub/sub connection closed",
                ))));
            }
        }
    }

    // --- cancellation -----------------------------------------------------------------

    /// Cancels a job that has not finished; returns whether it will end CANCELLED.
    ///
    /// A waiting job becomes CANCELLED at once; a running one is marked
    /// `cancel_requested` and its orchestrator cancels the handler (true in
    /// both cases). A finished job is left as it is (false).
    /// [`Error::NotFound`] for an unknown (or expired) id.
    pub async fn cancel(&self, job_id: &str) -> Result<bool> {
        let job_id = nonempty("job_id", job_id)?;
        let Some((queue, _)) = self.locate(&job_id).await? else {
            return Err(Error::NotFound(job_id));
        };
        let ttl_ms = (self.config.default_result_ttl_seconds * 1000.0).round() as i64;
        match self
            .store
            .cancel(&queue, &job_id, CANCEL_REASON, ttl_ms)
            .await?
        {
            CancelOutcome::Cancelled | CancelOutcome::Requested => Ok(true),
            CancelOutcome::Finished(_) => Ok(false),
            CancelOutcome::NotFound => Err(Error::NotFound(job_id)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps are caches: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nonempty(option: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::option(
            option,
            format!("{option} must be a non-empty string, got {value:?}"),
        ));
    }
    Ok(value.to_owned())
}

fn round_ms(d: Duration) -> i64 {
    i64::try_from((d.as_nanos() + 500_000) / 1_000_000).unwrap_or(i64::MAX)
}

/// `d` in whole ms, at most [`MAX_DURATION_MS`] (rust/rrq-store/limits.toml).
fn bounded_ms(option: &str, d: Duration) -> Result<i64> {
    let ms = round_ms(d);
    if ms > MAX_DURATION_MS {
        return Err(Error::option(
            option,
            format!(
                "{option} must be at most {} seconds (3,650 days), got {}",
                MAX_DURATION_MS / 1000,
                d.as_secs_f64()
            ),
        ));
    }
    Ok(ms)
}

/// `d` in whole ms, from 1 to [`MAX_DURATION_MS`].
fn positive_ms(option: &str, d: Duration) -> Result<i64> {
    if d.is_zero() {
        return Err(Error::option(
            option,
            format!("{option} must be a finite positive number, got 0"),
        ));
    }
    let ms = bounded_ms(option, d)?;
    if ms == 0 {
        return Err(Error::option(
            option,
            format!("{option} must be at least 0.001, got {}", d.as_secs_f64()),
        ));
    }
    Ok(ms)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_to_ms() {
        assert_eq!(round_ms(Duration::from_micros(1500)), 2);
        assert_eq!(round_ms(Duration::from_micros(1499)), 1);
        assert!(positive_ms("x", Duration::from_micros(400)).is_err());
        assert!(positive_ms("x", Duration::ZERO).is_err());
    }

    #[test]
    fn durations_over_the_limit_are_refused() {
        let max = Duration::from_millis(MAX_DURATION_MS as u64);
        assert_eq!(positive_ms("x", max).ok(), Some(MAX_DURATION_MS));
        let err = positive_ms("job_timeout_seconds", max + Duration::from_millis(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("job_timeout_seconds must be at most")
        );
        assert!(bounded_ms("defer_by_seconds", Duration::MAX).is_err());
    }

    #[test]
    fn ids_are_ulids_that_carry_the_time() {
        let before = chrono::Utc::now().timestamp_millis();
        let id = ulid();
        let after = chrono::Utc::now().timestamp_millis();
        assert_eq!(id.len(), 26);
        let stamp = id[..10].bytes().fold(0i64, |acc, c| {
            let digit = CROCKFORD
                .iter()
                .position(|&d| d == c)
                .expect("a Crockford digit");
            acc * 32 + digit as i64
        });
        assert!(
            (before..=after).contains(&stamp),
            "{stamp} not in {before}..={after}"
        );
    }
}
