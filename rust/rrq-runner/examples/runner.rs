//! A minimal runner: two handlers, configured from the environment the
//! orchestrator sets (`RRQ_ORCHESTRATOR_ADDR`, ...).
//!
//! ```toml
//! [rrq.runners.rust]
//! cmd = ["cargo", "run", "-q", "-p", "rrq-runner", "--example", "runner"]
//! max_in_flight = 16
//! ```

use std::time::Duration;

use rrq_runner::{HandlerError, Registry, Runner};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut registry = Registry::new();
    registry.register("greet", |req, _cancel| async move {
        let name = req
            .params_map()
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("world");
        Ok(json!({ "greeting": format!("hello, {name}") }))
    });
    registry.register("slow_sum", |req, cancel| async move {
        let numbers: Vec<i64> = serde_json::from_value(req.params["numbers"].clone())?;
        tokio::select! {
            () = cancel.cancelled() => Err(HandlerError::Cancelled),
            () = tokio::time::sleep(Duration::from_millis(100)) => Ok(json!(numbers.iter().sum::<i64>())),
        }
    });
    Runner::new(registry).run_from_env().await?;
    Ok(())
}
