//! One typed async function per Lua script.
//!
//! The scripts live in `../lua/` (their one home) and are embedded here. They
//! run with `EVALSHA`; `redis::Script` loads them again when Redis answers
//! `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script, Value};

use crate::error::{Error, Result};
use crate::keys::Namespace;

static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/enqueue.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/claim.lua")));
static RENEW_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/renew_lease.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/settle.lua")));
static RECOVER_EXPIRED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/recover_expired.lua")));
static CANCEL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/cancel.lua")));
static DLQ_REQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/dlq_requeue.lua")));
static DLQ_PURGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/dlq_purge.lua")));
static FORGET_IDS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/forget_ids.lua")));

/// Rounds of `enqueue.lua` a registered id may take: the registry may name
/// another record each time it is asked (that record expiring, another
/// producer taking the id); three rounds without an answer is a protocol error.
const REGISTRY_ROUNDS: usize = 3;

/// One of the rules `enqueue.lua` applies (at most one per enqueue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueRule {
    /// Only one job holds `key` for `ttl_ms`; a second enqueue returns the holder.
    Unique {
        /// Rule key as the user gave it.
        key: String,
        /// How long the key is held.
        ttl_ms: i64,
    },
    /// At most one job per window for `key`.
    RateLimit {
        /// Rule key as the user gave it.
        key: String,
        /// Window length.
        window_ms: i64,
    },
    /// The job runs `delay_ms` after the last call, at most `max_wait_ms` after the first.
    Debounce {
        /// Rule key as the user gave it.
        key: String,
        /// Debounce delay.
        delay_ms: i64,
        /// Cap on the total wait (0 = none).
        max_wait_ms: i64,
    },
}

/// A new job for [`Store::enqueue`].
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    /// Job id; unique within the queue.
    pub id: String,
    /// Handler name, optionally `runner#handler`.
    pub function_name: String,
    /// Queue to wait in.
    pub queue: String,
    /// Params as UTF-8 JSON text of an object.
    pub params_json: String,
    /// Retries after the first attempt.
    pub max_retries: i64,
    /// Per-attempt timeout; 0 = orchestrator default.
    pub job_timeout_ms: i64,
    /// Result TTL; 0 = orchestrator default.
    pub result_ttl_ms: i64,
    /// Delay from now (Redis time).
    pub defer_ms: i64,
    /// Absolute earliest run time; 0 = none.
    pub run_at_ms: i64,
    /// W3C traceparent, empty when none.
    pub trace_parent: String,
    /// W3C tracestate, empty when none.
    pub trace_state: String,
    /// Largest params_json accepted.
    pub max_params_bytes: i64,
    /// Unique / rate-limit / debounce rule, if any.
    pub rule: Option<EnqueueRule>,
    /// The producer chose `id`: register it in the id registry
    /// (`<prefix>:ids`), so that it names at most one job across every queue.
    pub registered_id: bool,
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The job was written; it runs at `run_at_ms` (Redis time).
    Created {
        /// Job id.
        id: String,
        /// When it becomes due.
        run_at_ms: i64,
    },
    /// A job with this id already exists; nothing was written.
    Exists {
        /// Job id.
        id: String,
        /// Current `JobStatus` number of the existing job.
        status: i32,
    },
    /// Unique rule: the key is held by job `id`; nothing was written.
    UniqueHeld {
        /// Id of the holder.
        id: String,
        /// Its `JobStatus` number (0 when its record already expired).
        status: i32,
    },
    /// The id (a registered one) is held by a job of another queue; nothing
    /// was written.
    ExistsInQueue {
        /// Job id.
        id: String,
        /// The queue of the job that holds it.
        queue: String,
        /// Its `JobStatus` number.
        status: i32,
    },
    /// Rate-limit rule: the window is still closed; nothing was written.
    RateLimited,
    /// Debounce rule: the waiting job `id` took the new params and runs at `run_at_ms`.
    Debounced {
        /// Id of the waiting job.
        id: String,
        /// Its new run time.
        run_at_ms: i64,
    },
}

/// One job moved to ACTIVE by [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    /// Job id.
    pub id: String,
    /// Attempt number of this run: the fence token.
    pub attempt: i64,
    /// Handler name as enqueued (maybe with a `runner#` prefix).
    pub function_name: String,
    /// Params JSON.
    pub params_json: String,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// Per-attempt timeout; 0 = orchestrator default.
    pub job_timeout_ms: i64,
    /// Enqueue time, epoch ms.
    pub enqueued_at_ms: i64,
    /// W3C traceparent.
    pub trace_parent: String,
    /// W3C tracestate.
    pub trace_state: String,
    /// When this attempt became due, epoch ms (Redis time).
    pub run_at_ms: i64,
}

/// Answer of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Redis time of the claim, epoch ms.
    pub now_ms: i64,
    /// Time until the earliest job still waiting falls due; `None` when none waits.
    pub next_due_in_ms: Option<i64>,
    /// Jobs claimed, at most the requested number.
    pub jobs: Vec<ClaimedJob>,
}

/// How an attempt ended, for [`Store::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleAction {
    /// Store the result; status COMPLETED.
    Complete {
        /// Result JSON text.
        result_json: String,
    },
    /// Another attempt after `delay_ms` while retries remain, else dead-letter.
    Retry {
        /// Error message kept in `last_error`.
        message: String,
        /// Error class kept in `last_error_type`.
        error_type: String,
        /// Delay before the next attempt.
        delay_ms: i64,
        /// Traceback kept in the `errors_json` entry (may be empty).
        traceback: String,
    },
    /// Dead-letter now.
    Fail {
        /// Error message kept in `last_error`.
        message: String,
        /// Error class kept in `last_error_type`.
        error_type: String,
        /// Traceback kept in the `errors_json` entry (may be empty).
        traceback: String,
    },
    /// Status CANCELLED.
    Cancel {
        /// Why, kept in `last_error`.
        message: String,
    },
    /// Give the job back without charging the attempt.
    Release,
}

