//! `recover_expired.lua`: give back jobs whose lease expired.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static RECOVER_EXPIRED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/recover_expired.lua")));

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

impl Store {
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
}
