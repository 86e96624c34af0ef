//! Lease renewal: keeps the leases of running (and held) jobs alive, and
//! self-fences when they cannot be kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rrq_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::dispatcher::Dispatcher;

/// Most jobs renewed in one script call.
const CHUNK: usize = 500;

/// Renews every `lease_renew_interval` until `stop`, and self-fences on its
/// own timer.
pub async fn run(
    cfg: Arc<Config>,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    owner: String,
    stop: CancellationToken,
) {
    // The fence runs beside the renewals rather than after them: during a
    // partition every renewal call waits out its response timeout, and a
    // fence that waited behind them would act after the new owner started.
    tokio::join!(
        renew(cfg.clone(), store, dispatcher.clone(), owner, stop.clone()),
        fence(cfg, dispatcher, stop),
    );
}

async fn renew(
    cfg: Arc<Config>,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    owner: String,
    stop: CancellationToken,
) {
    let lease = cfg.lease();
    let lease_ms = lease.as_millis() as i64;
    let mut tick = tokio::time::interval(cfg.lease_renew_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (queue, jobs) in dispatcher.lease_snapshot() {
            for chunk in jobs.chunks(CHUNK) {
                // Validity counts from when the request was sent: Redis sets
                // the deadline later than that, so our view never outlives it.
                let started = Instant::now();
                match store.renew_lease(&queue, &owner, lease_ms, chunk).await {
                    Ok(renewed) => {
                        dispatcher.leases_renewed(&queue, chunk, started + lease);
                        if !renewed.lost.is_empty() {
                            warn!(queue, lost = renewed.lost.len(), "leases lost");
                            dispatcher.leases_lost(&queue, &renewed.lost);
                        }
                        // Backstop of the cancel channel: a lost message is
                        // found here (sending a second cancel is avoided by
                        // the dispatcher).
                        for id in &renewed.cancel_requested {
                            dispatcher.cancel_requested(&queue, id);
                        }
                    }
                    Err(e) => warn!(queue, "lease renewal failed: {e}"),
                }
            }
        }
    }
}

/// Leases we could not renew in time may already belong to someone else:
/// stop those executions rather than race the new owner. The monotonic clock
/// decides, so a wall-clock jump cannot extend them. Wakes at the earliest
/// expiry we know of (renewals only push it later; a new claim's expiry is a
/// full lease away), and at least every renew interval.
async fn fence(cfg: Arc<Config>, dispatcher: Arc<Dispatcher>, stop: CancellationToken) {
    let idle = cfg.lease_renew_interval();
    loop {
        let now = Instant::now();
        let wake = dispatcher
            .earliest_lease_expiry()
            .map_or(now + idle, |at| at.min(now + idle));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let mut expired: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (queue, id) in dispatcher.expired_leases(Instant::now()) {
            expired.entry(queue).or_default().push(id);
        }
        for (queue, ids) in expired {
            warn!(
                queue,
                n = ids.len(),
                "leases could not be renewed before they expired; cancelling"
            );
            dispatcher.leases_lost(&queue, &ids);
        }
    }
}
