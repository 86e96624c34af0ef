//! Every Redis key and channel name RRQ uses (see docs/redis-schema.md).
//!
//! Key names are built here and in `python/src/rrq/store.py` only. Every
//! per-queue key carries the queue as a Redis Cluster hash tag (`{<queue>}`)
//! so that all keys one script touches live in one slot.

/// Set of every queue a producer has used; orchestrators serve these.
pub const QUEUES: &str = "rrq:queues";

/// Pattern matching the wake channel of every queue (for `PSUBSCRIBE`).
pub const WAKE_PATTERN: &str = "rrq:*:wake";

/// Key names of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKeys {
    queue: String,
    prefix: String,
}

impl QueueKeys {
    /// Key names for `queue`.
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.to_owned(),
            prefix: format!("rrq:{{{queue}}}:"),
        }
    }

    /// The queue name these keys belong to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Hash holding one job record: `rrq:{<queue>}:job:<id>`.
    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// Prefix of every job hash of the queue: `rrq:{<queue>}:job:`.
    pub fn job_prefix(&self) -> String {
        format!("{}job:", self.prefix)
    }

    /// Sorted set of waiting job ids, scored by run time: `rrq:{<queue>}:due`.
    pub fn due(&self) -> String {
        format!("{}due", self.prefix)
    }

    /// Sorted set of running job ids, scored by lease deadline: `rrq:{<queue>}:active`.
    pub fn active(&self) -> String {
        format!("{}active", self.prefix)
    }

    /// Sorted set of dead-lettered job ids: `rrq:{<queue>}:dlq`.
    pub fn dlq(&self) -> String {
        format!("{}dlq", self.prefix)
    }

    /// Channel announcing that a job became due: `rrq:{<queue>}:wake`.
    pub fn wake_channel(&self) -> String {
        format!("{}wake", self.prefix)
    }

    /// Channel announcing a job's terminal status: `rrq:{<queue>}:done:<id>`.
    pub fn done_channel(&self, id: &str) -> String {
        format!("{}done:{id}", self.prefix)
    }

    /// Prefix of the done channels: `rrq:{<queue>}:done:`.
    pub fn done_channel_prefix(&self) -> String {
        format!("{}done:", self.prefix)
    }
}

/// The queue named by a wake channel `rrq:{<queue>}:wake`, if it is one.
pub fn queue_of_wake_channel(channel: &str) -> Option<&str> {
    let inner = channel.strip_prefix("rrq:{")?.strip_suffix("}:wake")?;
    if inner.is_empty() { None } else { Some(inner) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_schema() {
        let k = QueueKeys::new("emails");
        assert_eq!(k.job("j1"), "rrq:{emails}:job:j1");
        assert_eq!(k.job_prefix(), "rrq:{emails}:job:");
        assert_eq!(k.due(), "rrq:{emails}:due");
        assert_eq!(k.active(), "rrq:{emails}:active");
        assert_eq!(k.dlq(), "rrq:{emails}:dlq");
        assert_eq!(k.wake_channel(), "rrq:{emails}:wake");
        assert_eq!(k.done_channel("j1"), "rrq:{emails}:done:j1");
        assert_eq!(k.done_channel_prefix(), "rrq:{emails}:done:");
        assert_eq!(QUEUES, "rrq:queues");
    }

    #[test]
    fn wake_channel_round_trips() {
        for q in ["default", "a:b", "with{brace", "x}:wake"] {
            let k = QueueKeys::new(q);
            assert_eq!(queue_of_wake_channel(&k.wake_channel()), Some(q));
        }
        assert_eq!(queue_of_wake_channel("rrq:{}:wake"), None);
        assert_eq!(queue_of_wake_channel("rrq:{q}:done:1"), None);
        assert_eq!(queue_of_wake_channel("other"), None);
    }
}
