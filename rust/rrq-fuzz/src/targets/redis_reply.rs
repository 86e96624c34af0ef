//! `redis-reply`: what the orchestrator makes of Redis's answers.
//!
//! The input is RESP bytes (RESP2 or RESP3), parsed by the redis crate's
//! parser into a `redis::Value`, which then goes through every decoder that
//! turns a reply into RRQ data:
//! - the script-reply decoders of rrq-store: `claim.lua` (the claimed jobs,
//!   read from their job hashes), `settle.lua`, `renew_lease.lua`,
//!   `enqueue.lua`;
//! - the typed conversions applied to plain replies: a job hash from
//!   `HGETALL` (`Store::job`, `Store::dlq_list`, the health records),
//!   `ZRANGE ... WITHSCORES` (dead-letter list), `TIME`, `SMEMBERS`, and the
//!   pipelined `HGET attempt` of the scheduler.
//!
//! A decoded claim must be coherent: `next_due_in_ms` is never negative.

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use redis::{FromRedisValue, Value};
use rrq_store::scripts::{parse_claim, parse_enqueued, parse_renewed, parse_settle};

use crate::Target;

/// See the module documentation.
pub const TARGET: Target = Target {
    name: "redis-reply",
    about: "RESP parse, then rrq-store's claim/settle/renew/enqueue decoders and job-hash conversions",
    run,
    generate,
    dictionary: DICTIONARY,
    alloc_limit: crate::alloc::DEFAULT_LIMIT,
    seeds,
};

const DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"*",
    b"$",
    b":",
    b"+",
    b"-",
    b"_",
    b",",
    b"#",
    b"!",
    b"=",
    b"(",
    b"%",
    b"~",
    b"|",
    b">",
    b"*-1\r\n",
    b"$-1\r\n",
    b"*10\r\n",
    b"*2\r\n",
    b"$0\r\n\r\n",
    b":-1\r\n",
    b":9223372036854775807\r\n",
    b"$3\r\n1.5\r\n",
    b"$1\r\n\xff\r\n",
    b",inf\r\n",
    b",nan\r\n",
    b"*4294967295\r\n",
    b"$4294967295\r\n",
    b"=15\r\ntxt:",
    b"-RRQ_STALE_FENCE stale\r\n",
    b"-NOSCRIPT No matching script\r\n",
];

fn run(data: &[u8]) -> Result<(), String> {
    let Ok(value) = redis::parse_redis_value(data) else {
        return Ok(());
    };
    decode_all(value)
}

/// Every decoder the orchestrator applies to a reply, on `value`.
pub fn decode_all(value: Value) -> Result<(), String> {
    if let Ok(claim) = parse_claim(value.clone())
        && let Some(next) = claim.next_due_in_ms
        && next < 0
    {
        return Err(format!("claim decoded a negative next_due_in_ms {next}"));
    }
    let _ = parse_settle("j1", value.clone());
    let _ = parse_renewed(value.clone());
    let _ = parse_enqueued(value.clone());
    let _ = BTreeMap::<String, String>::from_redis_value(value.clone());
    let _ = Vec::<BTreeMap<String, String>>::from_redis_value(value.clone());
    let _ = Vec::<(String, f64)>::from_redis_value(value.clone());
    let _ = <(i64, i64)>::from_redis_value(value.clone());
    let _ = <(Vec<String>,)>::from_redis_value(value.clone());
    let _ = Vec::<String>::from_redis_value(value.clone());
    let _ = Vec::<Option<i64>>::from_redis_value(value.clone());
    let _ = Vec::<i64>::from_redis_value(value);
    Ok(())
}

