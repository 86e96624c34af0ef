//! The Rust producer of RRQ: enqueue jobs, read their status, wait for their
//! result, cancel them. Same contract as the Python `RRQClient`: every option
//! is validated before anything is written, ids are ULIDs, and each enqueue
//! is one pipeline (`SADD rrq:queues` + `EVALSHA enqueue.lua`);
//! [`Client::enqueue_many`] writes [`ENQUEUE_MANY_CHUNK`] jobs per pipeline.
//!
//! Layout:
//! - [`client`]: [`Client`] and the enqueue options ([`EnqueueOptions`],
//!   [`RateLimit`], [`Debounce`]);
//! - [`config`]: [`ClientConfig`], the `[rrq]` keys a producer reads from `rrq.toml`;
//! - [`job`]: [`JobResult`], [`JobStatus`], [`AttemptError`]: a job record as read back;
//! - [`error`]: the crate's [`Error`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), rrq_client::Error> {
//! use rrq_client::{Client, EnqueueOptions};
//! let client = Client::connect("redis://127.0.0.1:6379/0").await?;
//! let id = client
//!     .enqueue("echo", EnqueueOptions::with_params(serde_json::json!({"x": 1})))
//!     .await?;
//! let done = client.wait_for_result(&id, None).await?;
//! println!("{:?}", done.result);
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod error;
pub mod job;

pub use client::{Client, Debounce, ENQUEUE_MANY_CHUNK, EnqueueOptions, RateLimit, ulid};
pub use config::ClientConfig;
pub use error::{Error, Result};
pub use job::{AttemptError, JobResult, JobStatus};
