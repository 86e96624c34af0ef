//! The Rust producer fixture of the conformance suite: reads one JSON request
//! on stdin, performs one call with [`rrq_client::Client`], prints one JSON
//! object on stdout and exits 0 (also when the call failed with a typed error).
//! Options use the Python names; errors are reported with the Python class
//! names so the suite can compare languages.

use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rrq_client::{Client, Debounce, EnqueueOptions, Error, RateLimit};
use serde_json::{Map, Value, json};

const ENQUEUE: &[&str] = &[
    "params",
    "queue_name",
    "job_id",
    "max_retries",
    "job_timeout_seconds",
    "result_ttl_seconds",
    "defer_by_seconds",
    "defer_until",
    "trace_parent",
    "trace_state",
];
const RULES: &[(&str, &str, &[&str])] = &[
    ("unique", "enqueue_with_unique_key", &["unique_ttl_seconds"]),
    (
        "rate_limit",
        "enqueue_with_rate_limit",
        &["rate_limit_key", "rate_limit_seconds"],
    ),
    (
        "debounce",
        "enqueue_with_debounce",
        &[
            "debounce_key",
            "debounce_seconds",
            "debounce_max_wait_seconds",
        ],
    ),
];

fn invalid(option: &str, reason: impl Into<String>) -> Error {
    Error::InvalidOption {
        option: option.to_owned(),
        reason: reason.into(),
    }
}

/// Rejects unknown options and rule options given to the wrong method, as
/// the Python client does.
fn check_names(method: &str, options: &Map<String, Value>) -> Result<(), Error> {
    let own: &[&str] = RULES
        .iter()
        .find(|(_, m, _)| *m == method)
        .map_or(&[], |(_, _, names)| *names);
    let mut foreign: Vec<&String> = options
        .keys()
        .filter(|k| {
            RULES.iter().any(|(_, _, n)| n.contains(&k.as_str())) && !own.contains(&k.as_str())
        })
        .collect();
    foreign.sort();
    if let Some(key) = foreign.first() {
        let owner = RULES
            .iter()
            .find(|(_, _, n)| n.contains(&key.as_str()))
            .map_or("", |(_, m, _)| *m);
        return Err(invalid(
            key,
            format!("{key} is an option of {owner}(), not of {method}()"),
        ));
    }
    if method == "enqueue_with_debounce" && options.contains_key("job_id") {
        return Err(invalid(
            "job_id",
            "job_id cannot be combined with enqueue_with_debounce(): the debounce window decides the job id",
        ));
    }
    let mut unknown: Vec<&String> = options
        .keys()
        .filter(|k| !ENQUEUE.contains(&k.as_str()) && !own.contains(&k.as_str()))
        .collect();
    unknown.sort();
    if let Some(key) = unknown.first() {
        return Err(invalid(key, format!("unknown {method}() option(s): {key}")));
    }
    Ok(())
}

fn get<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn string(o: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match get(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(
            key,
            format!("{key} must be a non-empty string, got {v}"),
        )),
    }
}

/// Seconds as a Duration, validated like Python's `_seconds_to_ms`.
fn seconds(o: &Map<String, Value>, key: &str, positive: bool) -> Result<Option<Duration>, Error> {
    let Some(v) = get(o, key) else {
        return Ok(None);
    };
    let Some(s) = v.as_f64().filter(|_| !v.is_boolean()) else {
        return Err(invalid(
            key,
            format!("{key} must be a number of seconds, got {v}"),
        ));
    };
    if !s.is_finite() || s < 0.0 || (positive && s == 0.0) {
        let bound = if positive { "positive" } else { "non-negative" };
        return Err(invalid(
            key,
            format!("{key} must be a finite {bound} number, got {v}"),
        ));
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

fn defer_until(o: &Map<String, Value>) -> Result<Option<SystemTime>, Error> {
    let Some(text) = string(o, "defer_until")? else {
        return Ok(None);
    };
    let t = chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            // Naive means UTC, as in Python.
            chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| n.and_utc())
        })
        .map_err(|e| {
            invalid(
                "defer_until",
                format!("defer_until must be a datetime, got {text:?}: {e}"),
            )
        })?;
    let ms = t.timestamp_millis();
    if ms < 0 {
        return Err(invalid(
            "defer_until",
            "defer_until must not be before 1970",
        ));
    }
    Ok(Some(UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())))
}

