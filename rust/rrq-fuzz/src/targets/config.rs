//! `config`: `rrq.toml` text → `Config::from_toml` (TOML syntax, strict
//! schema, range and cross-reference validation), then everything the
//! orchestrator derives from an accepted file: every duration and
//! millisecond value, each runner's listen address, routing, the cron
//! entries, and retry backoff over boundary attempts.
//!
//! An accepted file must give durations that fit the orchestrator's uses:
//! the heartbeat silence (3 intervals) and backoff delays must not overflow.

use std::time::Duration;

use arbitrary::Unstructured;
use rrq::backoff::retry_delay;
use rrq::config::Config;

use crate::Target;

/// See the module documentation.
pub const TARGET: Target = Target {
    name: "config",
    about: "Config::from_toml, every derived duration, listen addresses, cron entries, backoff",
    run,
    generate,
    dictionary: DICTIONARY,
    alloc_limit: crate::alloc::DEFAULT_LIMIT,
    seeds,
};

const KEYS: &[&str] = &[
    "redis_dsn",
    "default_runner_name",
    "default_queue_name",
    "default_job_timeout_seconds",
    "default_max_retries",
    "default_result_ttl_seconds",
    "dlq_retention_seconds",
    "default_unique_job_lock_ttl_seconds",
    "max_payload_bytes",
    "retry_backoff_initial_seconds",
    "retry_backoff_max_seconds",
    "lease_seconds",
    "lease_renew_interval_seconds",
    "recovery_interval_seconds",
    "runner_heartbeat_interval_seconds",
    "cancel_grace_seconds",
    "shutdown_grace_seconds",
    "cron_misfire_grace_seconds",
    "allow_evicting_redis",
];

const DICTIONARY: &[&[u8]] = &[
    b"[rrq]\n",
    b"[rrq.runners.py]\n",
    b"[rrq.runner_routes]\n",
    b"[[rrq.cron_jobs]]\n",
    b"[rrq.runners.py.env]\n",
    b" = ",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"\\u",
    b"\\U0010FFFF",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b".",
    b"#",
    b"\n",
    b"nan",
    b"inf",
    b"-inf",
    b"+inf",
    b"1e308",
    b"3153600000",
    b"3153600000.0001",
    b"0x7fffffffffffffff",
    b"1979-05-27T07:32:00Z",
    b"true",
    b"\"127.0.0.1:0\"",
    b"\"[::1]:9000\"",
    b"\"localhost:65536\"",
    b"tcp_socket",
    b"max_in_flight",
    b"pool_size",
    b"token_env",
    b"cmd = []",
    b"schedule",
    b"timezone",
    b"function_name",
    b"lease_seconds",
    b"runner_heartbeat_interval_seconds",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
];

/// Attempts the backoff is computed for.
const ATTEMPTS: [i64; 7] = [i64::MIN, -1, 0, 1, 2, 63, i64::MAX];

fn run(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = Config::from_toml(&text, "rrq.toml") else {
        return Ok(());
    };
    let silence = cfg
        .heartbeat_interval()
        .checked_mul(3)
        .ok_or("3 heartbeat intervals overflow a Duration")?;
    let _ = (
        silence,
        cfg.default_job_timeout(),
        cfg.lease(),
        cfg.lease_renew_interval(),
        cfg.recovery_interval(),
        cfg.cancel_grace(),
        cfg.shutdown_grace(),
        cfg.default_result_ttl_ms(),
        cfg.dlq_retention_ms(),
        cfg.cron_misfire_grace_ms(),
    );
    if cfg.lease_renew_interval() >= cfg.lease() {
        return Err("accepted a renew interval not shorter than the lease".to_owned());
    }
    for (name, runner) in &cfg.runners {
        runner
            .listen_addr()
            .map_err(|e| format!("accepted runner {name} with a bad tcp_socket: {e}"))?;
    }
    let _ = cfg.default_runner();
    for queue in cfg.runner_routes.keys() {
        if let Some(runner) = cfg.runner_for_queue(queue)
            && !cfg.runners.contains_key(runner)
        {
            return Err(format!(
                "queue {queue} routes to unconfigured runner {runner}"
            ));
        }
    }
    rrq::cron::entries(&cfg).map_err(|e| format!("accepted cron entries that do not load: {e}"))?;
    for attempt in ATTEMPTS {
        for unit in [0.0, 0.5, 1.0, f64::NAN] {
            let d = retry_delay(attempt, cfg.backoff_initial(), cfg.backoff_max(), unit);
            // 1 µs of slack for the f64 round trip of the cap.
            let cap = cfg.backoff_max().max(cfg.backoff_initial()) + Duration::from_micros(1);
            if d > cap {
                return Err(format!(
                    "retry delay {d:?} after attempt {attempt} is over the cap {:?}",
                    cfg.backoff_max()
                ));
            }
        }
    }
    Ok(())
}

fn value(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => "0".to_owned(),
        1 => (*u.choose(&[
            "1",
            "0.001",
            "5",
            "30",
            "-1",
            "3153600000",
            "3153600001",
            "1e308",
        ])?)
        .to_owned(),
        2 => (*u.choose(&["nan", "inf", "-inf", "-0.0", "1e-320"])?).to_owned(),
        3 => (*u.choose(&["true", "false"])?).to_owned(),
        4 => format!(
            "{:?}",
            super::frame::short_string(u, &["py", "", "default", "redis://x"])?
        ),
        5 => {
            (*u.choose(&["18446744073709551615", "9223372036854775807", "4294967296"])?).to_owned()
        }
        6 => "[]".to_owned(),
        7 => "{}".to_owned(),
        _ => u.int_in_range(0..=600)?.to_string(),
    })
}

