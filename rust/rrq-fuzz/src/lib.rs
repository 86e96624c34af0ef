//! Wire-format fuzzing on stable Rust: fault row F30 of docs/guarantees.md.
//!
//! cargo-fuzz needs a nightly compiler, so this crate carries its own small
//! fuzzer: seeded corpus plus libFuzzer-style mutations ([`mutate`]) and
//! structure-aware generation with the `arbitrary` crate, a watchdog with a
//! per-input timeout, a counting allocator with a per-input budget
//! ([`alloc`]), and panics caught and saved ([`harness`]). There is no
//! coverage feedback.
//!
//! Targets ([`TARGETS`], code in [`targets`]):
//! - `frame`: prost decode of a runner's `RunnerMessage`, round trip, and the
//!   orchestrator's reading of each outcome (`settle::action_for`);
//! - `stream`: the real `RunnerService.Connect` of the orchestrator
//!   (`server::Endpoint`, tonic's frame decoder, `Dispatcher`) fed a scripted
//!   inbound stream: raw or valid frames, body errors, stalls, paused-clock
//!   sleeps, interleaved with dispatcher events (claims, cancels, lease loss,
//!   drain);
//! - `redis-reply`: RESP bytes → `redis::Value` → the script-reply decoders
//!   of rrq-store (claim, settle, renew, enqueue) and the typed conversions
//!   the orchestrator applies to job hashes and other replies;
//! - `cron`: schedule validation, parsing and tick arithmetic;
//! - `config`: `rrq.toml` parsing and validation, then every duration the
//!   orchestrator derives from it.
//!
//! Layout on disk: `corpus/<target>/` holds seed inputs, `crashers/<target>/`
//! holds every input that ever failed; `tests/replay.rs` replays both.

use std::path::{Path, PathBuf};

pub mod alloc;
pub mod harness;
pub mod mutate;
pub mod targets;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name used on the command line and as the corpus directory.
    pub name: &'static str,
    /// One line on what it covers.
    pub about: &'static str,
    /// Runs one input. `Err` is a broken invariant; a panic is caught by the
    /// harness.
    pub run: fn(&[u8]) -> Result<(), String>,
    /// Structure-aware generation: a fresh input from unstructured bytes.
    pub generate: fn(&mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Vec<u8>>,
    /// Tokens the mutator splices in.
    pub dictionary: &'static [&'static [u8]],
    /// Live bytes one input may hold above its starting level.
    pub alloc_limit: usize,
    /// Seed inputs (file name, bytes) that `--write-seeds` writes to the corpus.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

/// Every target, in the order `--target all` runs them.
pub const TARGETS: [Target; 5] = [
    targets::frame::TARGET,
    targets::stream::TARGET,
    targets::redis_reply::TARGET,
    targets::cron::TARGET,
    targets::config::TARGET,
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `rust/rrq-fuzz`.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seed inputs of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    crate_dir().join("corpus").join(target)
}

/// Saved failing inputs of `target`.
pub fn crashers_dir(target: &str) -> PathBuf {
    crate_dir().join("crashers").join(target)
}

/// The inputs in `dir` (not recursive; skips dotfiles and `*.md`), sorted by
/// name. A missing directory has none.
pub fn read_inputs(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name.ends_with(".md") || !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path)?;
        out.push((path, data));
    }
    out.sort();
    Ok(out)
}

/// FNV-1a, 64 bits: stable names for saved inputs and per-target seeds.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
