//! Handlers: what they receive ([`ExecutionRequest`]), how they steer their
//! job ([`HandlerError`]) and where they are registered ([`Registry`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// One attempt of one job, as passed to a handler.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ExecutionRequest {
    /// Id of the job.
    pub job_id: String,
    /// Handler name (without any `runner#` prefix).
    pub function_name: String,
    /// The job's params; always a JSON object.
    pub params: Value,
    /// Attempt number, starting at 1.
    pub attempt: i64,
    /// Queue the job came from.
    pub queue_name: String,
    /// When the job was enqueued (Redis clock).
    pub enqueued_at: SystemTime,
    /// When the orchestrator cancels this attempt (Redis clock).
    pub deadline: SystemTime,
    /// W3C traceparent of the producer, empty when none.
    pub trace_parent: String,
    /// W3C tracestate that goes with `trace_parent`.
    pub trace_state: String,
    /// Retries the job allows after its first attempt.
    pub max_retries: i64,
}

impl ExecutionRequest {
    /// The params as a JSON object map.
    pub fn params_map(&self) -> &serde_json::Map<String, Value> {
        static EMPTY: std::sync::LazyLock<serde_json::Map<String, Value>> =
            std::sync::LazyLock::new(serde_json::Map::new);
        self.params.as_object().unwrap_or(&EMPTY)
    }

    /// The 32-hex trace id of `trace_parent` (`00-<trace id>-<span id>-<flags>`),
    /// or `None` when there is no valid traceparent.
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.trace_parent.split('-');
        let (_version, trace_id) = (parts.next()?, parts.next()?);
        let valid = trace_id.len() == 32
            && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
            && trace_id.bytes().any(|b| b != b'0');
        valid.then_some(trace_id)
    }
}

/// How a handler ends its attempt other than by returning a value. Each
/// variant maps to exactly one protocol outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// Ask for another attempt (`retry` outcome) after `delay`, or after the
    /// orchestrator's backoff when `None`. Counts against `max_retries`.
    #[error("retry requested: {message}")]
    Retry {
        /// Delay before the next attempt.
        delay: Option<Duration>,
        /// Reason, kept as the attempt's error.
        message: String,
    },
    /// Fail the job at once, without retrying (`FAILURE_KIND_FATAL`).
    #[error("fatal: {0}")]
    Fatal(String),
    /// The attempt failed (`FAILURE_KIND_HANDLER_ERROR`); the job retries with
    /// backoff while retries remain.
    #[error("{error_type}: {message}")]
    Failed {
        /// Error class, e.g. `"IoError"`.
        error_type: String,
        /// Human-readable message.
        message: String,
    },
    /// The result could not be encoded as JSON (`FAILURE_KIND_RESULT_NOT_SERIALIZABLE`).
    #[error("result not serializable: {0}")]
    NotSerializable(String),
    /// The handler stopped because its cancellation token fired. After a
    /// cancel every outcome becomes `cancelled`/`timed_out` anyway; returned
    /// without a cancel it counts as a handler error of type `Cancelled`.
    #[error("cancelled")]
    Cancelled,
}

impl HandlerError {
    /// [`HandlerError::Retry`] after `delay` (`None`: the orchestrator's backoff).
    /// A delay over 3,650 days (`MAX_DURATION_MS`) fails the attempt as
    /// `InvalidRetryDelay` instead.
    pub fn retry(delay: Option<Duration>, message: impl Into<String>) -> Self {
        HandlerError::Retry {
            delay,
            message: message.into(),
        }
    }

    /// [`HandlerError::Fatal`].
    pub fn fatal(message: impl Into<String>) -> Self {
        HandlerError::Fatal(message.into())
    }

    /// [`HandlerError::Failed`].
    pub fn failed(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError::Failed {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// A [`HandlerError::Failed`] from any error, typed by its Rust type name
    /// (last path segment, e.g. `"Error"` for `std::io::Error`).
    pub fn from_error<E: std::error::Error + ?Sized>(err: &E) -> Self {
        let full = std::any::type_name::<E>();
        let short = full
            .split('<')
            .next()
            .and_then(|p| p.rsplit("::").next())
            .unwrap_or(full);
        HandlerError::failed(short, err.to_string())
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(err: std::io::Error) -> Self {
        HandlerError::failed("IoError", err.to_string())
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        HandlerError::failed("JsonError", err.to_string())
    }
}

/// The future a registered handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send>>;

/// A registered handler, type-erased.
pub(crate) type BoxHandler =
    Arc<dyn Fn(ExecutionRequest, CancellationToken) -> HandlerFuture + Send + Sync>;

/// Handlers by name.
///
/// A handler is an async function of the request and a [`CancellationToken`]
/// that fires when the orchestrator cancels the attempt (timeout, user
/// cancel, shutdown, lost lease). A handler that ignores the token keeps its
/// slot until it returns or the orchestrator kills the process.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, BoxHandler>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` as `name`, replacing any handler of that name.
    ///
    /// ```
    /// # let mut registry = rrq_runner::Registry::new();
    /// registry.register("echo", |req, _cancel| async move { Ok(req.params) });
    /// ```
    pub fn register<F, Fut>(&mut self, name: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(ExecutionRequest, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        let handler: BoxHandler = Arc::new(move |req, cancel| Box::pin(handler(req, cancel)));
        self.handlers.insert(name.into(), handler);
        self
    }

    /// Registers a handler returning any `T: Serialize`. A value JSON cannot
    /// hold (NaN or an infinity, a map with non-string keys, a failing
    /// `Serialize` impl) fails the attempt with `RESULT_NOT_SERIALIZABLE`.
    pub fn register_typed<F, Fut, T>(&mut self, name: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(ExecutionRequest, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, HandlerError>> + Send + 'static,
        T: Serialize + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register(name, move |req, cancel| {
            let fut = handler(req, cancel);
            async move {
                let value = fut.await?;
                crate::strict::to_value(&value)
                    .map_err(|e| HandlerError::NotSerializable(e.to_string()))
            }
        })
    }

    /// Registered handler names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// Number of registered handlers.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// True when no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&BoxHandler> {
        self.handlers.get(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(trace_parent: &str) -> ExecutionRequest {
        ExecutionRequest {
            job_id: "j".into(),
            function_name: "f".into(),
            params: serde_json::json!({}),
            attempt: 1,
            queue_name: "q".into(),
            enqueued_at: SystemTime::UNIX_EPOCH,
            deadline: SystemTime::UNIX_EPOCH,
            trace_parent: trace_parent.into(),
            trace_state: String::new(),
            max_retries: 0,
        }
    }

    #[test]
    fn trace_id_is_parsed_from_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            request(tp).trace_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(request("").trace_id(), None);
        assert_eq!(
            request("00-00000000000000000000000000000000-00f067aa0ba902b7-01").trace_id(),
            None
        );
    }

    #[tokio::test]
    async fn typed_handlers_reject_nan() {
        #[derive(Serialize)]
        struct Bad {
            x: f64,
        }
        let mut r = Registry::new();
        r.register_typed("bad", |_req, _c| async move { Ok(Bad { x: f64::NAN }) });
        r.register_typed("good", |_req, _c| async move { Ok(Bad { x: 1.5 }) });
        let bad = r.get("bad").unwrap()(request(""), CancellationToken::new()).await;
        assert!(
            matches!(bad, Err(HandlerError::NotSerializable(_))),
            "{bad:?}"
        );
        let good = r.get("good").unwrap()(request(""), CancellationToken::new()).await;
        assert_eq!(good.unwrap(), serde_json::json!({"x": 1.5}));
    }
}
