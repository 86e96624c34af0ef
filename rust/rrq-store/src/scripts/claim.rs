//! `claim.lua`: move due jobs to ACTIVE under a lease.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::Store;
use super::reply::*;
use crate::error::{Error, Result};

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../lua/claim.lua")));

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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
