//! Generated prost/tonic code for the `rrq.v1` protocol.
//!
//! The code under `src/gen/` is produced by `cargo run -p rrq-gen` from
//! `proto/rrq/v1/*.proto` and committed; never edit it by hand.

/// Caps on an attempt's error text, applied the same way by the orchestrator
/// and the Rust runner (the marker format is part of the protocol).
pub mod error_text;

/// Numeric limits shared by every producer, runner, the orchestrator and the
/// Lua scripts (generated from `rust/rrq-store/limits.toml` by `make gen`).
pub mod limits;

/// Package `rrq.v1`: the job record (`Job`, `JobStatus`) and the runner
/// protocol (`RunnerService` and its stream envelopes).
pub mod v1 {
    // Generated code follows prost's conventions, not our lint set.
    #![allow(
        missing_docs,
        missing_debug_implementations,
        unused_qualifications,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    include!("gen/rrq.v1.rs");
}
