//! Health: the orchestrator's heartbeat in Redis, and `rrq check`, which reads it.
//!
//! Every [`INTERVAL`] (and when a runner connects or goes away, or the drain
//! starts) each orchestrator writes
//! `ZADD rrq:orchestrators <redis now + TTL> <instance id>` and the hash
//! `rrq:orchestrator:<instance id>` (`version`, `started_at_ms`,
//! `heartbeat_at_ms`, `serving`, `queues`, `runners`, `pid`, `host`,
//! `redis_data_losses` and the stderr loss counters of [`crate::output`]:
//! `log_lines_dropped`, `output_lines_dropped`, `output_bytes_dropped`,
//! `output_lines_cut`) with a
//! [`TTL`] expiry; both are removed on a clean shutdown. An instance is alive
//! while its score is after Redis `TIME`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rrq_store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::RedisClock;
use crate::dispatcher::Dispatcher;
use crate::scheduler::ServedQueues;

/// Heartbeat period.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long a heartbeat keeps an instance alive.
pub const TTL_MS: i64 = 6000;

/// What one orchestrator reports about itself.
#[derive(Debug)]
pub struct Heartbeat {
    /// Redis.
    pub store: Store,
    /// Redis time.
    pub clock: Arc<RedisClock>,
    /// Sessions and drain state.
    pub dispatcher: Arc<Dispatcher>,
    /// Served queues.
    pub queues: Arc<ServedQueues>,
    /// Instance id.
    pub instance_id: String,
    /// Redis time of the start, ms.
    pub started_at_ms: i64,
    /// Redis data-loss detection, checked with every heartbeat.
    pub epoch: crate::epoch::EpochWatch,
}

/// Host name of this machine.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Heartbeat {
    /// Writes the heartbeat once.
    pub async fn write(&self) -> redis::RedisResult<()> {
        let mut conn = self.store.connection();
        let ns = self.store.namespace();
        let sent = Instant::now();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now = secs * 1000 + micros / 1000;
        self.clock.observe(now, sent, Instant::now());
        let stats = self.dispatcher.runner_stats();
        let connected = stats.values().any(|s| s.sessions > 0);
        let serving = connected && !self.dispatcher.is_draining();
        let runners: BTreeMap<&str, serde_json::Value> = stats
            .iter()
            .map(|(name, s)| {
                (
                    name.as_str(),
                    serde_json::json!({"sessions": s.sessions, "free_slots": s.free_slots}),
                )
            })
            .collect();
        if let Err(e) = self.epoch.check(&mut conn, &ns.epoch()).await {
            warn!("checking the Redis epoch failed: {e}");
        }
        let lost = crate::output::counters();
        let key = ns.orchestrator(&self.instance_id);
        let fields: [(&str, String); 13] = [
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("started_at_ms", self.started_at_ms.to_string()),
            ("heartbeat_at_ms", now.to_string()),
            ("serving", if serving { "1" } else { "0" }.to_owned()),
            (
                "queues",
                serde_json::to_string(&self.queues.list()).unwrap_or_default(),
            ),
            (
                "runners",
                serde_json::to_string(&runners).unwrap_or_default(),
            ),
            ("pid", std::process::id().to_string()),
            ("host", host_name()),
            ("redis_data_losses", self.epoch.losses().to_string()),
            ("log_lines_dropped", lost.log_lines_dropped.to_string()),
            (
                "output_lines_dropped",
                lost.output_lines_dropped.to_string(),
            ),
            (
                "output_bytes_dropped",
                lost.output_bytes_dropped.to_string(),
            ),
            ("output_lines_cut", lost.output_lines_cut.to_string()),
        ];
        redis::pipe()
            .cmd("ZADD")
            .arg(ns.orchestrators())
            .arg(now + TTL_MS)
            .arg(&self.instance_id)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg(&fields[..])
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(TTL_MS)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(ns.orchestrators())
            .arg("-inf")
            .arg(now)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Removes this instance's heartbeat (clean shutdown).
    pub async fn remove(&self) -> redis::RedisResult<()> {
        let ns = self.store.namespace();
        redis::pipe()
            .cmd("ZREM")
            .arg(ns.orchestrators())
            .arg(&self.instance_id)
            .ignore()
            .cmd("DEL")
            .arg(ns.orchestrator(&self.instance_id))
            .ignore()
            .query_async::<()>(&mut self.store.connection())
            .await
    }

    /// Writes the heartbeat every [`INTERVAL`] and on session changes until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = crate::output::Snapshot::default();
        loop {
            if let Err(e) = self.write().await {
                warn!("writing the heartbeat failed: {e}");
            }
            reported = report_output_losses(reported);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.dispatcher.sessions_changed.notified() => {}
            }
        }
    }
}

/// Logs what stderr lost since `before` (when anything); returns the new totals.
fn report_output_losses(before: crate::output::Snapshot) -> crate::output::Snapshot {
    let now = crate::output::counters();
    if now != before {
        warn!(
            log_lines_dropped = now.log_lines_dropped - before.log_lines_dropped,
            output_lines_dropped = now.output_lines_dropped - before.output_lines_dropped,
            output_bytes_dropped = now.output_bytes_dropped - before.output_bytes_dropped,
            output_lines_cut = now.output_lines_cut - before.output_lines_cut,
            "stderr lost output since the last report (a slow or unread stderr, or lines over {} bytes)",
            crate::output::MAX_LINE_BYTES
        );
    }
    now
}

