//! Start-up checks of the Redis configuration that RRQ's guarantee rests on.
//!
//! - **Eviction.** A Redis that may evict keys can drop a job record that was
//!   acknowledged to its producer. The orchestrator refuses to start against
//!   one (`maxmemory-policy` other than `noeviction`) unless
//!   `allow_evicting_redis = true`.
//! - **Persistence.** A Redis that keeps nothing on disk (`appendonly no` and
//!   no `save` schedule) loses every job when it restarts. The orchestrator
//!   refuses it unless `allow_ephemeral_redis = true`. Snapshots alone
//!   (`save` without AOF) start with a warning: a crash loses what was
//!   acknowledged since the last snapshot, but a stock Redis install runs
//!   like this and refusing it would turn the quick start into an error.
//!
//! When `CONFIG GET` is not allowed (a managed Redis, an ACL user without
//! `@admin`) each check warns and starts.

use tracing::{info, warn};

/// One setting the checks read, with the `rrq.toml` key that overrides a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// `maxmemory-policy` may evict keys.
    Eviction,
    /// Neither AOF nor snapshots: a restart empties Redis.
    NoPersistence,
}

impl Risk {
    fn override_key(self) -> &'static str {
        match self {
            Risk::Eviction => "allow_evicting_redis",
            Risk::NoPersistence => "allow_ephemeral_redis",
        }
    }

    fn danger(self, setting: &str) -> String {
        match self {
            Risk::Eviction => format!(
                "Redis maxmemory-policy is {setting:?}: Redis may evict job records and lose \
                 acknowledged jobs. Set `maxmemory-policy noeviction` on the Redis server"
            ),
            Risk::NoPersistence => format!(
                "Redis keeps nothing on disk ({setting}): a Redis restart loses every job. \
                 Turn on `appendonly yes` (with `appendfsync everysec`) on the Redis server"
            ),
        }
    }
}

/// What to do about what Redis reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say.
    Safe,
    /// Acceptable but weaker than the guarantee: warn with this message.
    Warn(String),
    /// Risky, and the operator allowed it: warn.
    Allowed(Risk, String),
    /// Risky: refuse to start.
    Refuse(Risk, String),
    /// The setting could not be read: warn and start.
    Unknown(&'static str, String),
}

/// Decides on the `maxmemory-policy` value (`Err` when it could not be read,
/// with the reason).
pub fn verdict(policy: Result<String, String>, allow_evicting: bool) -> Verdict {
    match policy {
        Err(why) => Verdict::Unknown("maxmemory-policy", why),
        Ok(p) if p.eq_ignore_ascii_case("noeviction") => Verdict::Safe,
        Ok(p) if allow_evicting => Verdict::Allowed(Risk::Eviction, p),
        Ok(p) => Verdict::Refuse(Risk::Eviction, p),
    }
}

/// Decides on the `appendonly` and `save` values.
pub fn persistence_verdict(
    settings: Result<(String, String), String>,
    allow_ephemeral: bool,
) -> Verdict {
    match settings {
        Err(why) => Verdict::Unknown("appendonly/save", why),
        Ok((aof, _)) if aof.eq_ignore_ascii_case("yes") => Verdict::Safe,
        Ok((_, save)) if !save.trim().is_empty() => Verdict::Warn(format!(
            "Redis persists by snapshots only (appendonly no, save {save:?}): a Redis crash \
             loses the jobs acknowledged since the last snapshot; `appendonly yes` closes that window"
        )),
        Ok(_) => {
            let setting = "appendonly no, save \"\"".to_owned();
            if allow_ephemeral {
                Verdict::Allowed(Risk::NoPersistence, setting)
            } else {
                Verdict::Refuse(Risk::NoPersistence, setting)
            }
        }
    }
}

/// The message of a refusal, naming the setting and the override.
pub fn refusal_message(risk: Risk, setting: &str) -> String {
    format!(
        "{}, or set `{} = true` under [rrq] in rrq.toml to start anyway",
        risk.danger(setting),
        risk.override_key()
    )
}