impl SettleAction {
    fn name(&self) -> &'static str {
        match self {
            SettleAction::Complete { .. } => "complete",
            SettleAction::Retry { .. } => "retry",
            SettleAction::Fail { .. } => "fail",
            SettleAction::Cancel { .. } => "cancel",
            SettleAction::Release => "release",
        }
    }
}

/// One settle for [`Store::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    /// Queue of the job.
    pub queue: String,
    /// Job id.
    pub job_id: String,
    /// Attempt from the claim (fence token).
    pub attempt: i64,
    /// Orchestrator instance id that claimed it.
    pub owner: String,
    /// What happened.
    pub action: SettleAction,
    /// Result TTL used when the job has none.
    pub default_result_ttl_ms: i64,
    /// How long a dead-lettered job is kept.
    pub dlq_retention_ms: i64,
}

/// A settle that was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// New `JobStatus` number.
    pub status: i32,
    /// When the job runs again (retry, release), else 0.
    pub run_at_ms: i64,
}

/// Answer of [`Store::recover_expired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Jobs put back in the due set.
    pub requeued: i64,
    /// Jobs dead-lettered because their retries were used up.
    pub dead_lettered: i64,
    /// Jobs ended CANCELLED because a cancel was requested.
    pub cancelled: i64,
}

/// Answer of [`Store::renew_lease`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Ids whose lease is no longer this owner's: stop those executions.
    pub lost: Vec<String>,
    /// Ids still this owner's whose cancellation was requested.
    pub cancel_requested: Vec<String>,
}

/// Answer of [`Store::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was waiting; it is now CANCELLED and will never run.
    Cancelled,
    /// An attempt is running: `cancel_requested` is set and its orchestrator told.
    Requested,
    /// The job had already finished with this `JobStatus` number; nothing written.
    Finished(i32),
    /// No such job.
    NotFound,
}

/// Answer of [`Store::dlq_requeue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requeued {
    /// Jobs moved back to their queue.
    pub requeued: i64,
    /// Dead-letter entries whose record had expired (removed).
    pub pruned: i64,
}

/// One dead-lettered job, as read by [`Store::dlq_list`].
#[derive(Debug, Clone, PartialEq)]
pub struct DlqEntry {
    /// Job id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// When it was dead-lettered (score in the dead-letter set), epoch ms.
    pub failed_at_ms: i64,
    /// The job record (every hash field).
    pub fields: std::collections::BTreeMap<String, String>,
}

