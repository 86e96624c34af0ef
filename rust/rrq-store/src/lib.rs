//! The Redis contract of RRQ.
//!
//! Layout:
//! - [`keys`]: every key and channel name ([`Namespace`]: `<prefix>:{<queue>}:...`);
//! - [`scripts`]: [`Store`], one typed async function per Lua script in
//!   `../lua/` (the scripts' one home), plus the few plain commands callers need;
//! - [`dsn`]: [`redact_dsn`], how a DSN appears in logs and errors;
//! - [`error`]: [`Error`], including the mapping of the scripts' `RRQ_*` error codes.
//!
//! Job statuses are the `rrq.v1.JobStatus` numbers; see [`rrq_proto::v1::JobStatus`].

pub mod connect;
pub mod dsn;
pub mod error;
pub mod keys;
pub mod scripts;

pub use rrq_proto::limits;

pub use connect::open_client;
pub use dsn::redact_dsn;
pub use error::{Error, Result, is_retryable_redis};
pub use keys::{InvalidPrefix, Namespace, QueueKeys};
pub use rrq_proto::v1::JobStatus;
pub use scripts::{
    CancelOutcome, Claim, ClaimedJob, DlqEntry, EnqueueRequest, EnqueueRule, Enqueued, Recovered,
    Renewed, Requeued, Settle, SettleAction, Settled, Store,
};
