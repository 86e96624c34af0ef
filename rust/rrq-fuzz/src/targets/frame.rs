//! `frame`: one runner→orchestrator message, as the orchestrator reads it.
//!
//! The input is the protobuf payload of one gRPC message. A payload prost
//! accepts must encode back to bytes of its `encoded_len` that decode to the
//! same message, and every outcome it carries goes through
//! `rrq::settle::action_for` (what the orchestrator writes for it) under
//! ordinary and extreme policies: the action must keep `delay_ms >= 0` and a
//! bounded traceback.

use std::time::Duration;

use arbitrary::Unstructured;
use prost::Message as _;
use rrq::settle::{Policy, action_for};
use rrq_proto::v1::{
    Cancelled, Failure, Heartbeat, Outcome, OutcomeBatch, Retry, RunnerHello, RunnerMessage,
    Success, TimedOut, outcome, runner_message,
};
use rrq_store::SettleAction;

use crate::Target;

/// See the module documentation.
pub const TARGET: Target = Target {
    name: "frame",
    about: "prost decode of RunnerMessage, round trip, settle::action_for on each outcome",
    run,
    generate,
    dictionary: DICTIONARY,
    alloc_limit: crate::alloc::DEFAULT_LIMIT,
    seeds,
};

/// Tag bytes of the message's fields and varint boundaries.
const DICTIONARY: &[&[u8]] = &[
    &[0x0a],
    &[0x12],
    &[0x1a],
    &[0x22],
    &[0x28],
    &[0x30],
    &[0x3a],
    &[0x10],
    &[0x08],
    &[0x80, 0x80, 0x80, 0x80, 0x10],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
    &[0xc0, 0xff, 0xee],
    b"\xed\xa0\x80",
    &[0x0b],
    &[0x0c],
    &[0x0d],
    &[0x09],
];

/// Caps of the policies below: every kept error text is at most its cap plus
/// the marker room (rrq::error_text).
const MAX_MESSAGE_BYTES: usize = 256;
const MAX_TRACEBACK_BYTES: usize = 1024;
const MAX_TEXT_BYTES: usize = MAX_TRACEBACK_BYTES + rrq::error_text::MARKER_ROOM;

fn policies() -> [Policy; 3] {
    let century = Duration::from_secs(100 * 365 * 86_400);
    [
        Policy {
            max_payload_bytes: 1_048_576,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_traceback_bytes: MAX_TRACEBACK_BYTES,
        },
        Policy {
            max_payload_bytes: 0,
            backoff_initial: Duration::ZERO,
            backoff_max: Duration::ZERO,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_traceback_bytes: MAX_TRACEBACK_BYTES,
        },
        Policy {
            max_payload_bytes: usize::MAX,
            backoff_initial: century,
            backoff_max: century,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_traceback_bytes: MAX_TRACEBACK_BYTES,
        },
    ]
}

fn run(data: &[u8]) -> Result<(), String> {
    let Ok(message) = RunnerMessage::decode(data) else {
        return Ok(());
    };
    let bytes = message.encode_to_vec();
    if bytes.len() != message.encoded_len() {
        return Err(format!(
            "encoded {} bytes, encoded_len said {}",
            bytes.len(),
            message.encoded_len()
        ));
    }
    let again = RunnerMessage::decode(bytes.as_slice())
        .map_err(|e| format!("re-encoded message does not decode: {e}"))?;
    if again != message {
        return Err("decode(encode(m)) != m".to_owned());
    }
    if let Some(runner_message::Kind::Outcomes(batch)) = &message.kind {
        for o in &batch.outcomes {
            for policy in &policies() {
                check_action(action_for(o.result.as_ref(), o.attempt, policy))?;
            }
        }
    }
    Ok(())
}