/// The Redis contract: typed wrappers of the Lua scripts over one multiplexed,
/// auto-reconnecting connection.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    /// Where this store's keys and channels live (prefix and database).
    ns: Arc<Namespace>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Wraps an existing connection manager; keys and channels in `ns`.
    pub fn new(conn: ConnectionManager, ns: Namespace) -> Self {
        Self {
            conn,
            ns: Arc::new(ns),
        }
    }

    /// Connects to `client`'s Redis; keys and channels in `ns`.
    pub async fn connect(client: &redis::Client, ns: Namespace) -> Result<Self> {
        Ok(Self::new(ConnectionManager::new(client.clone()).await?, ns))
    }

    /// Where this store's keys and channels live.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// A handle on the connection for commands outside the scripts.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Writes a new job and schedules it (`enqueue.lua`), and registers its
    /// queue in `<prefix>:queues` as producers do.
    pub async fn enqueue(&self, req: &EnqueueRequest) -> Result<Enqueued> {
        let mut conn = self.conn.clone();
        let mut holder = None;
        let mut answer = None;
        for _ in 0..REGISTRY_ROUNDS {
            let reply: Value = enqueue_invocation(&self.ns, req, holder.as_deref())
                .invoke_async(&mut conn)
                .await
                .map_err(Error::from_redis)?;
            answer = self.registry_answer(req, reply, &mut holder)?;
            if answer.is_some() {
                break;
            }
        }
        let enqueued = answer.ok_or_else(registry_unsettled)?;
        let _: i64 = redis::cmd("SADD")
            .arg(self.ns.queues())
            .arg(&req.queue)
            .query_async(&mut conn)
            .await?;
        Ok(enqueued)
    }

    /// Producers' enqueue: `SADD <prefix>:queues <queue>` (when `register_queue`)
    /// and `EVALSHA enqueue.lua` in one pipeline, one round trip. The script
    /// is loaded again when Redis answers `NOSCRIPT`.
    pub async fn enqueue_pipelined(
        &self,
        req: &EnqueueRequest,
        register_queue: bool,
    ) -> Result<Enqueued> {
        let mut holder = None;
        for _ in 0..REGISTRY_ROUNDS {
            let inv = enqueue_invocation(&self.ns, req, holder.as_deref());
            let reply = self.run_enqueue(&inv, &req.queue, register_queue).await?;
            if let Some(enqueued) = self.registry_answer(req, reply, &mut holder)? {
                return Ok(enqueued);
            }
        }
        Err(registry_unsettled())
    }

    /// `enqueue.lua`'s answer, or None when it named the record holding a
    /// registered id in another queue (`{6, key, 0}`): `holder` is then that
    /// key, for the next round to pass.
    fn registry_answer(
        &self,
        req: &EnqueueRequest,
        reply: Value,
        holder: &mut Option<String>,
    ) -> Result<Option<Enqueued>> {
        match parse_enqueue_reply(reply)? {
            EnqueueReply::Done(enqueued) => Ok(Some(enqueued)),
            EnqueueReply::HeldElsewhere { status } => {
                let key = holder.as_deref().unwrap_or_default();
                let queue = self
                    .ns
                    .queue_of_job_key(key, &req.id)
                    .ok_or_else(|| protocol("enqueue", format!("the id registry names {key:?}")))?;
                Ok(Some(Enqueued::ExistsInQueue {
                    id: req.id.clone(),
                    queue: queue.to_owned(),
                    status,
                }))
            }
            EnqueueReply::Ask(key) => {
                if holder.as_deref() == Some(key.as_str()) {
                    return Err(protocol(
                        "enqueue",
                        "asked again for the record it was given",
                    ));
                }
                *holder = Some(key);
                Ok(None)
            }
        }
    }

    /// Producers' batch enqueue: `first` and the `more` jobs, pairs of
    /// (job id, params_json) that share every other field of `first`, in one
    /// `enqueue.lua` call (its batch form), preceded by `SADD <prefix>:queues
    /// <queue>` in the same pipeline when `register_queue`; one round trip,
    /// and the script is loaded again when Redis answers `NOSCRIPT`.
    ///
    /// One answer per job, in order (`first` first): [`Enqueued::Created`],
    /// or [`Enqueued::Exists`] when a job already had that id (nothing
    /// written for it). Each job is written atomically on its own; the batch
    /// as a whole is not. `first` must carry no rule ([`Error::InvalidArgument`],
    /// nothing sent): the script applies a rule to a lone job only.
    pub async fn enqueue_many(
        &self,
        first: &EnqueueRequest,
        more: &[(String, String)],
        register_queue: bool,
    ) -> Result<Vec<Enqueued>> {
        if first.rule.is_some() {
            return Err(Error::InvalidArgument(
                "enqueue_many takes plain jobs: a job with a rule is enqueued alone".to_owned(),
            ));
        }
        let mut inv = enqueue_invocation(&self.ns, first, None);
        if more.is_empty() {
            // Without pairs the script answers in its single-job form.
            let reply = self.run_enqueue(&inv, &first.queue, register_queue).await?;
            return match parse_enqueued(reply)? {
                e @ (Enqueued::Created { .. } | Enqueued::Exists { .. }) => Ok(vec![e]),
                other => Err(protocol(
                    "enqueue",
                    format!("{other:?} for a job without a rule"),
                )),
            };
        }
        for (id, params_json) in more {
            inv.arg(id).arg(params_json);
        }
        let reply = self.run_enqueue(&inv, &first.queue, register_queue).await?;
        parse_enqueued_many(&first.id, more, reply)
    }

    /// Runs an `enqueue.lua` invocation after `SADD <prefix>:queues <queue>` (when
    /// `register_queue`) in one pipeline; the script's raw reply.
    async fn run_enqueue(
        &self,
        inv: &redis::ScriptInvocation<'static>,
        queue: &str,
        register_queue: bool,
    ) -> Result<Value> {
        let mut conn = self.conn.clone();
        for round in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            if register_queue {
                pipe.cmd("SADD").arg(self.ns.queues()).arg(queue);
            }
            pipe.invoke_script(inv);
            let mut replies: Vec<RedisResult<Value>> = pipe.query_async(&mut conn).await?;
            let Some(reply) = replies.pop() else {
                return Err(protocol("enqueue", "empty pipeline reply"));
            };
            if round == 0 && is_noscript(&reply) {
                ENQUEUE.prepare_invoke().load_async(&mut conn).await?;
                continue;
            }
            for r in replies {
                r?;
            }
            return reply.map_err(Error::from_redis);
        }
        Err(protocol("enqueue", "NOSCRIPT after loading the script"))
    }

    /// Moves up to `max_jobs` due jobs of `queue` to ACTIVE under a lease
    /// owned by `owner` (`claim.lua`).
    pub async fn claim(
        &self,
        queue: &str,
        max_jobs: usize,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Claim> {
        let k = self.ns.queue(queue);
        let reply: Value = CLAIM
            .key(k.due())
            .key(k.active())
            .key(k.job_prefix())
            .key(k.debounce_prefix())
            .arg(max_jobs.max(1))
            .arg(owner)
            .arg(lease_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        parse_claim(reply)
    }

    /// Extends the leases `owner` holds on `(job id, attempt)` pairs of
    /// `queue` (`renew_lease.lua`). Returns the ids whose lease is lost and
    /// the ids whose cancellation was requested.
    pub async fn renew_lease(
        &self,
        queue: &str,
        owner: &str,
        lease_ms: i64,
        jobs: &[(String, i64)],
    ) -> Result<Renewed> {
        if jobs.is_empty() {
            return Ok(Renewed::default());
        }
        let k = self.ns.queue(queue);
        let mut inv = RENEW_LEASE.key(k.active());
        inv.key(k.job_prefix()).arg(owner).arg(lease_ms);
        for (id, attempt) in jobs {
            inv.arg(id).arg(attempt);
        }
        let reply: Value = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        parse_renewed(reply)
    }

    /// Applies a batch of settles in one round trip: one `settle.lua` call
    /// per queue and [`SETTLE_CALL_MAX`] settles, pipelined. The outer error
    /// is a failure of the whole round trip; each inner result tells how one
    /// settle went ([`Error::StaleFence`] when the fence rejected it).
    pub async fn settle(&self, batch: &[Settle]) -> Result<Vec<Result<Settled>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let calls = settle_calls(batch);
        let mut conn = self.conn.clone();
        let mut replies = run_settle_pipeline(&mut conn, &self.ns, batch, &calls).await?;
        // A pipeline cannot reload a script by itself: when Redis lost the
        // script cache (restart, SCRIPT FLUSH), load it and redo exactly the
        // calls that failed with NOSCRIPT; the others already ran.
        let missing: Vec<usize> = (0..calls.len())
            .filter(|&c| is_noscript(&replies[c]))
            .collect();
        if !missing.is_empty() {
            SETTLE.prepare_invoke().load_async(&mut conn).await?;
            let again: Vec<Vec<usize>> = missing.iter().map(|&c| calls[c].clone()).collect();
            let redo = run_settle_pipeline(&mut conn, &self.ns, batch, &again).await?;
            for (c, r) in missing.into_iter().zip(redo) {
                replies[c] = r;
            }
        }
        let mut results: Vec<Option<Result<Settled>>> = batch.iter().map(|_| None).collect();
        for (members, reply) in calls.iter().zip(replies) {
            for (i, r) in members
                .iter()
                .zip(split_settle_reply(batch, members, reply))
            {
                results[*i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(protocol("settle", "no reply for this settle"))))
            .collect())
    }

    /// Requeues or dead-letters up to `max_jobs` jobs of `queue` whose lease
    /// expired (`recover_expired.lua`).
    pub async fn recover_expired(
        &self,
        queue: &str,
        max_jobs: usize,
        dlq_retention_ms: i64,
        default_result_ttl_ms: i64,
    ) -> Result<Recovered> {
        let k = self.ns.queue(queue);
        let reply: Value = RECOVER_EXPIRED
            .key(k.active())
            .key(k.due())
            .key(k.dlq())
            .key(k.job_prefix())
            .arg(max_jobs.max(1))
            .arg(dlq_retention_ms)
            .arg(k.wake_channel())
            .arg(k.done_channel_prefix())
            .arg(default_result_ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        const S: &str = "recover_expired";
        let [requeued, dead, cancelled] = fixed::<3>(S, array(S, reply)?)?;
        Ok(Recovered {
            requeued: int(S, requeued)?,
            dead_lettered: int(S, dead)?,
            cancelled: int(S, cancelled)?,
        })
    }

    /// Cancels job `id` of `queue` (`cancel.lua`): at once when it waits,
    /// by request to its orchestrator when an attempt runs.
    pub async fn cancel(
        &self,
        queue: &str,
        id: &str,
        reason: &str,
        default_result_ttl_ms: i64,
    ) -> Result<CancelOutcome> {
        const S: &str = "cancel";
        let k = self.ns.queue(queue);
        let reply: Value = CANCEL
            .key(k.job(id))
            .key(k.due())
            .arg(id)
            .arg(reason)
            .arg(default_result_ttl_ms)
            .arg(k.done_channel(id))
            .arg(k.cancel_channel())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        let [flag, st] = fixed::<2>(S, array(S, reply)?)?;
        Ok(match int(S, flag)? {
            1 => CancelOutcome::Cancelled,
            2 => CancelOutcome::Requested,
            0 => CancelOutcome::Finished(status(S, st)?),
            -1 => CancelOutcome::NotFound,
            other => return Err(protocol(S, format!("unknown flag {other}"))),
        })
    }

    /// Moves dead-lettered jobs of `queue` back to it (`dlq_requeue.lua`):
    /// the given `ids`, or the oldest `limit` entries when `ids` is empty.
    pub async fn dlq_requeue(&self, queue: &str, ids: &[String], limit: usize) -> Result<Requeued> {
        const S: &str = "dlq_requeue";
        let k = self.ns.queue(queue);
        let mut inv = DLQ_REQUEUE.key(k.dlq());
        inv.key(k.due())
            .key(k.job_prefix())
            .arg(k.wake_channel())
            .arg(limit.max(1));
        for id in ids {
            inv.arg(id);
        }
        let reply: Value = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        let [requeued, pruned] = fixed::<2>(S, array(S, reply)?)?;
        Ok(Requeued {
            requeued: int(S, requeued)?,
            pruned: int(S, pruned)?,
        })
    }

    /// Deletes dead-lettered jobs of `queue` (`dlq_purge.lua`): the given
    /// `ids`, or the oldest `limit` entries when `ids` is empty. Returns the
    /// number of dead-letter entries removed.
    pub async fn dlq_purge(&self, queue: &str, ids: &[String], limit: usize) -> Result<i64> {
        let k = self.ns.queue(queue);
        let mut inv = DLQ_PURGE.key(k.dlq());
        inv.key(k.job_prefix()).arg(limit.max(1));
        for id in ids {
            inv.arg(id);
        }
        let reply: Value = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(Error::from_redis)?;
        int("dlq_purge", reply)
    }

    /// Number of entries in the dead-letter set of `queue`.
    pub async fn dlq_len(&self, queue: &str) -> Result<i64> {
        Ok(redis::cmd("ZCARD")
            .arg(self.ns.queue(queue).dlq())
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Up to `limit` dead-lettered jobs of `queue`, oldest first, with their
    /// records (`ZRANGE` + pipelined `HGETALL`). Entries whose record expired
    /// are skipped and pruned.
    pub async fn dlq_list(&self, queue: &str, limit: usize) -> Result<Vec<DlqEntry>> {
        let k = self.ns.queue(queue);
        let mut conn = self.conn.clone();
        let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(k.dlq())
            .arg(0)
            .arg(limit.max(1) as i64 - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.cmd("HGETALL").arg(k.job(id));
        }
        let records: Vec<std::collections::BTreeMap<String, String>> =
            pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for ((id, score), fields) in ids.into_iter().zip(records) {
            if fields.is_empty() {
                gone.push(id);
            } else {
                out.push(DlqEntry {
                    id,
                    queue: queue.to_owned(),
                    failed_at_ms: score as i64,
                    fields,
                });
            }
        }
        if !gone.is_empty() {
            let _: i64 = redis::cmd("ZREM")
                .arg(k.dlq())
                .arg(&gone)
                .query_async(&mut conn)
                .await?;
        }
        Ok(out)
    }

    /// Every field of job `id` in `queue`; `None` when there is no such record.
    pub async fn job(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>> {
        let fields: std::collections::BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.ns.queue(queue).job(id))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// The queue holding job `id`, looked up in every member of `<prefix>:queues`
    /// in one pipelined round trip; `None` when no queue has it.
    pub async fn find_job_queue(&self, id: &str) -> Result<Option<String>> {
        // A registered id names its record: one round trip, whatever the
        // number of queues.
        let held: Option<String> = redis::cmd("HGET")
            .arg(self.ns.ids())
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await?;
        if let Some(queue) = held
            .as_deref()
            .and_then(|k| self.ns.queue_of_job_key(k, id))
        {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(self.ns.queue(queue).job(id))
                .query_async(&mut self.conn.clone())
                .await?;
            if exists > 0 {
                return Ok(Some(queue.to_owned()));
            }
        }
        let queues = self.queues().await?;
        if queues.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.cmd("EXISTS").arg(self.ns.queue(q).job(id));
        }
        let found: Vec<i64> = pipe.query_async(&mut self.conn.clone()).await?;
        let mut hits: Vec<String> = queues
            .into_iter()
            .zip(found)
            .filter(|(_, n)| *n > 0)
            .map(|(q, _)| q)
            .collect();
        hits.sort();
        Ok(hits.into_iter().next())
    }

    /// One step of pruning the id registry (`<prefix>:ids`): reads up to
    /// `count` entries from `cursor` (HSCAN), and drops those whose record no
    /// longer exists (`forget_ids.lua`, which checks each again). Returns the
    /// next cursor (0 when a pass is complete) and the entries dropped.
    pub async fn forget_stale_ids(&self, cursor: u64, count: usize) -> Result<(u64, i64)> {
        let mut conn = self.conn.clone();
        let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg(self.ns.ids())
            .arg(cursor)
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut conn)
            .await?;
        let entries: Vec<(&String, &String)> =
            flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect();
        if entries.is_empty() {
            return Ok((next, 0));
        }
        let mut pipe = redis::pipe();
        for (_, key) in &entries {
            pipe.cmd("EXISTS").arg(*key);
        }
        let exists: Vec<i64> = pipe.query_async(&mut conn).await?;
        let stale: Vec<_> = entries
            .into_iter()
            .zip(exists)
            .filter(|(_, n)| *n == 0)
            .map(|(entry, _)| entry)
            .collect();
        if stale.is_empty() {
            return Ok((next, 0));
        }
        let mut inv = FORGET_IDS.key(self.ns.ids());
        for (id, key) in &stale {
            inv.key(*key).arg(*id);
        }
        let dropped: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(Error::from_redis)?;
        Ok((next, dropped))
    }

    /// Redis `TIME` in epoch ms.
    pub async fn time_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Members of `<prefix>:queues`.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.ns.queues())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(names)
    }
}

