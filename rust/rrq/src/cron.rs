//! Cron: every orchestrator enqueues each tick of every `[[rrq.cron_jobs]]`
//! entry; the `unique` rule makes exactly one job per tick however many do.
//!
//! - Tick `t` (epoch ms, Redis time) of entry `<name>` is job
//!   `cron:<name>:<t>`, enqueued about [`ENQUEUE_LEAD_MS`] before `t` with
//!   `run_at_ms = t` (so it never starts early), under the unique key
//!   `cron:<name>:<t>` held for [`UNIQUE_TTL_MS`] (so a late orchestrator
//!   cannot recreate a tick whose job already finished and expired).
//! - Ticks are computed with croner in the entry's time zone (UTC by default),
//!   in Redis time: the loop converts through [`RedisClock`], so a host whose
//!   clock is off enqueues on Redis's schedule.
//! - Missed ticks: at start-up the most recent past tick is enqueued when it
//!   is at most `cron_misfire_grace_seconds` old; older ones are skipped. From
//!   then on every tick is enqueued.
//! - The loop sleeps until the next enqueue moment (no polling), computed from
//!   the absolute tick times, so it does not drift.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone as _;
use chrono_tz::Tz;
use croner::Cron;
use rrq_store::{EnqueueRequest, EnqueueRule, Enqueued, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::RedisClock;
use crate::config::Config;

/// How long before its tick a job is enqueued.
pub const ENQUEUE_LEAD_MS: i64 = 1000;
/// How long a tick's unique key is held.
pub const UNIQUE_TTL_MS: i64 = 24 * 3600 * 1000;

/// One `[[rrq.cron_jobs]]` entry, ready to run.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Effective name (`name`, else `function_name`).
    pub name: String,
    /// Handler.
    pub function_name: String,
    /// Queue of the tick jobs.
    pub queue: String,
    /// Params as JSON text.
    pub params_json: String,
    /// Time zone of the schedule.
    pub tz: Tz,
    /// Parsed schedule.
    pub cron: Cron,
}

/// Parses a schedule: 5 fields, or 6 with leading seconds.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    crate::config::validate_schedule(schedule)?;
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| format!("{schedule:?} is not a valid cron expression: {e}"))
}

/// The entries of `cfg` (validated already; errors name the entry and key).
pub fn entries(cfg: &Config) -> Result<Vec<Entry>, String> {
    cfg.cron_jobs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.effective_name().to_owned();
            let cron = parse_schedule(&c.schedule)
                .map_err(|m| format!("rrq.cron_jobs[{i}].schedule (entry {name:?}): {m}"))?;
            let tz = match &c.timezone {
                Some(tz) => tz.parse::<Tz>().map_err(|_| {
                    format!("rrq.cron_jobs[{i}].timezone (entry {name:?}): {tz:?} is not an IANA time zone")
                })?,
                None => Tz::UTC,
            };
            let params_json = serde_json::to_string(&c.params)
                .map_err(|e| format!("rrq.cron_jobs[{i}].params (entry {name:?}): {e}"))?;
            Ok(Entry {
                name,
                function_name: c.function_name.clone(),
                queue: c
                    .queue_name
                    .clone()
                    .unwrap_or_else(|| cfg.default_queue_name.clone()),
                params_json,
                tz,
                cron,
            })
        })
        .collect()
}

/// Job id (and unique key) of tick `t` of entry `name`.
pub fn job_id(name: &str, tick_ms: i64) -> String {
    format!("cron:{name}:{tick_ms}")
}

fn at_second(tz: Tz, ms: i64) -> Option<chrono::DateTime<Tz>> {
    tz.timestamp_opt(ms.div_euclid(1000), 0).single()
}

