//! Lease recovery: gives back jobs whose lease expired (their orchestrator
//! died or was cut off), through `recover_expired.lua`; and, on the same
//! tick, one bounded step of pruning the id registry (`forget_ids.lua`).

use std::sync::Arc;

use rrq_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::scheduler::ServedQueues;

/// Jobs recovered per script call; the sweep loops while calls come back full.
const BATCH: usize = 100;

/// Id-registry entries looked at per tick. A record expires without touching
/// the registry; at the default 5 s sweep this forgets up to ~100 chosen ids
/// a second, more than producers choose in most systems, and each step is
/// one HSCAN, one pipeline of EXISTS and at most one short script.
const IDS_PER_TICK: usize = 500;

/// Sweeps every served queue every `recovery_interval` until `stop`.
pub async fn run(
    cfg: Arc<Config>,
    store: Store,
    queues: Arc<ServedQueues>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.recovery_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ids_cursor = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.forget_stale_ids(ids_cursor, IDS_PER_TICK).await {
            Ok((next, dropped)) => {
                ids_cursor = next;
                if dropped > 0 {
                    info!(dropped, "forgot registered ids whose job no longer exists");
                }
            }
            Err(e) => warn!("pruning the id registry failed: {e}"),
        }
        for queue in queues.list() {
            loop {
                match store
                    .recover_expired(
                        &queue,
                        BATCH,
                        cfg.dlq_retention_ms(),
                        cfg.default_result_ttl_ms(),
                    )
                    .await
                {
                    Ok(r) => {
                        let n = r.requeued + r.dead_lettered + r.cancelled;
                        if n > 0 {
                            info!(
                                queue,
                                requeued = r.requeued,
                                dead_lettered = r.dead_lettered,
                                cancelled = r.cancelled,
                                "recovered expired leases"
                            );
                        }
                        if (n as usize) < BATCH || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!(queue, "lease recovery failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}