fn check_action(action: Option<SettleAction>) -> Result<(), String> {
    let (message, traceback) = match &action {
        Some(SettleAction::Retry {
            delay_ms,
            message,
            traceback,
            ..
        }) => {
            if !(0..=rrq::settle::MAX_RETRY_DELAY_MS).contains(delay_ms) {
                return Err(format!("retry with an out-of-range delay {delay_ms}"));
            }
            (message, traceback)
        }
        Some(SettleAction::Fail {
            message, traceback, ..
        }) => (message, traceback),
        None => return Err("action_for gave no action for a running attempt".to_owned()),
        _ => return Ok(()),
    };
    // A clamped delay appends a note of at most ~100 bytes to the message.
    if message.len() > MAX_TEXT_BYTES + 128 {
        return Err(format!("message of {} bytes kept", message.len()));
    }
    if traceback.len() > MAX_TEXT_BYTES {
        return Err(format!("traceback of {} bytes kept", traceback.len()));
    }
    Ok(())
}

/// A string from a small alphabet of protocol-relevant values, or arbitrary.
pub fn short_string(u: &mut Unstructured<'_>, choices: &[&str]) -> arbitrary::Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(choices)?).to_owned())
    } else {
        let s: String = u.arbitrary()?;
        Ok(s.chars().take(64).collect())
    }
}

/// An i64 that is mostly small or on a boundary.
pub fn edgy_i64(u: &mut Unstructured<'_>) -> arbitrary::Result<i64> {
    Ok(match u.int_in_range(0..=5)? {
        0 => u.int_in_range(0..=4)?,
        1 => *u.choose(&[i64::MIN, i64::MAX, -1, 1 << 53, i64::from(i32::MAX)])?,
        _ => u.int_in_range(-3..=10)?,
    })
}

/// A structured runner message (any of the three kinds, or none).
pub fn arbitrary_message(u: &mut Unstructured<'_>) -> arbitrary::Result<RunnerMessage> {
    let kind = match u.int_in_range(0..=9)? {
        0 => None,
        1 | 2 => Some(runner_message::Kind::Hello(RunnerHello {
            protocol_version: if u.ratio(7, 8)? { 1 } else { u.arbitrary()? },
            runner_name: short_string(u, &["py", "ts", "", "nope", "py#x"])?,
            language: short_string(u, &["rust", "python"])?,
            handlers: (0..u.int_in_range(0..=4)?)
                .map(|_| short_string(u, &["echo", "sleep", "", "#echo"]))
                .collect::<arbitrary::Result<_>>()?,
            max_in_flight: if u.ratio(3, 4)? {
                u.int_in_range(0..=4)?
            } else {
                u.arbitrary()?
            },
            pid: u.arbitrary()?,
            process_token: short_string(
                u,
                &[
                    "",
                    "tok-1",
                    TOKEN_PY_EXTERNAL,
                    TOKEN_PY_SPAWNED,
                    TOKEN_TS_SPAWNED,
                    TOKEN_PY_EXITED,
                    TOKEN_NEAR_MISS,
                ],
            )?,
        })),
        3 => Some(runner_message::Kind::Heartbeat(Heartbeat {
            in_flight: u.arbitrary()?,
        })),
        _ => Some(runner_message::Kind::Outcomes(OutcomeBatch {
            outcomes: (0..u.int_in_range(0..=4)?)
                .map(|_| arbitrary_outcome(u))
                .collect::<arbitrary::Result<_>>()?,
        })),
    };
    Ok(RunnerMessage { kind })
}

fn arbitrary_outcome(u: &mut Unstructured<'_>) -> arbitrary::Result<Outcome> {
    let result = match u.int_in_range(0..=5)? {
        0 => None,
        1 => Some(outcome::Result::Success(Success {
            result_json: short_string(u, &["null", "{}", "[1,2]", "\"x\""])?,
        })),
        2 => Some(outcome::Result::Retry(Retry {
            delay_ms: if u.arbitrary()? {
                Some(edgy_i64(u)?)
            } else {
                None
            },
            message: short_string(u, &["", "again"])?,
        })),
        3 => Some(outcome::Result::Failure(Failure {
            kind: u.int_in_range(-1..=8)?,
            error_type: short_string(u, &["", "ValueError"])?,
            message: short_string(u, &["", "boom"])?,
            traceback: if u.ratio(1, 8)? {
                "é".repeat(u.int_in_range(4000..=5000)?)
            } else {
                short_string(u, &["", "Traceback"])?
            },
        })),
        4 => Some(outcome::Result::Cancelled(Cancelled {})),
        _ => Some(outcome::Result::TimedOut(TimedOut {})),
    };
    Ok(Outcome {
        job_id: short_string(u, &["j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7", ""])?,
        attempt: edgy_i64(u)?,
        result,
    })
}

fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    Ok(arbitrary_message(u)?.encode_to_vec())
}

/// External token of runner `py` in the `stream` target.
pub const TOKEN_PY_EXTERNAL: &str = "fuzz-external-token-of-py-0123456789";
/// A live spawn token of runner `py` in the `stream` target.
pub const TOKEN_PY_SPAWNED: &str = "fuzz-spawn-token-of-py-0123456789abcdef";
/// A live spawn token of runner `ts` in the `stream` target.
pub const TOKEN_TS_SPAWNED: &str = "fuzz-spawn-token-of-ts-0123456789abcdef";
/// A spawn token of `py` whose process exited (revoked).
pub const TOKEN_PY_EXITED: &str = "fuzz-spawn-token-of-py-exited-0123456789";
/// `TOKEN_PY_EXTERNAL` with its last byte changed.
pub const TOKEN_NEAR_MISS: &str = "fuzz-external-token-of-py-012345678X";

/// The hello of the seeds: runner `py` with handlers echo and sleep, with
/// `py`'s external token.
pub fn hello(max_in_flight: u32) -> RunnerMessage {
    RunnerMessage {
        kind: Some(runner_message::Kind::Hello(RunnerHello {
            protocol_version: 1,
            runner_name: "py".to_owned(),
            language: "rust".to_owned(),
            handlers: vec!["echo".to_owned(), "sleep".to_owned()],
            max_in_flight,
            pid: 4242,
            process_token: TOKEN_PY_EXTERNAL.to_owned(),
        })),
    }
}

/// An outcomes message with one outcome.
pub fn outcomes(job_id: &str, attempt: i64, result: outcome::Result) -> RunnerMessage {
    RunnerMessage {
        kind: Some(runner_message::Kind::Outcomes(OutcomeBatch {
            outcomes: vec![Outcome {
                job_id: job_id.to_owned(),
                attempt,
                result: Some(result),
            }],
        })),
    }
}

/// A heartbeat.
pub fn heartbeat(in_flight: u32) -> RunnerMessage {
    RunnerMessage {
        kind: Some(runner_message::Kind::Heartbeat(Heartbeat { in_flight })),
    }
}

/// One of each result kind.
pub fn sample_results() -> Vec<(&'static str, outcome::Result)> {
    vec![
        (
            "success",
            outcome::Result::Success(Success {
                result_json: "{\"ok\":true}".to_owned(),
            }),
        ),
        (
            "retry",
            outcome::Result::Retry(Retry {
                delay_ms: Some(250),
                message: "again".to_owned(),
            }),
        ),
        (
            "failure",
            outcome::Result::Failure(Failure {
                kind: 1,
                error_type: "ValueError".to_owned(),
                message: "boom".to_owned(),
                traceback: "Traceback (most recent call last):\n  ...".to_owned(),
            }),
        ),
        ("cancelled", outcome::Result::Cancelled(Cancelled {})),
        ("timed_out", outcome::Result::TimedOut(TimedOut {})),
    ]
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("hello".to_owned(), hello(4).encode_to_vec()),
        ("heartbeat".to_owned(), heartbeat(2).encode_to_vec()),
        ("empty".to_owned(), Vec::new()),
    ];
    for (name, result) in sample_results() {
        out.push((
            format!("outcome-{name}"),
            outcomes("j1", 1, result).encode_to_vec(),
        ));
    }
    out
}