fn options(o: &Map<String, Value>) -> Result<EnqueueOptions, Error> {
    let mut opts = EnqueueOptions::default();
    opts.params = get(o, "params").cloned();
    opts.queue_name = string(o, "queue_name")?;
    opts.job_id = string(o, "job_id")?;
    opts.max_retries = match get(o, "max_retries") {
        None => None,
        Some(v) => Some(v.as_i64().filter(|_| !v.is_boolean()).ok_or_else(|| {
            invalid(
                "max_retries",
                format!("max_retries must be a non-negative integer, got {v}"),
            )
        })?),
    };
    opts.job_timeout = seconds(o, "job_timeout_seconds", true)?;
    opts.result_ttl = seconds(o, "result_ttl_seconds", true)?;
    opts.defer_by = seconds(o, "defer_by_seconds", false)?;
    opts.defer_until = defer_until(o)?;
    opts.trace_parent = string(o, "trace_parent")?;
    opts.trace_state = string(o, "trace_state")?;
    Ok(opts)
}

/// The call's printed answer: `{"job_id": ...}`, or `{"job_ids": [...]}` for
/// `enqueue_many`.
async fn call(request: &Value) -> Result<Value, Error> {
    let dsn = request["redis_dsn"]
        .as_str()
        .unwrap_or("redis://127.0.0.1:6379/0");
    let method = request["method"].as_str().unwrap_or("enqueue");
    let function = request["function_name"].as_str().unwrap_or_default();
    let empty = Map::new();
    let o = request["options"].as_object().unwrap_or(&empty);
    check_names(method, o)?;
    let opts = options(o)?;
    let client = Client::connect(dsn).await?;
    if method == "enqueue_many" {
        let Some(params_list) = request["params_list"].as_array() else {
            return Err(Error::InvalidParams(
                "params_list must be a sequence of dicts".to_owned(),
            ));
        };
        let ids = client.enqueue_many(function, params_list, opts).await?;
        return Ok(json!({ "job_ids": ids }));
    }
    let job_id = match method {
        "enqueue" => client.enqueue(function, opts).await.map(Some),
        "enqueue_with_unique_key" => {
            let key = request["unique_key"].as_str().unwrap_or_default();
            let ttl = seconds(o, "unique_ttl_seconds", true)?;
            client
                .enqueue_with_unique_key(function, key, opts, ttl)
                .await
                .map(Some)
        }
        "enqueue_with_rate_limit" => {
            let key = string(o, "rate_limit_key")?.unwrap_or_default();
            let window = seconds(o, "rate_limit_seconds", true)?
                .ok_or_else(|| invalid("rate_limit_seconds", "rate_limit_seconds is required"))?;
            client
                .enqueue_with_rate_limit(function, opts, RateLimit { key, window })
                .await
        }
        "enqueue_with_debounce" => {
            let key = string(o, "debounce_key")?.unwrap_or_default();
            let delay = seconds(o, "debounce_seconds", true)?
                .ok_or_else(|| invalid("debounce_seconds", "debounce_seconds is required"))?;
            let max_wait = seconds(o, "debounce_max_wait_seconds", true)?;
            client
                .enqueue_with_debounce(
                    function,
                    opts,
                    Debounce {
                        key,
                        delay,
                        max_wait,
                    },
                )
                .await
                .map(Some)
        }
        other => Err(invalid("method", format!("unknown method {other:?}"))),
    }?;
    Ok(json!({ "job_id": job_id }))
}

/// The Python class name of an error, so every language reports the same type.
fn error_type(e: &Error) -> &'static str {
    match e {
        Error::InvalidOption { .. } => "InvalidOptionError",
        Error::InvalidParams(_) => "InvalidParamsError",
        Error::PayloadTooLarge(_) => "PayloadTooLargeError",
        Error::DuplicateJob { .. } => "DuplicateJobError",
        Error::NotFound(_) => "JobNotFoundError",
        Error::Timeout(_) => "TimeoutError",
        Error::Config(_) => "ConfigError",
        _ => "RedisError",
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let request: Value = match serde_json::from_str(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("stdin is not JSON: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = match call(&request).await {
        Ok(answer) => answer,
        Err(e) => json!({"error": {"type": error_type(&e), "message": e.to_string()}}),
    };
    println!("{out}");
    std::process::ExitCode::SUCCESS
}