/// First tick strictly after `after_ms`.
pub fn next_tick_after(cron: &Cron, tz: Tz, after_ms: i64) -> Option<i64> {
    // Ticks fall on whole seconds: the first one after the second that
    // contains `after_ms` is the first one after `after_ms`.
    let start = at_second(tz, after_ms)?;
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Latest tick at or before `at_ms`.
pub fn latest_tick_at_or_before(cron: &Cron, tz: Tz, at_ms: i64) -> Option<i64> {
    let start = at_second(tz, at_ms)?;
    cron.find_previous_occurrence(&start, true)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The missed tick to enqueue at start-up: the most recent one, if it is at
/// most `grace_ms` old at `now_ms`.
pub fn catch_up_tick(cron: &Cron, tz: Tz, now_ms: i64, grace_ms: i64) -> Option<i64> {
    latest_tick_at_or_before(cron, tz, now_ms).filter(|t| now_ms - t <= grace_ms)
}

/// Enqueues tick `t` of `entry` (idempotent across orchestrators).
pub async fn enqueue_tick(
    store: &Store,
    cfg: &Config,
    entry: &Entry,
    tick_ms: i64,
) -> rrq_store::Result<Enqueued> {
    let id = job_id(&entry.name, tick_ms);
    let req = EnqueueRequest {
        id: id.clone(),
        function_name: entry.function_name.clone(),
        queue: entry.queue.clone(),
        params_json: entry.params_json.clone(),
        max_retries: i64::from(cfg.default_max_retries),
        run_at_ms: tick_ms,
        max_params_bytes: i64::try_from(cfg.max_payload_bytes).unwrap_or(i64::MAX),
        rule: Some(EnqueueRule::Unique {
            key: id,
            ttl_ms: UNIQUE_TTL_MS,
        }),
        ..Default::default()
    };
    let result = store.enqueue(&req).await?;
    match &result {
        Enqueued::Created { id, .. } => {
            info!(cron = %entry.name, job_id = %id, "enqueued cron tick")
        }
        other => debug!(cron = %entry.name, tick_ms, "cron tick already enqueued: {other:?}"),
    }
    Ok(result)
}

/// Enqueues, for each entry, the most recent missed tick within the grace.
/// Returns the Redis time the check was made at (ticks after it are the loop's).
pub async fn catch_up(
    store: &Store,
    cfg: &Config,
    entries: &[Entry],
    clock: &RedisClock,
) -> rrq_store::Result<i64> {
    let sent = std::time::Instant::now();
    let now = store.time_ms().await?;
    clock.observe(now, sent, std::time::Instant::now());
    for e in entries {
        if let Some(t) = catch_up_tick(&e.cron, e.tz, now, cfg.cron_misfire_grace_ms()) {
            enqueue_tick(store, cfg, e, t).await?;
        }
    }
    Ok(now)
}

/// Enqueues every tick after `from_ms` until `stop`.
pub async fn run(
    store: Store,
    cfg: Arc<Config>,
    entries: Arc<Vec<Entry>>,
    clock: Arc<RedisClock>,
    from_ms: i64,
    stop: CancellationToken,
) {
    let mut next: Vec<Option<i64>> = entries
        .iter()
        .map(|e| next_tick_after(&e.cron, e.tz, from_ms))
        .collect();
    loop {
        let Some((i, tick)) = next
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
        else {
            return; // no entry has a future tick
        };
        let at = tick - ENQUEUE_LEAD_MS;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(clock.instant_of(at)) => {}
        }
        // The clock estimate may have moved while we slept: sleep again if
        // the enqueue moment is still ahead in Redis time.
        if clock.now_ms() < at - 5 {
            continue;
        }
        let now = clock.now_ms();
        if now - tick > cfg.cron_misfire_grace_ms().max(ENQUEUE_LEAD_MS) {
            // We were stalled (suspended host, Redis time jump): skip the
            // missed ticks as a start-up would, rather than burst through them.
            warn!(cron = %entries[i].name, tick, "cron tick missed by more than cron_misfire_grace_seconds; skipping to the next one");
            next[i] = next_tick_after(&entries[i].cron, entries[i].tz, now - ENQUEUE_LEAD_MS);
            continue;
        }
        let entry = entries[i].clone();
        let (store, cfg) = (store.clone(), cfg.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=5 {
                match enqueue_tick(&store, &cfg, &entry, tick).await {
                    Ok(_) => return,
                    Err(e) if attempt < 5 && e.is_retryable() => {
                        warn!(cron = %entry.name, tick, "enqueueing a cron tick failed, retrying: {e}");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        warn!(cron = %entry.name, tick, "enqueueing a cron tick failed: {e}");
                        return;
                    }
                }
            }
        });
        next[i] = next_tick_after(&entries[i].cron, entries[i].tz, tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, tz: Tz) -> i64 {
        tz.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn every_second_ticks_on_whole_seconds() {
        let c = parse_schedule("*/1 * * * * *").unwrap();
        let base = ms(2026, 1, 1, 0, 0, 0, Tz::UTC);
        assert_eq!(next_tick_after(&c, Tz::UTC, base), Some(base + 1000));
        assert_eq!(next_tick_after(&c, Tz::UTC, base + 1), Some(base + 1000));
        assert_eq!(next_tick_after(&c, Tz::UTC, base + 999), Some(base + 1000));
        assert_eq!(latest_tick_at_or_before(&c, Tz::UTC, base), Some(base));
        assert_eq!(
            latest_tick_at_or_before(&c, Tz::UTC, base + 999),
            Some(base)
        );
    }

    #[test]
    fn five_field_schedules_tick_on_minutes() {
        let c = parse_schedule("*/5 * * * *").unwrap();
        let base = ms(2026, 1, 1, 10, 2, 30, Tz::UTC);
        assert_eq!(
            next_tick_after(&c, Tz::UTC, base),
            Some(ms(2026, 1, 1, 10, 5, 0, Tz::UTC))
        );
        assert_eq!(
            latest_tick_at_or_before(&c, Tz::UTC, base),
            Some(ms(2026, 1, 1, 10, 0, 0, Tz::UTC))
        );
    }

    #[test]
    fn ticks_follow_the_time_zone() {
        let c = parse_schedule("0 0 9 * * *").unwrap();
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // 9:00 in Paris is 8:00 UTC in winter and 7:00 UTC in summer.
        let jan = ms(2026, 1, 10, 12, 0, 0, Tz::UTC);
        assert_eq!(
            next_tick_after(&c, paris, jan),
            Some(ms(2026, 1, 11, 8, 0, 0, Tz::UTC))
        );
        let jul = ms(2026, 7, 10, 12, 0, 0, Tz::UTC);
        assert_eq!(
            next_tick_after(&c, paris, jul),
            Some(ms(2026, 7, 11, 7, 0, 0, Tz::UTC))
        );
        assert_eq!(
            next_tick_after(&c, Tz::UTC, jul),
            Some(ms(2026, 7, 11, 9, 0, 0, Tz::UTC))
        );
    }

    #[test]
    fn misfire_keeps_only_the_latest_tick_within_grace() {
        let c = parse_schedule("0 * * * * *").unwrap();
        let tick = ms(2026, 3, 1, 12, 0, 0, Tz::UTC);
        // 30 s late, grace 60 s: the latest tick is enqueued.
        assert_eq!(
            catch_up_tick(&c, Tz::UTC, tick + 30_000, 60_000),
            Some(tick)
        );
        // Exactly at the grace: still enqueued.
        assert_eq!(
            catch_up_tick(&c, Tz::UTC, tick + 60_000, 60_000),
            Some(tick + 60_000)
        );
        assert_eq!(
            catch_up_tick(&c, Tz::UTC, tick + 59_999, 59_999),
            Some(tick)
        );
        // 45 s late, grace 10 s: skipped.
        assert_eq!(catch_up_tick(&c, Tz::UTC, tick + 45_000, 10_000), None);
        // Grace 0: only a tick at this very second.
        assert_eq!(catch_up_tick(&c, Tz::UTC, tick, 0), Some(tick));
        assert_eq!(catch_up_tick(&c, Tz::UTC, tick + 1000, 0), None);
    }

    #[test]
    fn job_ids_are_deterministic() {
        assert_eq!(
            job_id("report", 1_700_000_000_000),
            "cron:report:1700000000000"
        );
    }

    #[test]
    fn entries_apply_defaults() {
        let cfg = Config::from_toml(
            "[rrq]\ndefault_queue_name = \"q0\"\n[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\nparams = { a = 1 }\n\
             [[rrq.cron_jobs]]\nname = \"g2\"\nfunction_name = \"g\"\nschedule = \"* * * * *\"\nqueue_name = \"q1\"\ntimezone = \"Asia/Tokyo\"\n",
            "t",
        )
        .unwrap();
        let e = entries(&cfg).unwrap();
        assert_eq!((e[0].name.as_str(), e[0].queue.as_str()), ("f", "q0"));
        assert_eq!(e[0].params_json, r#"{"a":1}"#);
        assert_eq!(e[0].tz, Tz::UTC);
        assert_eq!((e[1].name.as_str(), e[1].queue.as_str()), ("g2", "q1"));
        assert_eq!(e[1].params_json, "{}");
        assert_eq!(e[1].tz.name(), "Asia/Tokyo");
    }
}
