//! The Rust fixture runner of the conformance suite: the standard handlers of
//! conformance-tests/README.md, with exactly the contract's semantics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rrq_runner::{ExecutionRequest, HandlerError, Registry, Runner};
use serde::Serialize;
use serde_json::{Value, json};

fn number(req: &ExecutionRequest, key: &str) -> Option<f64> {
    req.params_map().get(key).and_then(Value::as_f64)
}

fn dir(req: &ExecutionRequest) -> Result<PathBuf, HandlerError> {
    req.params_map()
        .get("dir")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| HandlerError::failed("FixtureError", "params.dir is required"))
}

/// Writes `dir/name` atomically (temp file, rename).
fn write_marker(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

#[derive(Serialize)]
struct NotJson {
    value: f64,
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("echo", |req, _c| async move { Ok(req.params) });
    r.register("whoami", |_req, _c| async move {
        Ok(json!({"language": "rust", "pid": std::process::id()}))
    });
    r.register("sleep", |req, cancel| async move {
        let s = number(&req, "seconds").unwrap_or(0.0);
        let wait = Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = cancel.cancelled() => Err(HandlerError::Cancelled),
            () = tokio::time::sleep(wait) => Ok(json!({"slept": req.params["seconds"]})),
        }
    });
    r.register("fail_then_succeed", |req, _c| async move {
        let failures = number(&req, "failures").unwrap_or(0.0);
        if (req.attempt as f64) <= failures {
            return Err(HandlerError::failed(
                "FixtureError",
                format!("attempt {} fails", req.attempt),
            ));
        }
        Ok(json!({"attempt": req.attempt}))
    });
    r.register("always_fail", |_req, _c| async move {
        Err(HandlerError::failed("FixtureError", "always fails"))
    });
    r.register("fail_with_bytes", |req, _c| async move {
        let n = number(&req, "bytes").unwrap_or(0.0) as usize;
        Err(HandlerError::failed("FixtureError", "x".repeat(n)))
    });
    r.register("retry_with_delay", |req, _c| async move {
        if req.attempt == 1 {
            let d = number(&req, "delay_seconds").unwrap_or(0.0);
            let delay = Duration::try_from_secs_f64(d).unwrap_or(Duration::ZERO);
            return Err(HandlerError::retry(Some(delay), "retry with delay"));
        }
        Ok(json!({"attempt": req.attempt}))
    });
    r.register("hang_ignore_cancel", |req, _cancel| async move {
        let dir = dir(&req)?;
        write_marker(
            &dir,
            &format!("started-{}", req.attempt),
            &std::process::id().to_string(),
        )?;
        // Blocks a thread for good and never looks at the token.
        let _ = tokio::task::spawn_blocking(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        })
        .await;
        Ok(Value::Null)
    });
    r.register("crash", |req, _c| async move {
        let dir = dir(&req)?;
        write_marker(
            &dir,
            &format!("started-{}", req.attempt),
            &std::process::id().to_string(),
        )?;
        let k = number(&req, "crash_attempts").unwrap_or(1.0);
        if (req.attempt as f64) <= k {
            std::process::exit(137);
        }
        Ok(json!({"attempt": req.attempt}))
    });
    r.register("large_result", |req, _c| async move {
        let n = number(&req, "bytes").unwrap_or(0.0).max(0.0) as usize;
        Ok(json!({"data": "x".repeat(n)}))
    });
    r.register_typed("non_serializable", |_req, _c| async move {
        Ok(NotJson { value: f64::NAN })
    });
    r.register("trace_id", |req, _c| async move {
        Ok(json!({"trace_id": req.trace_id().unwrap_or("")}))
    });
    r.register("report_cancel", |req, cancel| async move {
        let dir = dir(&req)?;
        write_marker(
            &dir,
            &format!("started-{}", req.attempt),
            &std::process::id().to_string(),
        )?;
        cancel.cancelled().await;
        write_marker(&dir, &format!("cancelled-{}", req.attempt), "")?;
        Err(HandlerError::Cancelled)
    });
    r
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Runner::new(registry()).run_from_env().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rrq conformance fixture: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
