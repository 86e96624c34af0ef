//! Redis time on this host: every schedule decision (cron ticks, heartbeat
//! expiry, span timestamps) is made in Redis `TIME`, never in the host's wall
//! clock, so a host whose clock is off cannot start work early or late.
//!
//! The clock keeps the offset between Redis time and this process's
//! monotonic clock, refreshed from every Redis reply that carries a time
//! (claims, heartbeats). Monotonic time cannot jump, so between refreshes the
//! estimate only drifts by the hosts' clock rate difference.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// See the module documentation.
#[derive(Debug)]
pub struct RedisClock {
    base: Instant,
    /// Redis ms minus ms elapsed since `base`.
    offset_ms: AtomicI64,
    known: AtomicBool,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisClock {
    /// A clock that knows nothing yet (it reads as the host's wall clock).
    pub fn new() -> Self {
        let base = Instant::now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            base,
            offset_ms: AtomicI64::new(wall),
            known: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self, at: Instant) -> i64 {
        at.saturating_duration_since(self.base).as_millis() as i64
    }

    /// Records that Redis answered `redis_ms` to a request sent at `sent`
    /// whose reply arrived at `received` (the reading is taken at the midpoint).
    pub fn observe(&self, redis_ms: i64, sent: Instant, received: Instant) {
        let mid = sent + received.saturating_duration_since(sent) / 2;
        self.offset_ms
            .store(redis_ms - self.elapsed_ms(mid), Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }

    /// True once a Redis time was observed.
    pub fn is_known(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }

    /// Redis time now, epoch ms (estimated).
    pub fn now_ms(&self) -> i64 {
        self.at_ms(Instant::now())
    }

    /// Redis time at the monotonic instant `at`, epoch ms.
    pub fn at_ms(&self, at: Instant) -> i64 {
        self.elapsed_ms(at) + self.offset_ms.load(Ordering::Relaxed)
    }

    /// The monotonic instant at which Redis time reaches `redis_ms` (now when
    /// that is already past).
    pub fn instant_of(&self, redis_ms: i64) -> tokio::time::Instant {
        let ahead = redis_ms - self.now_ms();
        tokio::time::Instant::now() + Duration::from_millis(ahead.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_observed_offset() {
        let c = RedisClock::new();
        assert!(!c.is_known());
        let now = Instant::now();
        c.observe(1_000_000, now, now);
        assert!(c.is_known());
        let later = now + Duration::from_millis(250);
        assert_eq!(c.at_ms(later), 1_000_250);
        // Round trip: the reading sits at the midpoint.
        c.observe(2_000_000, now, now + Duration::from_millis(100));
        assert_eq!(c.at_ms(now + Duration::from_millis(50)), 2_000_000);
    }
}
