//! Replays every corpus and crasher input of every target (fault row F30):
//! a crasher is a regression input, so it must pass once its bug is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use rrq_fuzz::harness::{self, Verdict};
use rrq_fuzz::{TARGETS, corpus_dir, crashers_dir, read_inputs};

/// The fuzzer's limit is 1 s per input; a replay in a loaded test run gets more.
const TIMEOUT: Duration = Duration::from_secs(5);

fn replay_dir(dir: &std::path::Path, target: &'static rrq_fuzz::Target) -> (usize, Vec<String>) {
    let inputs = read_inputs(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut failures = Vec::new();
    for (path, data) in &inputs {
        let verdict = harness::replay(target, data, TIMEOUT);
        if verdict != Verdict::Pass {
            failures.push(format!(
                "{}: {}: {verdict:?}",
                path.display(),
                verdict.kind()
            ));
        }
    }
    (inputs.len(), failures)
}

#[test]
fn every_target_has_a_corpus_that_passes() {
    let mut failures = Vec::new();
    for target in &TARGETS {
        let (n, f) = replay_dir(&corpus_dir(target.name), target);
        assert!(n > 0, "corpus/{} is empty", target.name);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "corpus inputs fail:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_crasher_passes() {
    let mut failures = Vec::new();
    for target in &TARGETS {
        failures.extend(replay_dir(&crashers_dir(target.name), target).1);
    }
    assert!(
        failures.is_empty(),
        "crashers fail:\n{}",
        failures.join("\n")
    );
}

#[test]
fn committed_seeds_match_the_built_in_ones() {
    // `rrq-fuzz --write-seeds` writes these; a stale file would replay
    // something other than what the seed builder describes.
    for target in &TARGETS {
        for (name, data) in (target.seeds)() {
            let path = corpus_dir(target.name).join(&name);
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run rrq-fuzz --write-seeds)", path.display()));
            assert!(
                on_disk == data,
                "{} is stale: run rrq-fuzz --write-seeds",
                path.display()
            );
        }
    }
}
