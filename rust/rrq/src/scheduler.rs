//! The claim loop: claims due jobs for the free slots of each queue's runner.
//!
//! It sleeps until something can change the answer: a wake-up message for a
//! queue, a slot freeing or a runner connecting, the time the claim script
//! said the next deferred job falls due, a safety tick, or shutdown. There is
//! no polling: an idle orchestrator starts a new job as soon as the enqueue's
//! wake-up arrives.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rrq_store::{QueueKeys, Store};
use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::dispatcher::{Claimed, Dispatcher};
use crate::settle::Settler;

/// Most jobs one claim call takes.
const MAX_CLAIM: usize = 256;
/// Safety tick: claims every queue even if a wake-up was lost.
const SAFETY_TICK: Duration = Duration::from_secs(1);
/// Pause after a failed claim of a queue.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Dirty {
    all: bool,
    /// A slot freed: worth a claim only where slots, not due jobs, ran out.
    capacity: bool,
    queues: HashSet<String>,
}

/// Wake-up signal of the scheduler, with the queues worth claiming from.
#[derive(Debug, Default)]
pub struct Wake {
    notify: Notify,
    dirty: Mutex<Dirty>,
}

impl Wake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job may have become due in `queue`.
    pub fn queue(&self, queue: &str) {
        self.lock().queues.insert(queue.to_owned());
        self.notify.notify_one();
    }

    /// Slots freed: look again at the queues that had more due jobs than slots.
    pub fn slots_freed(&self) {
        self.lock().capacity = true;
        self.notify.notify_one();
    }

    /// Runners came or went (or a wake-up may have been lost): look at every queue.
    pub fn all(&self) {
        self.lock().all = true;
        self.notify.notify_one();
    }

    fn take(&self) -> Dirty {
        std::mem::take(&mut *self.lock())
    }
}

/// The queues this orchestrator serves.
#[derive(Debug)]
pub struct ServedQueues {
    /// Set by `--queue`: exactly these, no discovery.
    pub fixed: bool,
    set: Mutex<BTreeSet<String>>,
}

impl ServedQueues {
    /// Starts with `initial`.
    pub fn new(initial: impl IntoIterator<Item = String>, fixed: bool) -> Self {
        Self {
            fixed,
            set: Mutex::new(initial.into_iter().collect()),
        }
    }

    /// Adds a discovered queue (ignored with `--queue`); true if it is new.
    pub fn add(&self, queue: &str) -> bool {
        if self.fixed || queue.is_empty() {
            return false;
        }
        let added = self
            .set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned());
        if added {
            info!(queue, "serving queue");
        }
        added
    }

    /// True if `queue` is served.
    pub fn contains(&self, queue: &str) -> bool {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue)
    }

    /// All served queues.
    pub fn list(&self) -> Vec<String> {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The claim loop; see the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Redis.
    pub store: Store,
    /// Where claimed jobs go.
    pub dispatcher: Arc<Dispatcher>,
    /// Settle writer (its backlog matters for `--burst`).
    pub settler: Settler,
    /// Wake-up signal.
    pub wake: Arc<Wake>,
    /// Served queues.
    pub queues: Arc<ServedQueues>,
    /// Lease owner id.
    pub owner: String,
    /// Redis time, refreshed from every claim.
    pub clock: Arc<crate::clock::RedisClock>,
    /// Stop claiming when cancelled.
    pub stop: CancellationToken,
    /// `--burst`: cancel this when there is nothing left to do.
    pub burst_done: Option<CancellationToken>,
}