/// The `enqueue.lua` call for `req`: KEYS and ARGV exactly as the script's header lists them.
fn enqueue_invocation(
    ns: &Namespace,
    req: &EnqueueRequest,
    holder: Option<&str>,
) -> redis::ScriptInvocation<'static> {
    let k = ns.queue(&req.queue);
    let mut inv = ENQUEUE.key(k.job(&req.id));
    inv.key(k.due());
    let (rule, rule_key, window, max_wait) = match &req.rule {
        None => ("", "", 0, 0),
        Some(EnqueueRule::Unique { key, ttl_ms }) => {
            inv.key(k.unique(key)).key(k.job_prefix());
            ("unique", key.as_str(), *ttl_ms, 0)
        }
        Some(EnqueueRule::RateLimit { key, window_ms }) => {
            inv.key(k.rate_limit(key)).key(k.job_prefix());
            ("rate_limit", key.as_str(), *window_ms, 0)
        }
        Some(EnqueueRule::Debounce {
            key,
            delay_ms,
            max_wait_ms,
        }) => {
            inv.key(k.debounce(key)).key(k.job_prefix());
            ("debounce", key.as_str(), *delay_ms, *max_wait_ms)
        }
    };
    // The id registry follows the rule's keys (the script finds it at KEYS[3]
    // or KEYS[5]), then the record it named in an earlier round, if any.
    if req.registered_id {
        inv.key(ns.ids());
        if let Some(key) = holder {
            inv.key(key);
        }
    }
    inv.arg(&req.id)
        .arg(&req.function_name)
        .arg(&req.queue)
        .arg(&req.params_json)
        .arg(req.max_retries)
        .arg(req.job_timeout_ms)
        .arg(req.result_ttl_ms)
        .arg(req.defer_ms)
        .arg(req.run_at_ms)
        .arg(&req.trace_parent)
        .arg(&req.trace_state)
        .arg(req.max_params_bytes)
        .arg(k.wake_channel())
        .arg(rule)
        .arg(rule_key)
        .arg(window)
        .arg(max_wait);
    inv
}

