//! `dlq_purge.lua`: delete dead-lettered jobs.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static DLQ_PURGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/dlq_purge.lua")));

impl Store {
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
}
