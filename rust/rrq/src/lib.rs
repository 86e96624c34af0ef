//! The RRQ orchestrator: claims due jobs from Redis and runs them on runners
//! connected over gRPC streams.
//!
//! Layout (one module per concern):
//! - [`cli`]: command line; [`config`]: `rrq.toml`; [`commands`]: `rrq
//!   check` and `rrq dlq ...`;
//! - [`cron`]: cron ticks; [`health`]: heartbeat; [`clock`]: Redis time;
//! - [`telemetry`]: OpenTelemetry spans; [`logging`]: log output, fields escaped;
//! - [`orchestrator`]: startup and shutdown order; [`shutdown`]: signals;
//! - [`server`]: `RunnerService.Connect` (hello, heartbeats, outcomes);
//! - [`session`] and [`dispatcher`]: sessions, credit, routing, timeouts,
//!   runner loss, drain;
//! - [`scheduler`]: the claim loop; [`discovery`]: wake-ups and queue discovery;
//! - [`settle`]: outcome → settle, batched writer; [`backoff`]: retry delays;
//! - [`lease`]: lease renewal; [`recovery`]: expired-lease sweep;
//! - [`supervisor`]: runner processes; [`socket_dir`]: their unix sockets;
//!   [`auth`]: which hellos may register; [`output`]: our stderr (log and
//!   forwarded runner output, lossy and bounded); [`error`]: [`Error`].

pub mod auth;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod cron;
pub mod discovery;
pub mod dispatcher;
pub mod epoch;
pub mod error;
pub use rrq_proto::error_text;
pub mod health;
pub mod lease;
pub mod logging;
pub mod orchestrator;
pub mod output;
pub mod recovery;
pub mod redis_policy;
pub mod scheduler;
pub mod server;
pub mod session;
pub mod settle;
pub mod shutdown;
pub mod socket_dir;
pub mod supervisor;
pub mod telemetry;

pub use error::{Error, Result};
