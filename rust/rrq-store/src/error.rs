//! Errors of the store.

/// What can go wrong talking to Redis through the RRQ contract.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `params_json` exceeds `max_payload_bytes` (`RRQ_PAYLOAD_TOO_LARGE`).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// `params_json` is not a JSON object (`RRQ_INVALID_PARAMS`).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// A script argument is out of range (`RRQ_INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A settle was rejected by the fence: the job is no longer ACTIVE under
    /// this attempt and owner. Nothing was written.
    #[error("stale fence for job {job_id}: job is now status {status} at attempt {attempt}")]
    StaleFence {
        /// The job the settle was for.
        job_id: String,
        /// Its current `JobStatus` number (0 when the record is gone).
        status: i32,
        /// Its current attempt.
        attempt: i64,
    },
    /// A script answered with a shape this crate does not understand: the Lua
    /// files and this crate disagree.
    #[error("unexpected reply from script {script}: {detail}")]
    Protocol {
        /// Script name.
        script: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Redis could not be reached or answered with an error.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl Error {
    /// True when repeating the call later may succeed (connection trouble),
    /// false when the call itself is wrong or was rejected for good.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => is_retryable_redis(e),
            _ => false,
        }
    }

    /// Maps an error reply whose first word is an `RRQ_*` code to its variant.
    pub(crate) fn from_redis(err: redis::RedisError) -> Self {
        let message = err.detail().unwrap_or_default().to_owned();
        match err.code() {
            Some("RRQ_PAYLOAD_TOO_LARGE") => Error::PayloadTooLarge(message),
            Some("RRQ_INVALID_PARAMS") => Error::InvalidParams(message),
            Some("RRQ_INVALID_ARGUMENT") => Error::InvalidArgument(message),
            _ => Error::Redis(err),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// True when a Redis client error is connection trouble or a timeout, so the
/// same call may succeed later. Shared by every crate that classifies errors.
pub fn is_retryable_redis(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}