/// Decodes an `enqueue.lua` reply. Public for the wire-format fuzzer (rrq-fuzz, fault row F30).
#[doc(hidden)]
/// `enqueue.lua`'s single-job answer, with the id registry's two replies.
enum EnqueueReply {
    /// An answer for the caller.
    Done(Enqueued),
    /// `{5, id, status}`: the record the caller passed holds the id.
    HeldElsewhere {
        /// Its `JobStatus` number.
        status: i32,
    },
    /// `{6, key, 0}`: the registry names this record; call again with it.
    Ask(String),
}

fn parse_enqueue_reply(reply: Value) -> Result<EnqueueReply> {
    let items = array("enqueue", reply)?;
    let [flag, second, third] = fixed::<3>("enqueue", items)?;
    match int("enqueue", flag.clone())? {
        5 => Ok(EnqueueReply::HeldElsewhere {
            status: status("enqueue", third)?,
        }),
        6 => Ok(EnqueueReply::Ask(string("enqueue", second)?)),
        _ => parse_enqueued(Value::Array(vec![flag, second, third])).map(EnqueueReply::Done),
    }
}

fn registry_unsettled() -> Error {
    protocol(
        "enqueue",
        format!("the id registry named another record in each of {REGISTRY_ROUNDS} rounds"),
    )
}