impl Scheduler {
    /// Runs until `stop` is cancelled (or, in burst mode, the work is done).
    pub async fn run(self) {
        let lease_ms = self.cfg.lease().as_millis() as i64;
        let mut next_due: BTreeMap<String, TokioInstant> = BTreeMap::new();
        let mut tick = tokio::time::interval(SAFETY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut everything = true;
        // Queues whose last look ran out of free slots before it ran out of
        // due jobs. A freed slot is worth a claim only for these: any other
        // queue had nothing due, and a job that becomes due announces itself
        // (wake channel, or the due time the claim script returned). Claiming
        // every queue on every freed slot doubled the claims of a lightly
        // loaded orchestrator: one for the job, one empty after its outcome.
        let mut slot_limited: HashSet<String> = HashSet::new();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let dirty = self.wake.take();
            let now = TokioInstant::now();
            let candidates: Vec<String> = if everything || dirty.all {
                self.queues.list()
            } else {
                let mut c: BTreeSet<String> = dirty.queues.into_iter().collect();
                if dirty.capacity {
                    c.extend(slot_limited.iter().cloned());
                }
                c.extend(
                    next_due
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(q, _)| q.clone()),
                );
                c.into_iter().filter(|q| self.queues.contains(q)).collect()
            };
            everything = false;
            for queue in candidates {
                if self.stop.is_cancelled() {
                    return;
                }
                let Some(runner) = self.cfg.runner_for_queue(&queue) else {
                    continue;
                };
                let want = self.dispatcher.claimable(runner).min(MAX_CLAIM);
                if want == 0 {
                    // A freed slot or a new session wakes us for every queue.
                    // Until then a due time already past is no reason to wake:
                    // keeping it would make the sleep below return at once and
                    // spin this loop while the runner is full.
                    if next_due
                        .get(&queue)
                        .is_some_and(|at| *at <= TokioInstant::now())
                    {
                        next_due.remove(&queue);
                    }
                    slot_limited.insert(queue);
                    continue;
                }
                let claimed_at = Instant::now();
                match self.store.claim(&queue, want, &self.owner, lease_ms).await {
                    Ok(claim) => {
                        self.clock.observe(claim.now_ms, claimed_at, Instant::now());
                        match claim.next_due_in_ms {
                            Some(ms) => {
                                next_due.insert(
                                    queue.clone(),
                                    TokioInstant::from_std(claimed_at)
                                        + Duration::from_millis(ms.max(0) as u64),
                                );
                            }
                            None => {
                                next_due.remove(&queue);
                            }
                        }
                        let n = claim.jobs.len();
                        if n > 0 {
                            debug!(queue, n, "claimed");
                            let lease_valid_until = claimed_at + self.cfg.lease();
                            self.dispatcher.dispatch(
                                claim
                                    .jobs
                                    .into_iter()
                                    .map(|job| Claimed {
                                        queue: queue.clone(),
                                        job,
                                        claim_now_ms: claim.now_ms,
                                        claimed_at,
                                        lease_valid_until,
                                    })
                                    .collect(),
                            );
                        }
                        if n == want {
                            // There may be more due jobs than we took.
                            self.wake.queue(&queue);
                            slot_limited.insert(queue);
                        } else {
                            slot_limited.remove(&queue);
                        }
                    }
                    Err(e) => {
                        warn!(queue, "claim failed: {e}");
                        next_due.insert(queue.clone(), TokioInstant::now() + CLAIM_ERROR_PAUSE);
                    }
                }
            }

            if let Some(done) = &self.burst_done
                && self.burst_finished().await
            {
                info!("burst: no job is due or running in the served queues; stopping");
                done.cancel();
                return;
            }

            let earliest = next_due.values().min().copied();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake.notify.notified() => {}
                _ = sleep_until_opt(earliest) => {}
                _ = tick.tick() => { everything = true; }
            }
        }
    }

    /// True when nothing is running here, no settle is pending and no served
    /// queue has a job that is due, running anywhere, or waiting for a retry.
    async fn burst_finished(&self) -> bool {
        if self.dispatcher.local_work() > 0 || self.settler.pending() > 0 {
            return false;
        }
        let mut conn = self.store.connection();
        for queue in self.queues.list() {
            match queue_idle(&mut conn, &self.store.namespace().queue(&queue)).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(e) => {
                    warn!(queue, "burst check failed: {e}");
                    return false;
                }
            }
        }
        // Re-check: a claim may have raced the probe.
        self.dispatcher.local_work() == 0 && self.settler.pending() == 0
    }
}

/// Looks at how many of the waiting jobs a burst probe inspects for retries.
const BURST_PROBE: isize = 100;

/// No job of `queue` is due now, none is active (here or elsewhere), and none
/// of the first waiting ones is a retry waiting for its backoff (a retry is
/// work still in progress; a job deferred by its producer is not).
async fn queue_idle(
    conn: &mut redis::aio::ConnectionManager,
    k: &QueueKeys,
) -> redis::RedisResult<bool> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let (due_now, active, upcoming): (i64, i64, Vec<String>) = redis::pipe()
        .cmd("ZCOUNT")
        .arg(k.due())
        .arg("-inf")
        .arg(now_ms)
        .cmd("ZCARD")
        .arg(k.active())
        .cmd("ZRANGE")
        .arg(k.due())
        .arg(0)
        .arg(BURST_PROBE - 1)
        .query_async(conn)
        .await?;
    if due_now > 0 || active > 0 {
        return Ok(false);
    }
    if upcoming.is_empty() {
        return Ok(true);
    }
    let mut pipe = redis::pipe();
    for id in &upcoming {
        pipe.cmd("HGET").arg(k.job(id)).arg("attempt");
    }
    let attempts: Vec<Option<i64>> = pipe.query_async(conn).await?;
    Ok(attempts.into_iter().all(|a| a.unwrap_or(0) == 0))
}

async fn sleep_until_opt(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_collects_dirty_queues() {
        let w = Wake::default();
        w.queue("a");
        w.queue("b");
        let d = w.take();
        assert!(!d.all);
        assert_eq!(d.queues.len(), 2);
        w.all();
        assert!(w.take().all);
        assert!(!w.take().all);
        w.slots_freed();
        let d = w.take();
        assert!(d.capacity && !d.all && d.queues.is_empty());
        assert!(!w.take().capacity);
    }

    #[test]
    fn fixed_queues_ignore_discovery() {
        let q = ServedQueues::new(["a".to_owned()], true);
        assert!(!q.add("b"));
        assert_eq!(q.list(), vec!["a".to_owned()]);
        let q = ServedQueues::new(["a".to_owned()], false);
        assert!(q.add("b"));
        assert!(!q.add("b"));
        assert!(q.contains("b"));
    }
}