/// One live orchestrator as `rrq check` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Ready, not draining, with at least one runner session.
    pub serving: bool,
    /// Served queues.
    pub queues: Vec<String>,
    /// Runner name → `{"sessions", "free_slots"}`.
    pub runners: serde_json::Value,
    /// Redis time since its last heartbeat, ms.
    pub heartbeat_age_ms: i64,
    /// Orchestrator version.
    pub version: String,
    /// Process id.
    pub pid: String,
    /// Host.
    pub host: String,
    /// Start time (Redis time, ms).
    pub started_at_ms: i64,
    /// Times this instance saw Redis lose its data (see `epoch`).
    pub redis_data_losses: i64,
    /// Lines of its own log it dropped (stderr not keeping up).
    pub log_lines_dropped: i64,
    /// Runner output lines it dropped (stderr not keeping up).
    pub output_lines_dropped: i64,
    /// Runner output bytes it dropped (dropped lines and cut line tails).
    pub output_bytes_dropped: i64,
    /// Runner output lines it cut at the line cap.
    pub output_lines_cut: i64,
}

/// Reads the live instances (pruning expired members first).
pub async fn live_instances(store: &Store) -> redis::RedisResult<Vec<Instance>> {
    let mut conn = store.connection();
    let ns = store.namespace();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now = secs * 1000 + micros / 1000;
    let (ids,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(ns.orchestrators())
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZRANGEBYSCORE")
        .arg(ns.orchestrators())
        .arg(format!("({now}"))
        .arg("+inf")
        .query_async(&mut conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HGETALL").arg(ns.orchestrator(id));
    }
    let records: Vec<BTreeMap<String, String>> = pipe.query_async(&mut conn).await?;
    Ok(ids
        .into_iter()
        .zip(records)
        .map(|(id, f)| {
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            Instance {
                id,
                serving: get("serving") == "1",
                queues: serde_json::from_str(&get("queues")).unwrap_or_default(),
                runners: serde_json::from_str(&get("runners"))
                    .unwrap_or(serde_json::Value::Object(Default::default())),
                heartbeat_age_ms: if f.contains_key("heartbeat_at_ms") {
                    now.saturating_sub(num("heartbeat_at_ms")).max(0)
                } else {
                    -1
                },
                version: get("version"),
                pid: get("pid"),
                host: get("host"),
                started_at_ms: num("started_at_ms"),
                redis_data_losses: num("redis_data_losses"),
                log_lines_dropped: num("log_lines_dropped"),
                output_lines_dropped: num("output_lines_dropped"),
                output_bytes_dropped: num("output_bytes_dropped"),
                output_lines_cut: num("output_lines_cut"),
            }
        })
        .collect())
}

/// One line of `rrq check` for `i`.
pub fn describe(i: &Instance) -> String {
    let runners: Vec<String> = i
        .runners
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, v)| {
                    format!(
                        "{name}(sessions={}, free_slots={})",
                        v.get("sessions")
                            .and_then(serde_json::Value::as_i64)
                            .unwrap_or(0),
                        v.get("free_slots")
                            .and_then(serde_json::Value::as_i64)
                            .unwrap_or(0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let age = if i.heartbeat_age_ms < 0 {
        "unknown".to_owned()
    } else {
        format!("{:.1}s", i.heartbeat_age_ms as f64 / 1000.0)
    };
    let losses = if i.redis_data_losses > 0 {
        format!(" REDIS_DATA_LOSSES={}", i.redis_data_losses)
    } else {
        String::new()
    };
    let dropped = if i.log_lines_dropped > 0
        || i.output_lines_dropped > 0
        || i.output_bytes_dropped > 0
        || i.output_lines_cut > 0
    {
        format!(
            " stderr_dropped=(log_lines={}, output_lines={}, output_bytes={}, lines_cut={})",
            i.log_lines_dropped, i.output_lines_dropped, i.output_bytes_dropped, i.output_lines_cut
        )
    } else {
        String::new()
    };
    format!(
        "{} serving={} queues=[{}] runners=[{}] heartbeat_age={age}{losses}{dropped}",
        i.id,
        if i.serving { "yes" } else { "no" },
        i.queues.join(","),
        runners.join(", ")
    )
}

/// The verdict of `rrq check`: exit status and the reason when not 0.
pub fn verdict(instances: &[Instance]) -> (u8, Option<&'static str>) {
    if instances.is_empty() {
        (1, Some("no orchestrator is alive"))
    } else if instances.iter().any(|i| i.serving) {
        (0, None)
    } else {
        (
            1,
            Some("orchestrators are alive but none is serving (no runner connected, or draining)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(serving: bool) -> Instance {
        Instance {
            id: "h-1-abc".into(),
            serving,
            queues: vec!["default".into(), "q".into()],
            runners: serde_json::json!({"python": {"sessions": 1, "free_slots": 3}}),
            heartbeat_age_ms: 400,
            version: "0.1.0".into(),
            pid: "1".into(),
            host: "h".into(),
            started_at_ms: 0,
            redis_data_losses: 0,
            log_lines_dropped: 0,
            output_lines_dropped: 0,
            output_bytes_dropped: 0,
            output_lines_cut: 0,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&[]).0, 1);
        assert_eq!(verdict(&[instance(false)]).0, 1);
        assert_eq!(verdict(&[instance(false), instance(true)]), (0, None));
    }

    #[test]
    fn describes_an_instance() {
        assert_eq!(
            describe(&instance(true)),
            "h-1-abc serving=yes queues=[default,q] runners=[python(sessions=1, free_slots=3)] heartbeat_age=0.4s"
        );
        let lossy = Instance {
            output_lines_dropped: 3,
            output_bytes_dropped: 3_000_000,
            ..instance(true)
        };
        assert!(
            describe(&lossy).ends_with(
                " stderr_dropped=(log_lines=0, output_lines=3, output_bytes=3000000, lines_cut=0)"
            ),
            "{}",
            describe(&lossy)
        );
    }
}
