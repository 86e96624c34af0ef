//! Start-up check of Redis's eviction policy.
//!
//! A Redis that may evict keys can drop a job record that was acknowledged to
//! its producer, which breaks RRQ's guarantee. The orchestrator therefore
//! refuses to start against one (`maxmemory-policy` other than `noeviction`)
//! unless `allow_evicting_redis = true`. When `CONFIG GET` is not allowed (a
//! managed Redis, an ACL user without `@admin`) it warns and starts.

use tracing::{info, warn};

/// What to do about the eviction policy Redis reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `noeviction`: nothing to say.
    Safe,
    /// The policy may evict keys, but the operator allowed it: warn.
    AllowedEvicting(String),
    /// The policy may evict keys: refuse to start.
    Refuse(String),
    /// The policy could not be read: warn and start.
    Unknown(String),
}

/// Decides on the `maxmemory-policy` value (`Err` when it could not be read,
/// with the reason).
pub fn verdict(policy: Result<String, String>, allow_evicting: bool) -> Verdict {
    match policy {
        Err(why) => Verdict::Unknown(why),
        Ok(p) if p.eq_ignore_ascii_case("noeviction") => Verdict::Safe,
        Ok(p) if allow_evicting => Verdict::AllowedEvicting(p),
        Ok(p) => Verdict::Refuse(p),
    }
}

/// The message of a refusal, naming the policy and the override.
pub fn refusal_message(policy: &str) -> String {
    format!(
        "Redis maxmemory-policy is {policy:?}: Redis may evict job records and lose \
         acknowledged jobs. Set `maxmemory-policy noeviction` on the Redis server, or set \
         `allow_evicting_redis = true` under [rrq] in rrq.toml to start anyway"
    )
}

/// Reads `maxmemory-policy` with `CONFIG GET`.
pub async fn read_policy(conn: &mut redis::aio::ConnectionManager) -> Result<String, String> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match reply {
        Ok(pair) if pair.len() == 2 => Ok(pair[1].clone()),
        Ok(other) => Err(format!("unexpected CONFIG GET reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Applies the verdict: logs, and returns the refusal message when the
/// orchestrator must not start.
pub fn apply(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Safe => None,
        Verdict::AllowedEvicting(p) => {
            warn!(
                policy = %p,
                "Redis maxmemory-policy may evict job records; starting because allow_evicting_redis = true"
            );
            None
        }
        Verdict::Unknown(why) => {
            warn!(
                error = %why,
                "cannot read Redis maxmemory-policy (CONFIG GET refused?); make sure it is noeviction, or acknowledged jobs may be evicted"
            );
            None
        }
        Verdict::Refuse(p) => {
            info!(policy = %p, "refusing to start against an evicting Redis");
            Some(refusal_message(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noeviction_is_safe() {
        assert_eq!(verdict(Ok("noeviction".into()), false), Verdict::Safe);
        assert_eq!(verdict(Ok("noeviction".into()), true), Verdict::Safe);
    }

    #[test]
    fn evicting_policies_are_refused_unless_allowed() {
        for p in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert_eq!(verdict(Ok(p.into()), false), Verdict::Refuse(p.into()));
            assert_eq!(
                verdict(Ok(p.into()), true),
                Verdict::AllowedEvicting(p.into())
            );
        }
    }

    #[test]
    fn unreadable_policy_warns() {
        let v = verdict(Err("NOPERM".into()), false);
        assert_eq!(v, Verdict::Unknown("NOPERM".into()));
        assert_eq!(apply(&v), None);
    }

    #[test]
    fn refusal_names_policy_and_override() {
        let m = apply(&Verdict::Refuse("allkeys-lru".into())).unwrap();
        assert!(m.contains("allkeys-lru"));
        assert!(m.contains("allow_evicting_redis"));
    }
}