/// `enqueue.lua`'s single-job answer `{flag, id, value}` (flags 0 to 4).
pub fn parse_enqueued(reply: Value) -> Result<Enqueued> {
    let items = array("enqueue", reply)?;
    let [flag, id, third] = fixed::<3>("enqueue", items)?;
    let id = string("enqueue", id)?;
    Ok(match int("enqueue", flag)? {
        1 => Enqueued::Created {
            id,
            run_at_ms: int("enqueue", third)?,
        },
        0 => Enqueued::Exists {
            id,
            status: status("enqueue", third)?,
        },
        2 => Enqueued::UniqueHeld {
            id,
            status: status("enqueue", third)?,
        },
        3 => Enqueued::RateLimited,
        4 => Enqueued::Debounced {
            id,
            run_at_ms: int("enqueue", third)?,
        },
        other => return Err(protocol("enqueue", format!("unknown flag {other}"))),
    })
}

/// Decodes the batch form of an `enqueue.lua` reply, `{run_at_ms, s1, s2, ...}`,
/// for the jobs `first` and `more`: the script answers with integers only, so
/// the ids come from the call.
fn parse_enqueued_many(
    first: &str,
    more: &[(String, String)],
    reply: Value,
) -> Result<Vec<Enqueued>> {
    const S: &str = "enqueue";
    let mut items = array(S, reply)?.into_iter();
    let Some(run_at) = items.next() else {
        return Err(protocol(S, "empty reply"));
    };
    if items.len() != more.len() + 1 {
        return Err(protocol(
            S,
            format!("{} statuses for {} jobs", items.len(), more.len() + 1),
        ));
    }
    let run_at_ms = int(S, run_at)?;
    let ids = std::iter::once(first).chain(more.iter().map(|(id, _)| id.as_str()));
    ids.zip(items)
        .map(|(id, s)| {
            let id = id.to_owned();
            Ok(match status(S, s)? {
                0 => Enqueued::Created { id, run_at_ms },
                status => Enqueued::Exists { id, status },
            })
        })
        .collect()
}

/// Most settles in one `settle.lua` call: a call holds Redis for its whole
/// run (about 10 µs per settle), so a long batch is split to keep other
/// clients' latency low.
pub const SETTLE_CALL_MAX: usize = 128;

/// Splits a batch into script calls: indexes into `batch`, one list per call.
/// A call covers one queue (its keys share a hash slot) and one pair of
/// defaults, keeping the batch's order within each call.
fn settle_calls(batch: &[Settle]) -> Vec<Vec<usize>> {
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut open: HashMap<(&str, i64, i64), usize> = HashMap::new();
    for (i, s) in batch.iter().enumerate() {
        let group = (
            s.queue.as_str(),
            s.default_result_ttl_ms,
            s.dlq_retention_ms,
        );
        match open.get(&group) {
            Some(&c) if calls[c].len() < SETTLE_CALL_MAX => calls[c].push(i),
            _ => {
                open.insert(group, calls.len());
                calls.push(vec![i]);
            }
        }
    }
    calls
}

async fn run_settle_pipeline(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    batch: &[Settle],
    calls: &[Vec<usize>],
) -> Result<Vec<RedisResult<Value>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for members in calls {
        let first = &batch[members[0]];
        let k = ns.queue(&first.queue);
        let mut inv = SETTLE.key(k.due());
        inv.key(k.active())
            .key(k.dlq())
            .key(k.job_prefix())
            .arg(first.default_result_ttl_ms)
            .arg(first.dlq_retention_ms)
            .arg(k.wake_channel())
            .arg(k.done_channel_prefix());
        for &i in members {
            let s = &batch[i];
            let (text, error_type, delay_ms, traceback) = match &s.action {
                SettleAction::Complete { result_json } => (result_json.as_str(), "", 0, ""),
                SettleAction::Retry {
                    message,
                    error_type,
                    delay_ms,
                    traceback,
                } => (
                    message.as_str(),
                    error_type.as_str(),
                    (*delay_ms).max(0),
                    traceback.as_str(),
                ),
                SettleAction::Fail {
                    message,
                    error_type,
                    traceback,
                } => (message.as_str(), error_type.as_str(), 0, traceback.as_str()),
                SettleAction::Cancel { message } => (message.as_str(), "", 0, ""),
                SettleAction::Release => ("", "", 0, ""),
            };
            inv.arg(&s.job_id)
                .arg(s.attempt)
                .arg(&s.owner)
                .arg(s.action.name())
                .arg(text)
                .arg(error_type)
                .arg(delay_ms)
                .arg(traceback);
        }
        pipe.invoke_script(&inv);
    }
    Ok(pipe.query_async(conn).await?)
}

