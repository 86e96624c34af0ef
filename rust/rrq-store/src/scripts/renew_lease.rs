//! `renew_lease.lua`: extend the leases an orchestrator holds.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static RENEW_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/renew_lease.lua")));

/// Answer of [`Store::renew_lease`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Ids whose lease is no longer this owner's: stop those executions.
    pub lost: Vec<String>,
    /// Ids still this owner's whose cancellation was requested.
    pub cancel_requested: Vec<String>,
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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
