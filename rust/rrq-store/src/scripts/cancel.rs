//! `cancel.lua`: cancel a waiting job, or ask for a running one to stop.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/cancel.lua")));

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

impl Store {
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
}
