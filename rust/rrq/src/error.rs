//! Errors of the orchestrator.

use crate::config::ConfigError;

/// What can stop the orchestrator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Redis could not be reached or configured.
    #[error("redis ({dsn}): {source}")]
    Redis {
        /// DSN without credentials.
        dsn: String,
        /// Why.
        source: redis::RedisError,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] rrq_store::Error),
    /// A runner listener could not be bound.
    #[error("cannot listen for runner {runner:?} on {addr}: {source}")]
    Bind {
        /// Runner name.
        runner: String,
        /// Address (`host:port` or `unix:/path`).
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Redis is set up in a way that can lose acknowledged jobs (exit status 2).
    #[error("{0}")]
    UnsafeRedis(String),
    /// Another I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Process exit status for this error: 2 for configuration errors (including an unsafe Redis), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::UnsafeRedis(_) => 2,
            _ => 1,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
