//! Every Redis key and channel name RRQ uses (see docs/redis-schema.md).
//!
//! Key names are built here and in `python/src/rrq/store.py` only. Every
//! per-queue key carries the queue as a Redis Cluster hash tag (`{<queue>}`)
//! so that all keys one script touches live in one slot.

/// Set of every queue a producer has used; orchestrators serve these.
pub const QUEUES: &str = "rrq:queues";

/// Pattern matching the wake channel of every queue (for `PSUBSCRIBE`).
pub const WAKE_PATTERN: &str = "rrq:*:wake";

/// Pattern matching the cancel channel of every queue (for `PSUBSCRIBE`).
pub const CANCEL_PATTERN: &str = "rrq:*:cancel";

/// Sorted set of live orchestrator instance ids, scored by the Redis time
/// (ms) their heartbeat expires.
pub const ORCHESTRATORS: &str = "rrq:orchestrators";

/// Random value that changes only when Redis loses its data (see the
/// orchestrator's `epoch` module).
pub const EPOCH: &str = "rrq:epoch";

/// Hash holding one orchestrator's heartbeat: `rrq:orchestrator:<instance id>`.
pub fn orchestrator(instance_id: &str) -> String {
    format!("rrq:orchestrator:{instance_id}")
}

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

    /// Channel telling orchestrators that a running job should be cancelled
    /// (message: the job id): `rrq:{<queue>}:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }

    /// Unique-rule key: `rrq:{<queue>}:unique:<key>`.
    pub fn unique(&self, key: &str) -> String {
        format!("{}unique:{key}", self.prefix)
    }

    /// Rate-limit-rule key: `rrq:{<queue>}:rate_limit:<key>`.
    pub fn rate_limit(&self, key: &str) -> String {
        format!("{}rate_limit:{key}", self.prefix)
    }

    /// Debounce-rule pointer: `rrq:{<queue>}:debounce:<key>`.
    pub fn debounce(&self, key: &str) -> String {
        format!("{}debounce:{key}", self.prefix)
    }

    /// Prefix of the debounce pointers: `rrq:{<queue>}:debounce:`.
    pub fn debounce_prefix(&self) -> String {
        format!("{}debounce:", self.prefix)
    }
}

/// The queue named by a cancel channel `rrq:{<queue>}:cancel`, if it is one.
pub fn queue_of_cancel_channel(channel: &str) -> Option<&str> {
    let inner = channel.strip_prefix("rrq:{")?.strip_suffix("}:cancel")?;
    if inner.is_empty() { None } else { Some(inner) }
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
        assert_eq!(k.cancel_channel(), "rrq:{emails}:cancel");
        assert_eq!(k.unique("u"), "rrq:{emails}:unique:u");
        assert_eq!(k.rate_limit("r"), "rrq:{emails}:rate_limit:r");
        assert_eq!(k.debounce("d"), "rrq:{emails}:debounce:d");
        assert_eq!(k.debounce_prefix(), "rrq:{emails}:debounce:");
        assert_eq!(ORCHESTRATORS, "rrq:orchestrators");
        assert_eq!(orchestrator("h-1"), "rrq:orchestrator:h-1");
    }

    #[test]
    fn cancel_channel_round_trips() {
        for q in ["default", "a:b", "x}:cancel"] {
            assert_eq!(
                queue_of_cancel_channel(&QueueKeys::new(q).cancel_channel()),
                Some(q)
            );
        }
        assert_eq!(queue_of_cancel_channel("rrq:{q}:wake"), None);
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
