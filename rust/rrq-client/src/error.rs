//! Errors of the producer client.

use crate::job::JobStatus;

/// What can go wrong enqueueing or reading jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option (or argument) has an invalid value; nothing was written.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name, as in the Python client (`max_retries`, ...).
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The params are not a JSON object; nothing was written.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The params JSON is larger than `max_payload_bytes`; nothing was written.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// A job with the explicit id already exists; nothing was written.
    #[error("job {job_id:?} already exists in queue {queue_name:?} ({status})")]
    DuplicateJob {
        /// The id.
        job_id: String,
        /// The existing job's status.
        status: JobStatus,
        /// The queue it was found in.
        queue_name: String,
    },
    /// No job with this id exists (never enqueued, or its record expired).
    #[error("job {0:?} not found")]
    NotFound(String),
    /// `wait_for_result` gave up before the job finished.
    #[error("timed out waiting for job {0:?}")]
    Timeout(String),
    /// The configuration file or a setting is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The store rejected a call or answered unexpectedly.
    #[error(transparent)]
    Store(rrq_store::Error),
    /// Redis could not be reached or answered with an error.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl Error {
    /// True when repeating the call later may succeed (connection trouble,
    /// a timeout); false when the call itself was wrong or rejected for good.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            Error::Store(e) => e.is_retryable(),
            Error::Redis(e) => rrq_store::is_retryable_redis(e),
            _ => false,
        }
    }

    pub(crate) fn option(option: &str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            option: option.to_owned(),
            reason: reason.into(),
        }
    }
}

impl From<rrq_store::Error> for Error {
    fn from(err: rrq_store::Error) -> Self {
        match err {
            rrq_store::Error::PayloadTooLarge(m) => Error::PayloadTooLarge(m),
            rrq_store::Error::InvalidParams(m) => Error::InvalidParams(m),
            rrq_store::Error::Redis(e) => Error::Redis(e),
            other => Error::Store(other),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
