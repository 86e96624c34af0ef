//! `settle.lua`: record how attempts ended, in pipelined batches per queue.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};
use crate::keys::Namespace;

static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/settle.lua")));

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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
