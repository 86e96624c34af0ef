//! Errors of the runner runtime.

/// Why a [`Runner`](crate::Runner) could not run or stopped with a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The environment or the builder gave an unusable setting (missing
    /// address, bad max_in_flight). Fix the configuration; retrying is useless.
    #[error("runner configuration: {0}")]
    Config(String),
    /// The orchestrator address is not a valid URI.
    #[error("invalid orchestrator address {addr:?}: {source}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it is invalid.
        #[source]
        source: tonic::transport::Error,
    },
    /// The orchestrator rejected the hello (unknown runner name, unsupported
    /// protocol version, malformed hello).
    #[error("the orchestrator rejected the hello: {0}")]
    Rejected(tonic::Status),
    /// The orchestrator could not be reached (a spawned runner gives up after
    /// a few attempts; its orchestrator starts a new process).
    #[error("orchestrator at {addr} unreachable after {attempts} attempt(s)")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// The orchestrator broke the protocol (e.g. its first message was not a hello_ack).
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// True when running again later may succeed (the orchestrator was
    /// unreachable), false for configuration errors and rejections.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
