//! The `[rrq]` settings a producer reads (a subset of `rrq.toml`; unknown keys
//! are ignored here, the orchestrator validates them).

use std::path::Path;

use crate::error::{Error, Result};

/// Environment variable that overrides `redis_dsn`.
pub const REDIS_DSN_ENV: &str = "RRQ_REDIS_DSN";

/// The settings a producer uses, with the documented defaults. Its `Debug`
/// shows the DSN redacted ([`rrq_store::redact_dsn`]).
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Redis to connect to.
    pub redis_dsn: String,
    /// Queue used when an enqueue names none.
    pub default_queue_name: String,
    /// Retries used when an enqueue gives none.
    pub default_max_retries: i64,
    /// Largest params JSON accepted, in bytes.
    pub max_payload_bytes: usize,
    /// How long a cancelled job is kept when it has no result TTL, in seconds.
    pub default_result_ttl_seconds: f64,
    /// How long a unique key is held by default, in seconds.
    pub default_unique_job_lock_ttl_seconds: f64,
    /// First part of every Redis key and channel (`key_prefix`, default `rrq`).
    pub key_prefix: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("redis_dsn", &rrq_store::redact_dsn(&self.redis_dsn))
            .field("default_queue_name", &self.default_queue_name)
            .field("default_max_retries", &self.default_max_retries)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field(
                "default_result_ttl_seconds",
                &self.default_result_ttl_seconds,
            )
            .field(
                "default_unique_job_lock_ttl_seconds",
                &self.default_unique_job_lock_ttl_seconds,
            )
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            redis_dsn: "redis://localhost:6379/0".to_owned(),
            default_queue_name: "default".to_owned(),
            default_max_retries: 3,
            max_payload_bytes: 1024 * 1024,
            default_result_ttl_seconds: 86_400.0,
            default_unique_job_lock_ttl_seconds: 21_600.0,
            key_prefix: rrq_store::keys::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl ClientConfig {
    /// Defaults with `redis_dsn`.
    pub fn with_dsn(redis_dsn: impl Into<String>) -> Self {
        Self {
            redis_dsn: redis_dsn.into(),
            ..Self::default()
        }
    }

    /// Reads the `[rrq]` table of an `rrq.toml`; `RRQ_REDIS_DSN` overrides `redis_dsn`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Self::from_toml(&text)?;
        if let Ok(dsn) = std::env::var(REDIS_DSN_ENV)
            && !dsn.is_empty()
        {
            config.redis_dsn = dsn;
        }
        Ok(config)
    }

    /// Parses the `[rrq]` table of `text` (TOML); a missing table means defaults.
    pub fn from_toml(text: &str) -> Result<Self> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        let mut c = Self::default();
        let Some(table) = doc.get("rrq") else {
            return Ok(c);
        };
        let table = table
            .as_table()
            .ok_or_else(|| Error::Config("rrq must be a table".into()))?;
        let string = |key: &str, dflt: &str| -> Result<String> {
            match table.get(key) {
                None => Ok(dflt.to_owned()),
                Some(toml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(v) => Err(Error::Config(format!(
                    "rrq.{key} must be a non-empty string, got {v}"
                ))),
            }
        };
        let int = |key: &str, dflt: i64| -> Result<i64> {
            match table.get(key) {
                None => Ok(dflt),
                Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n),
                Some(v) => Err(Error::Config(format!(
                    "rrq.{key} must be a non-negative integer, got {v}"
                ))),
            }
        };
        let seconds = |key: &str, dflt: f64| -> Result<f64> {
            let n = match table.get(key) {
                None => return Ok(dflt),
                Some(toml::Value::Integer(n)) => *n as f64,
                Some(toml::Value::Float(f)) => *f,
                Some(v) => {
                    return Err(Error::Config(format!(
                        "rrq.{key} must be a finite number, got {v}"
                    )));
                }
            };
            if !n.is_finite() || n < 0.001 {
                return Err(Error::Config(format!(
                    "rrq.{key} must be at least 0.001 seconds, got {n}"
                )));
            }
            Ok(n)
        };
        c.redis_dsn = string("redis_dsn", &c.redis_dsn)?;
        c.default_queue_name = string("default_queue_name", &c.default_queue_name)?;
        c.default_max_retries = int("default_max_retries", c.default_max_retries)?;
        let payload = int("max_payload_bytes", c.max_payload_bytes as i64)?;
        if payload == 0 {
            return Err(Error::Config(
                "rrq.max_payload_bytes must be at least 1".into(),
            ));
        }
        c.max_payload_bytes = usize::try_from(payload).unwrap_or(usize::MAX);
        c.default_result_ttl_seconds =
            seconds("default_result_ttl_seconds", c.default_result_ttl_seconds)?;
        c.default_unique_job_lock_ttl_seconds = seconds(
            "default_unique_job_lock_ttl_seconds",
            c.default_unique_job_lock_ttl_seconds,
        )?;
        c.key_prefix = string("key_prefix", &c.key_prefix)?;
        rrq_store::Namespace::new(&c.key_prefix, 0)
            .map_err(|e| Error::Config(format!("rrq.{e}")))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        for dsn in [
            "redis://:hunter2@h:1/0",
            "unix://:hunter2@/run/redis.sock?db=0",
            "redis+unix:///run/redis.sock?pass=hunter2",
        ] {
            let shown = format!("{:?}", ClientConfig::with_dsn(dsn));
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn reads_the_producer_keys_and_ignores_the_rest() {
        let c = ClientConfig::from_toml(
            "[rrq]\nredis_dsn = \"redis://h:1/2\"\ndefault_queue_name = \"q\"\n\
             default_max_retries = 7\nmax_payload_bytes = 10\n\
             default_unique_job_lock_ttl_seconds = 1.5\nunknown = 1\n[rrq.runners.python]\ncmd = [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(c.redis_dsn, "redis://h:1/2");
        assert_eq!(c.default_queue_name, "q");
        assert_eq!(c.default_max_retries, 7);
        assert_eq!(c.max_payload_bytes, 10);
        assert_eq!(c.default_unique_job_lock_ttl_seconds, 1.5);
        assert_eq!(
            ClientConfig::from_toml("").unwrap(),
            ClientConfig::default()
        );
        assert!(ClientConfig::from_toml("[rrq]\ndefault_max_retries = -1\n").is_err());
        assert!(ClientConfig::from_toml("[rrq]\nmax_payload_bytes = 0\n").is_err());
        assert_eq!(c.key_prefix, "rrq");
        let p = ClientConfig::from_toml("[rrq]\nkey_prefix = \"app:b\"\n").unwrap();
        assert_eq!(p.key_prefix, "app:b");
        let err = ClientConfig::from_toml("[rrq]\nkey_prefix = \"a{b}\"\n").unwrap_err();
        assert!(err.to_string().contains("rrq.key_prefix"), "{err}");
    }
}
