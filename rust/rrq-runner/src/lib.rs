//! The Rust runner runtime of RRQ.
//!
//! A runner process dials the orchestrator, opens one
//! `rrq.v1.RunnerService/Connect` stream (see `docs/protocol.md`) and runs the
//! handlers of its [`Registry`] as tokio tasks, up to `max_in_flight` at once.
//!
//! Layout:
//! - [`handler`]: [`Registry`], [`ExecutionRequest`] (what a handler gets) and
//!   [`HandlerError`] (how a handler steers its job: retry, fatal, failed);
//! - [`runner`]: [`Runner`], the builder that connects and serves, reconnecting
//!   external runners and exiting spawned ones when their stream ends;
//! - `session`: one connected stream: executes, cancels, batched outcomes,
//!   heartbeats (private);
//! - `strict`: JSON encoding that rejects NaN and infinities (private);
//! - [`error`]: the crate's [`Error`], why a runner could not run.
//!
//! ```no_run
//! use rrq_runner::{HandlerError, Registry, Runner};
//!
//! # async fn demo() -> Result<(), rrq_runner::Error> {
//! let mut registry = Registry::new();
//! registry.register("echo", |req, _cancel| async move { Ok(req.params) });
//! registry.register("fail", |_req, _cancel| async move {
//!     Err(HandlerError::fatal("never works"))
//! });
//! Runner::new(registry).run_from_env().await
//! # }
//! ```

pub mod error;
pub mod handler;
pub mod runner;
mod session;
mod strict;

pub use error::{Error, Result};
pub use handler::{ExecutionRequest, HandlerError, HandlerFuture, Registry};
pub use runner::Runner;
pub use tokio_util::sync::CancellationToken;

/// Protocol version this runtime speaks (`RunnerHello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// `host:port` of the orchestrator's runner listener.
pub const ADDR_ENV: &str = "RRQ_ORCHESTRATOR_ADDR";
/// Runner name (`[rrq.runners.<name>]`).
pub const NAME_ENV: &str = "RRQ_RUNNER_NAME";
/// The secret the hello presents: the spawn token the orchestrator sets for
/// a process it spawned, or an external runner's configured token (the value
/// of the orchestrator's `rrq.runners.<name>.token_env` variable).
pub const TOKEN_ENV: &str = "RRQ_RUNNER_TOKEN";
/// `1` in the processes the orchestrator spawned: they exit when their
/// stream ends instead of reconnecting.
pub const SPAWNED_ENV: &str = "RRQ_RUNNER_SPAWNED";
/// Executions this process accepts at once.
pub const MAX_IN_FLIGHT_ENV: &str = "RRQ_RUNNER_MAX_IN_FLIGHT";
