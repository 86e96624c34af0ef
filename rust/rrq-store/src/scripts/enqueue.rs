//! `enqueue.lua`: write a job (or a batch of plain ones) with its rule and its
//! id-registry entry.

use std::sync::LazyLock;

use redis::{RedisResult, Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};
use crate::keys::Namespace;

static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/enqueue.lua")));

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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
