//! `forget_ids.lua`: prune the id registry of entries whose record is gone.

use std::sync::LazyLock;

use redis::Script;

use super::Store;
use crate::error::{Error, Result};

static FORGET_IDS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/forget_ids.lua")));

impl Store {
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
}
