//! `dlq_requeue.lua`: move dead-lettered jobs back to their queue; and the
//! plain reads of the dead-letter set.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static DLQ_REQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/dlq_requeue.lua")));

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

impl Store {
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
}