async fn config_get(
    conn: &mut redis::aio::ConnectionManager,
    name: &str,
) -> Result<String, String> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await;
    match reply {
        Ok(pair) if pair.len() == 2 => Ok(pair[1].clone()),
        Ok(other) => Err(format!("unexpected CONFIG GET reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads `maxmemory-policy` with `CONFIG GET`.
pub async fn read_policy(conn: &mut redis::aio::ConnectionManager) -> Result<String, String> {
    config_get(conn, "maxmemory-policy").await
}

/// Reads `appendonly` and `save` with `CONFIG GET`.
pub async fn read_persistence(
    conn: &mut redis::aio::ConnectionManager,
) -> Result<(String, String), String> {
    Ok((
        config_get(conn, "appendonly").await?,
        config_get(conn, "save").await?,
    ))
}

/// Applies the verdict: logs, and returns the refusal message when the
/// orchestrator must not start.
pub fn apply(v: &Verdict) -> Option<String> {
    match v {
        Verdict::Safe => None,
        Verdict::Warn(message) => {
            warn!("{message}");
            None
        }
        Verdict::Allowed(risk, setting) => {
            warn!(
                "{}; starting because {} = true",
                risk.danger(setting),
                risk.override_key()
            );
            None
        }
        Verdict::Unknown(setting, why) => {
            warn!(
                error = %why,
                "cannot read Redis {setting} (CONFIG GET refused?); RRQ's guarantee needs \
                 maxmemory-policy noeviction and appendonly yes"
            );
            None
        }
        Verdict::Refuse(risk, setting) => {
            info!(setting = %setting, "refusing to start against this Redis");
            Some(refusal_message(*risk, setting))
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
            assert_eq!(
                verdict(Ok(p.into()), false),
                Verdict::Refuse(Risk::Eviction, p.into())
            );
            assert_eq!(
                verdict(Ok(p.into()), true),
                Verdict::Allowed(Risk::Eviction, p.into())
            );
        }
    }

    #[test]
    fn unreadable_policy_warns() {
        let v = verdict(Err("NOPERM".into()), false);
        assert_eq!(v, Verdict::Unknown("maxmemory-policy", "NOPERM".into()));
        assert_eq!(apply(&v), None);
    }

    #[test]
    fn refusal_names_policy_and_override() {
        let m = apply(&Verdict::Refuse(Risk::Eviction, "allkeys-lru".into())).unwrap();
        assert!(m.contains("allkeys-lru"));
        assert!(m.contains("allow_evicting_redis"));
    }

    #[test]
    fn aof_is_safe_whatever_the_snapshots() {
        for save in ["", "3600 1"] {
            let v = persistence_verdict(Ok(("yes".into(), save.into())), false);
            assert_eq!(v, Verdict::Safe);
        }
    }

    #[test]
    fn snapshots_only_warn() {
        let v = persistence_verdict(Ok(("no".into(), "3600 1 300 100".into())), false);
        assert!(matches!(v, Verdict::Warn(ref m) if m.contains("snapshots only")));
        assert_eq!(apply(&v), None);
    }

    #[test]
    fn no_persistence_is_refused_unless_allowed() {
        let refused = persistence_verdict(Ok(("no".into(), String::new())), false);
        let m = apply(&refused).expect("refused");
        assert!(m.contains("allow_ephemeral_redis"), "{m}");
        assert!(m.contains("appendonly yes"), "{m}");
        let allowed = persistence_verdict(Ok(("no".into(), String::new())), true);
        assert!(matches!(allowed, Verdict::Allowed(Risk::NoPersistence, _)));
        assert_eq!(apply(&allowed), None);
    }

    #[test]
    fn unreadable_persistence_warns() {
        let v = persistence_verdict(Err("NOPERM".into()), false);
        assert_eq!(apply(&v), None);
    }
}