fn generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut t = String::from("[rrq]\n");
    for _ in 0..u.int_in_range(0..=6)? {
        t.push_str(&format!("{} = {}\n", u.choose(KEYS)?, value(u)?));
    }
    for name in ["py", "ts"] {
        if u.ratio(2, 3)? {
            t.push_str(&format!("[rrq.runners.{name}]\n"));
            if u.ratio(1, 2)? {
                let addr = u.choose(&[
                    "127.0.0.1:0",
                    "127.0.0.1:9000",
                    "[::1]:9000",
                    "localhost:80",
                    "localhost:65536",
                    "10.0.0.1:9000",
                    "127.0.0.1",
                    "",
                ])?;
                t.push_str(&format!("tcp_socket = {addr:?}\n"));
            }
            if u.ratio(1, 2)? {
                t.push_str(&format!("max_in_flight = {}\n", value(u)?));
            }
            if u.ratio(1, 3)? {
                t.push_str(&format!("pool_size = {}\n", value(u)?));
            }
            if u.ratio(1, 4)? {
                t.push_str("cmd = [\"run\", \"--x\"]\n");
            }
            if u.ratio(1, 4)? {
                let var = u.choose(&["MY_TOKEN", "", "1X", "A-B", "_T9", "X Y"])?;
                t.push_str(&format!("token_env = {var:?}\n"));
            }
        }
    }
    if u.ratio(1, 3)? {
        t.push_str("[rrq.runner_routes]\n");
        t.push_str(&format!(
            "{} = {:?}\n",
            u.choose(&["q", "\"a.b\"", "q-ts"])?,
            u.choose(&["py", "ts", "nope"])?
        ));
    }
    for _ in 0..u.int_in_range(0..=2)? {
        t.push_str("[[rrq.cron_jobs]]\n");
        t.push_str(&format!(
            "function_name = {:?}\n",
            u.choose(&["tick", "", "py#tick"])?
        ));
        let schedule = String::from_utf8_lossy(&(super::cron::TARGET.generate)(u)?)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        t.push_str(&format!("schedule = {schedule:?}\n"));
        if u.ratio(1, 2)? {
            t.push_str(&format!(
                "timezone = {:?}\n",
                u.choose(&["UTC", "Europe/Paris", "Mars/Olympus", ""])?
            ));
        }
        if u.ratio(1, 3)? {
            t.push_str("params = { a = 1, b = [1, 2, { c = \"d\" }] }\n");
        }
    }
    Ok(t.into_bytes())
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let readme = r#"[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
"#;
    let full = r#"[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"
default_queue_name = "default"
default_job_timeout_seconds = 300
default_max_retries = 3
default_result_ttl_seconds = 86400
dlq_retention_seconds = 604800
default_unique_job_lock_ttl_seconds = 21600
allow_evicting_redis = false
max_payload_bytes = 1048576
retry_backoff_initial_seconds = 1
retry_backoff_max_seconds = 300
lease_seconds = 30
lease_renew_interval_seconds = 10
recovery_interval_seconds = 5
runner_heartbeat_interval_seconds = 5
cancel_grace_seconds = 5
shutdown_grace_seconds = 30
cron_misfire_grace_seconds = 60

[rrq.runner_routes]
emails = "node"

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
pool_size = 2
max_in_flight = 8
cwd = "/srv/app"
token_env = "RRQ_PYTHON_RUNNER_TOKEN"

[rrq.runners.python.env]
PYTHONPATH = "/srv/app"

[rrq.runners.node]
cmd = ["rrq-ts-runner", "--settings", "./runner.js"]
tcp_socket = "[::1]:9001"

[[rrq.cron_jobs]]
function_name = "daily_report"
schedule = "0 0 9 * * *"
timezone = "Europe/Paris"
params = { kind = "daily" }

[[rrq.cron_jobs]]
name = "cleanup"
function_name = "node#cleanup"
schedule = "*/15 * * * *"
queue_name = "maintenance"
"#;
    let tests = r#"[rrq]
redis_dsn = "redis://127.0.0.1:6390/0"
default_runner_name = "python"
lease_seconds = 3
lease_renew_interval_seconds = 1
recovery_interval_seconds = 0.5
runner_heartbeat_interval_seconds = 0.5
cancel_grace_seconds = 1
shutdown_grace_seconds = 3
retry_backoff_initial_seconds = 0.05
retry_backoff_max_seconds = 0.2

[rrq.runners.python]
type = "socket"
cmd = ["python", "-m", "rrq.runner_cli", "--settings", "faults.oracle_handlers:settings"]
tcp_socket = "127.0.0.1:0"
pool_size = 2
max_in_flight = 4
"#;
    vec![
        ("readme".to_owned(), readme.as_bytes().to_vec()),
        ("every-key".to_owned(), full.as_bytes().to_vec()),
        ("fault-tests".to_owned(), tests.as_bytes().to_vec()),
        ("empty".to_owned(), Vec::new()),
        (
            "extremes".to_owned(),
            b"[rrq]\nlease_seconds = 3153600000\nlease_renew_interval_seconds = 3153599999.9\nrunner_heartbeat_interval_seconds = 3153600000\nretry_backoff_initial_seconds = 3153600000\nretry_backoff_max_seconds = 1e-9\nmax_payload_bytes = 9223372036854775807\n".to_vec(),
        ),
    ]
}