/// The results of one `settle.lua` call, one per member of the call: a failed
/// call fails each of its settles with the same error.
fn split_settle_reply(
    batch: &[Settle],
    members: &[usize],
    reply: RedisResult<Value>,
) -> Vec<Result<Settled>> {
    let values = match reply {
        Ok(v) => array("settle", v),
        Err(e) => {
            return members
                .iter()
                .map(|_| Err(Error::from_redis(e.clone())))
                .collect();
        }
    };
    let values = match values {
        Ok(values) if values.len() == 3 * members.len() => values,
        other => {
            let detail = match other {
                Ok(values) => format!("{} values for {} settles", values.len(), members.len()),
                Err(e) => e.to_string(),
            };
            return members
                .iter()
                .map(|_| Err(protocol("settle", detail.clone())))
                .collect();
        }
    };
    let mut values = values.into_iter();
    members
        .iter()
        .map(|&i| {
            let triple: Vec<Value> = values.by_ref().take(3).collect();
            parse_settle(&batch[i].job_id, Value::Array(triple))
        })
        .collect()
}

fn is_noscript(r: &RedisResult<Value>) -> bool {
    matches!(r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// Decodes one `settle.lua` reply of job `job_id`. Public for the wire-format fuzzer (rrq-fuzz, fault row F30).
#[doc(hidden)]
pub fn parse_settle(job_id: &str, v: Value) -> Result<Settled> {
    let [flag, a, b] = fixed::<3>("settle", array("settle", v)?)?;
    if int("settle", flag)? == 1 {
        Ok(Settled {
            status: status("settle", a)?,
            run_at_ms: int("settle", b)?,
        })
    } else {
        Err(Error::StaleFence {
            job_id: job_id.to_owned(),
            status: status("settle", a)?,
            attempt: int("settle", b)?,
        })
    }
}

/// Decodes a `renew_lease.lua` reply. Public for the wire-format fuzzer (rrq-fuzz, fault row F30).
#[doc(hidden)]
pub fn parse_renewed(reply: Value) -> Result<Renewed> {
    const S: &str = "renew_lease";
    let [lost, cancel] = fixed::<2>(S, array(S, reply)?)?;
    let ids = |v: Value| -> Result<Vec<String>> {
        match v {
            // Lua turns an empty table into an empty array or nil, depending on version.
            Value::Nil => Ok(Vec::new()),
            v => array(S, v)?.into_iter().map(|i| string(S, i)).collect(),
        }
    };
    Ok(Renewed {
        lost: ids(lost)?,
        cancel_requested: ids(cancel)?,
    })
}

/// Decodes a `claim.lua` reply. Public for the wire-format fuzzer (rrq-fuzz, fault row F30).
#[doc(hidden)]
pub fn parse_claim(reply: Value) -> Result<Claim> {
    const S: &str = "claim";
    let mut items = array(S, reply)?.into_iter();
    let (Some(now), Some(next)) = (items.next(), items.next()) else {
        return Err(protocol(S, "fewer than 2 items"));
    };
    let next = int(S, next)?;
    let mut jobs = Vec::new();
    for job in items {
        let [
            id,
            attempt,
            function_name,
            params_json,
            max_retries,
            timeout,
            enq,
            tp,
            ts,
            run_at,
        ] = fixed::<10>(S, array(S, job)?)?;
        jobs.push(ClaimedJob {
            id: string(S, id)?,
            attempt: int(S, attempt)?,
            function_name: string(S, function_name)?,
            params_json: string(S, params_json)?,
            max_retries: int(S, max_retries)?,
            job_timeout_ms: int(S, timeout)?,
            enqueued_at_ms: int(S, enq)?,
            trace_parent: string(S, tp)?,
            trace_state: string(S, ts)?,
            run_at_ms: int(S, run_at)?,
        });
    }
    Ok(Claim {
        now_ms: int(S, now)?,
        next_due_in_ms: (next >= 0).then_some(next),
        jobs,
    })
}

fn protocol(script: &'static str, detail: impl Into<String>) -> Error {
    Error::Protocol {
        script,
        detail: detail.into(),
    }
}

fn array(script: &'static str, v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(protocol(
            script,
            format!("expected an array, got {other:?}"),
        )),
    }
}

fn fixed<const N: usize>(script: &'static str, items: Vec<Value>) -> Result<[Value; N]> {
    let len = items.len();
    items
        .try_into()
        .map_err(|_| protocol(script, format!("expected {N} items, got {len}")))
}

fn string(script: &'static str, v: Value) -> Result<String> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|e| protocol(script, format!("string is not UTF-8: {e}")))
        }
        Value::SimpleString(s) => Ok(s),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(protocol(
            script,
            format!("expected a string, got {other:?}"),
        )),
    }
}

/// Lua hands numbers back either as integers or, where they came from a hash
/// field, as their decimal text; both are accepted.
fn int(script: &'static str, v: Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(n),
        Value::BulkString(b) => {
            let text = String::from_utf8_lossy(&b);
            if text.is_empty() {
                return Ok(0);
            }
            text.parse::<i64>()
                .or_else(|_| text.parse::<f64>().map(|f| f as i64))
                .map_err(|_| protocol(script, format!("expected an integer, got {text:?}")))
        }
        Value::Nil => Ok(0),
        other => Err(protocol(
            script,
            format!("expected an integer, got {other:?}"),
        )),
    }
}

