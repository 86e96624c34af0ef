//! One typed async function per Lua script, in one module per script
//! (`scripts/enqueue.rs` wraps `lua/enqueue.lua`, and so on).
//!
//! The scripts live in `../lua/` (their one home) and are embedded here. They
//! run with `EVALSHA`; `redis::Script` loads them again when Redis answers
//! `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

use std::sync::Arc;

use redis::aio::ConnectionManager;

use crate::error::Result;
use crate::keys::Namespace;

mod cancel;
mod claim;
mod dlq_purge;
mod dlq_requeue;
mod enqueue;
mod forget_ids;
mod recover_expired;
mod renew_lease;
mod reply;
mod settle;

pub use cancel::CancelOutcome;
pub use claim::{Claim, ClaimedJob, parse_claim};
pub use dlq_requeue::{DlqEntry, Requeued};
pub use enqueue::{EnqueueRequest, EnqueueRule, Enqueued, parse_enqueued};
pub use recover_expired::Recovered;
pub use renew_lease::{Renewed, parse_renewed};
pub use settle::{SETTLE_CALL_MAX, Settle, SettleAction, Settled, parse_settle};

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

#[cfg(test)]
mod tests {

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
