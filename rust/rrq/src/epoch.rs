//! Notices that Redis lost its data.
//!
//! A Redis restarted without persistence (or flushed) comes back empty, and
//! every job it held is gone with nothing to say so. RRQ keeps one key,
//! `<prefix>:epoch`, holding a random value that every orchestrator learns at
//! start and checks with each health heartbeat. When the value changes, or
//! the key is gone, the data it lived beside is gone too: the orchestrator
//! logs an error marked CRITICAL, counts it in `redis_data_losses` of its
//! heartbeat (what `rrq check` shows), adopts the new epoch and keeps serving.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::error;

/// The epoch this orchestrator knows, and how many losses it saw.
#[derive(Debug, Default)]
pub struct EpochWatch {
    known: Mutex<Option<String>>,
    losses: AtomicU64,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// First check: the epoch was learned.
    Learned,
    /// Same epoch as before.
    Unchanged,
    /// The epoch changed: Redis lost its data.
    Lost {
        /// The epoch known before.
        was: String,
        /// The epoch now.
        now: String,
    },
}

impl EpochWatch {
    /// Records the epoch read from Redis and says what changed.
    pub fn observe(&self, current: String) -> Observation {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let observation = match known.as_deref() {
            None => Observation::Learned,
            Some(k) if k == current => Observation::Unchanged,
            Some(k) => Observation::Lost {
                was: k.to_owned(),
                now: current.clone(),
            },
        };
        if let Observation::Lost { was, now } = &observation {
            self.losses.fetch_add(1, Ordering::Relaxed);
            error!(
                was = %was, now = %now,
                "CRITICAL: Redis lost its data: the epoch key changed (Redis restarted \
                 without persistence, or was flushed). Jobs acknowledged before this moment \
                 may be gone; serving on"
            );
        }
        *known = Some(current);
        observation
    }

    /// Data losses seen since start.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    /// Creates the epoch `key` if absent and reads it (one round trip).
    pub async fn check(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        key: &str,
    ) -> redis::RedisResult<Observation> {
        let candidate = format!("{:016x}", fastrand::u64(..));
        let (current,): (String,) = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(&candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(key)
            .query_async(conn)
            .await?;
        Ok(self.observe(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_then_notices_a_change_once() {
        let w = EpochWatch::default();
        assert_eq!(w.observe("a".into()), Observation::Learned);
        assert_eq!(w.observe("a".into()), Observation::Unchanged);
        assert_eq!(
            w.observe("b".into()),
            Observation::Lost {
                was: "a".into(),
                now: "b".into()
            }
        );
        assert_eq!(w.observe("b".into()), Observation::Unchanged);
        assert_eq!(w.losses(), 1);
    }
}