fn status(script: &'static str, v: Value) -> Result<i32> {
    let n = int(script, v)?;
    i32::try_from(n).map_err(|_| protocol(script, format!("status {n} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn settle_of(queue: &str, id: &str) -> Settle {
        Settle {
            queue: queue.to_owned(),
            job_id: id.to_owned(),
            attempt: 1,
            owner: "o".to_owned(),
            action: SettleAction::Release,
            default_result_ttl_ms: 1,
            dlq_retention_ms: 2,
        }
    }

    #[test]
    fn settle_calls_group_by_queue_keep_order_and_split_long_runs() {
        let mut batch: Vec<Settle> = (0..SETTLE_CALL_MAX + 1)
            .map(|i| settle_of("a", &format!("a{i}")))
            .collect();
        batch.insert(1, settle_of("b", "b0"));
        batch.push(settle_of("b", "b1"));
        let calls = settle_calls(&batch);
        let ids = |call: &Vec<usize>| -> Vec<String> {
            call.iter().map(|&i| batch[i].job_id.clone()).collect()
        };
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].len(), SETTLE_CALL_MAX);
        assert_eq!(ids(&calls[0])[..2], ["a0".to_owned(), "a1".to_owned()]);
        assert_eq!(ids(&calls[1]), ["b0", "b1"]);
        assert_eq!(ids(&calls[2]), [format!("a{SETTLE_CALL_MAX}")]);
    }

    #[test]
    fn a_short_settle_reply_fails_every_member_of_its_call() {
        let batch = vec![settle_of("a", "x"), settle_of("a", "y")];
        let reply = Ok(Value::Array(vec![
            Value::Int(1),
            Value::Int(4),
            Value::Int(0),
        ]));
        let results = split_settle_reply(&batch, &[0, 1], reply);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(Error::Protocol { .. })))
        );
        let reply = Ok(Value::Array(vec![
            Value::Int(1),
            Value::Int(4),
            Value::Int(0),
            Value::Int(0),
            Value::Int(6),
            Value::Int(2),
        ]));
        let results = split_settle_reply(&batch, &[0, 1], reply);
        assert!(matches!(results[0], Ok(Settled { status: 4, .. })));
        assert!(matches!(
            results[1],
            Err(Error::StaleFence { attempt: 2, .. })
        ));
    }

    #[test]
    fn parses_a_claim_reply() {
        let reply = Value::Array(vec![
            Value::Int(1000),
            Value::Int(-1),
            Value::Array(vec![
                bulk("j1"),
                Value::Int(1),
                bulk("echo"),
                bulk("{}"),
                bulk("3"),
                bulk("0"),
                bulk("999"),
                bulk(""),
                bulk(""),
                bulk("1000"),
            ]),
        ]);
        let claim = parse_claim(reply).unwrap();
        assert_eq!(claim.now_ms, 1000);
        assert_eq!(claim.next_due_in_ms, None);
        assert_eq!(claim.jobs.len(), 1);
        assert_eq!(claim.jobs[0].attempt, 1);
        assert_eq!(claim.jobs[0].max_retries, 3);
        assert_eq!(claim.jobs[0].enqueued_at_ms, 999);
        assert_eq!(claim.jobs[0].run_at_ms, 1000);
    }

    #[test]
    fn parses_a_renew_reply() {
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("a")]),
            Value::Array(vec![bulk("b"), bulk("c")]),
        ]);
        let r = parse_renewed(reply).unwrap();
        assert_eq!(r.lost, vec!["a".to_owned()]);
        assert_eq!(r.cancel_requested, vec!["b".to_owned(), "c".to_owned()]);
        let empty = Value::Array(vec![Value::Array(vec![]), Value::Array(vec![])]);
        assert_eq!(parse_renewed(empty).unwrap(), Renewed::default());
    }

    #[test]
    fn parses_a_batch_enqueue_reply() {
        let more = vec![
            ("b".to_owned(), "{}".to_owned()),
            ("c".to_owned(), "{}".to_owned()),
        ];
        let reply = Value::Array(vec![
            Value::Int(5000),
            Value::Int(0),
            Value::Int(3),
            Value::Int(0),
        ]);
        assert_eq!(
            parse_enqueued_many("a", &more, reply).unwrap(),
            vec![
                Enqueued::Created {
                    id: "a".into(),
                    run_at_ms: 5000
                },
                Enqueued::Exists {
                    id: "b".into(),
                    status: 3
                },
                Enqueued::Created {
                    id: "c".into(),
                    run_at_ms: 5000
                },
            ]
        );
        // A status per job or the reply is not understood.
        for short in [
            Value::Array(vec![Value::Int(5000), Value::Int(0), Value::Int(0)]),
            Value::Array(vec![]),
            Value::Int(1),
        ] {
            assert!(matches!(
                parse_enqueued_many("a", &more, short),
                Err(Error::Protocol { .. })
            ));
        }
    }

    #[test]
    fn stale_settle_is_a_typed_error() {
        let reply = Value::Array(vec![Value::Int(0), Value::Int(4), Value::Int(2)]);
        match parse_settle("j", reply) {
            Err(Error::StaleFence {
                status, attempt, ..
            }) => {
                assert_eq!((status, attempt), (4, 2));
            }
            other => panic!("expected StaleFence, got {other:?}"),
        }
    }

    /// Every `RRQ_*` code a script can return must be listed in
    /// docs/redis-schema.md, the one source of these codes.
    #[test]
    fn every_lua_error_code_is_documented() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("../../docs/redis-schema.md")).unwrap();
        let mut found = 0;
        for entry in std::fs::read_dir(root.join("lua")).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue; // lua/lib: helpers, written into the scripts by make gen
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for code in error_codes(&text) {
                found += 1;
                assert!(
                    doc.contains(&format!("`{code}`")),
                    "{code} (in {}) is not listed in docs/redis-schema.md",
                    path.display()
                );
            }
        }
        assert!(found > 0, "no RRQ_ codes found in the Lua scripts");
    }

    fn error_codes(text: &str) -> Vec<String> {
        let mut codes = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("RRQ_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(tail.len());
            codes.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
        codes
    }

    #[test]
    fn error_code_scanner_finds_codes() {
        assert_eq!(
            error_codes("x 'RRQ_A_B msg' RRQ_C"),
            vec!["RRQ_A_B".to_owned(), "RRQ_C".to_owned()]
        );
    }
}