/// RESP2/RESP3 encoding of `v` (the parser's inverse, for seeds and generation).
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    let bulk = |out: &mut Vec<u8>, tag: u8, b: &[u8]| {
        out.push(tag);
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    };
    let head = |out: &mut Vec<u8>, tag: u8, n: usize| {
        out.push(tag);
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    match v {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::BulkString(b) => bulk(out, b'$', b),
        Value::SimpleString(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Okay => out.extend_from_slice(b"+OK\r\n"),
        Value::Array(items) => {
            head(out, b'*', items.len());
            for i in items {
                encode(i, out);
            }
        }
        Value::Set(items) => {
            head(out, b'~', items.len());
            for i in items {
                encode(i, out);
            }
        }
        Value::Map(pairs) => {
            head(out, b'%', pairs.len());
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
        Value::Double(d) => out.extend_from_slice(format!(",{d}\r\n").as_bytes()),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        _ => out.extend_from_slice(b"_\r\n"),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn claim_job(id: &str, attempt: Value, timeout: &str) -> Value {
    Value::Array(vec![
        bulk(id),
        attempt,
        bulk("echo"),
        bulk("{\"n\":1}"),
        bulk("3"),
        bulk(timeout),
        bulk("1699999999000"),
        bulk("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        bulk(""),
        bulk("1700000000000"),
    ])
}

fn arbitrary_value(u: &mut Unstructured<'_>, depth: u32) -> arbitrary::Result<Value> {
    let top = if depth >= 4 { 5 } else { 8 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Nil,
        1 => Value::Int(super::frame::edgy_i64(u)?),
        2 => bulk(&super::frame::short_string(
            u,
            &[
                "",
                "0",
                "1",
                "-1",
                "1.5",
                "1e3",
                "9223372036854775808",
                "j1",
                "echo",
                "{}",
            ],
        )?),
        3 => Value::BulkString(u.arbitrary::<Vec<u8>>()?.into_iter().take(32).collect()),
        4 => Value::SimpleString(super::frame::short_string(u, &["OK", "QUEUED"])?),
        5 => Value::Double(*u.choose(&[0.5, -1.0, f64::NAN, f64::INFINITY, 1e300])?),
        6 => Value::Map(
            (0..u.int_in_range(0..=4)?)
                .map(|_| {
                    Ok((
                        arbitrary_value(u, depth + 1)?,
                        arbitrary_value(u, depth + 1)?,
                    ))
                })
                .collect::<arbitrary::Result<_>>()?,
        ),
        7 if u.ratio(1, 2)? => {
            let attempt = arbitrary_value(u, 4)?;
            let timeout = super::frame::short_string(u, &["0", "-1", "1e30", "x", ""])?;
            Value::Array(vec![
                Value::Int(1_700_000_000_000),
                Value::Int(super::frame::edgy_i64(u)?),
                claim_job("j1", attempt, &timeout),
            ])
        }
        _ => Value::Array(
            (0..u.int_in_range(0..=10)?)
                .map(|_| arbitrary_value(u, depth + 1))
                .collect::<arbitrary::Result<_>>()?,
        ),
    })
}

fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(&arbitrary_value(u, 0)?, &mut out);
    Ok(out)
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let values = vec![
        (
            "claim-two-jobs",
            Value::Array(vec![
                Value::Int(1_700_000_000_000),
                Value::Int(-1),
                claim_job("j1", Value::Int(1), "0"),
                claim_job("j2", Value::Int(2), "30000"),
            ]),
        ),
        (
            "claim-none-next-due",
            Value::Array(vec![Value::Int(1_700_000_000_000), Value::Int(250)]),
        ),
        (
            "settle-ok",
            Value::Array(vec![Value::Int(1), Value::Int(4), Value::Int(0)]),
        ),
        (
            "settle-stale",
            Value::Array(vec![Value::Int(0), Value::Int(2), Value::Int(3)]),
        ),
        (
            "renew",
            Value::Array(vec![
                Value::Array(vec![bulk("j1")]),
                Value::Array(vec![bulk("j2"), bulk("j3")]),
            ]),
        ),
        ("renew-nil", Value::Array(vec![Value::Nil, Value::Nil])),
        (
            "enqueue-created",
            Value::Array(vec![Value::Int(1), bulk("j1"), Value::Int(1_700_000_000_000)]),
        ),
        (
            "enqueue-exists",
            Value::Array(vec![Value::Int(0), bulk("j1"), bulk("2")]),
        ),
        (
            "job-hash",
            Value::Array(
                [
                    ("id", "j1"),
                    ("status", "5"),
                    ("function_name", "echo"),
                    ("queue_name", "default"),
                    ("attempt", "4"),
                    ("max_retries", "3"),
                    ("params_json", "{\"n\":1}"),
                    (
                        "errors_json",
                        "[{\"attempt\":1,\"error_type\":\"ValueError\",\"message\":\"boom\",\"at_ms\":1700000000000}]",
                    ),
                    ("enqueued_at_ms", "1699999999000"),
                ]
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
            ),
        ),
        (
            "job-hash-resp3",
            Value::Map(vec![
                (bulk("status"), bulk("2")),
                (bulk("attempt"), bulk("1")),
            ]),
        ),
        (
            "dlq-withscores",
            Value::Array(vec![bulk("j1"), bulk("1700000000000"), bulk("j2"), bulk("1.7e12")]),
        ),
        ("time", Value::Array(vec![bulk("1700000000"), bulk("123456")])),
        ("hget-attempts", Value::Array(vec![bulk("0"), Value::Nil, bulk("2")])),
    ];
    let mut out: Vec<(String, Vec<u8>)> = values
        .into_iter()
        .map(|(name, v)| {
            let mut bytes = Vec::new();
            encode(&v, &mut bytes);
            (name.to_owned(), bytes)
        })
        .collect();
    out.push((
        "error".to_owned(),
        b"-RRQ_STALE_FENCE stale fence\r\n".to_vec(),
    ));
    out.push((
        "verbatim".to_owned(),
        b"=15\r\ntxt:Some string\r\n".to_vec(),
    ));
    out
}
