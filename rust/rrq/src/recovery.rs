//! Lease recovery: gives back jobs whose lease expired (their orchestrator
//! died or was cut off), through `recover_expired.lua`.

use std::sync::Arc;

use rrq_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::scheduler::ServedQueues;

/// Jobs recovered per script call; the sweep loops while calls come back full.
const BATCH: usize = 100;

/// Sweeps every served queue every `recovery_interval` until `stop`.
pub async fn run(
    cfg: Arc<Config>,
    store: Store,
    queues: Arc<ServedQueues>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.recovery_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
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
