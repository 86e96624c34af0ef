//! Every Redis key and channel name RRQ uses (see docs/redis-schema.md).
//!
//! Key names are built here, in `python/src/rrq/store.py` and in
//! `typescript/src/store.ts` only. Every key starts with the namespace's
//! prefix (`rrq` by default), and every per-queue key carries the queue as a
//! Redis Cluster hash tag (`{<queue>}`) so that all keys one script touches
//! live in one slot.

/// The key prefix when none is configured (`key_prefix` in `rrq.toml`).
pub const DEFAULT_PREFIX: &str = "rrq";

/// Longest key prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// A key prefix that cannot be used: see [`Namespace::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key_prefix must be 1 to {MAX_PREFIX_LEN} characters of letters, digits, '_', '-', '.' and ':', got {0:?}"
)]
pub struct InvalidPrefix(pub String);

/// Where one application's keys and channels live on a Redis server.
///
/// Keys live in a database, so two applications apart by database or by key
/// prefix never share a key. Pub/Sub channels do not: a PUBLISH reaches every
/// subscriber of the server (of the whole cluster on Redis Cluster), whatever
/// its database. So every channel name carries the database as well as the
/// prefix (`<prefix>:db<N>:{<queue>}:wake`), and a cancel, wake-up or done
/// message of one application never reaches another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// `<prefix>:`, the start of every key.
    keys: String,
    /// `<prefix>:db<N>:`, the start of every channel.
    channels: String,
}

impl Default for Namespace {
    /// The default prefix in database 0.
    fn default() -> Self {
        Self::from_valid(DEFAULT_PREFIX, 0)
    }
}

impl Namespace {
    /// The namespace of `prefix` in database `db`. The prefix is 1 to
    /// [`MAX_PREFIX_LEN`] characters of ASCII letters, digits, `_`, `-`, `.`
    /// and `:`: no braces (they would change the Redis Cluster hash slot) and
    /// no glob characters (channel patterns are built from it).
    pub fn new(prefix: &str, db: i64) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if valid {
            Ok(Self::from_valid(prefix, db))
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    fn from_valid(prefix: &str, db: i64) -> Self {
        Self {
            keys: format!("{prefix}:"),
            channels: format!("{prefix}:db{db}:"),
        }
    }

    /// The namespace of `prefix` in the database `client` connects to.
    pub fn of_client(prefix: &str, client: &redis::Client) -> Result<Self, InvalidPrefix> {
        Self::new(prefix, client.get_connection_info().redis_settings().db())
    }

    /// The key prefix, without its trailing `:`.
    pub fn prefix(&self) -> &str {
        &self.keys[..self.keys.len() - 1]
    }

    /// Set of every queue a producer has used; orchestrators serve these:
    /// `<prefix>:queues`.
    pub fn queues(&self) -> String {
        format!("{}queues", self.keys)
    }

    /// Sorted set of live orchestrator instance ids, scored by the Redis time
    /// (ms) their heartbeat expires: `<prefix>:orchestrators`.
    pub fn orchestrators(&self) -> String {
        format!("{}orchestrators", self.keys)
    }

    /// Random value that changes only when Redis loses its data (see the
    /// orchestrator's `epoch` module): `<prefix>:epoch`.
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.keys)
    }

    /// Hash from a job id the producer chose to the key of the record holding
    /// it, across every queue of the namespace: `<prefix>:ids`.
    pub fn ids(&self) -> String {
        format!("{}ids", self.keys)
    }

    /// The queue of a job record key `<prefix>:{<queue>}:job:<id>` of this
    /// namespace (as the id registry holds them), if it is one.
    pub fn queue_of_job_key<'a>(&self, key: &'a str, id: &str) -> Option<&'a str> {
        let inner = key
            .strip_prefix(self.keys.as_str())?
            .strip_prefix('{')?
            .strip_suffix(id)?
            .strip_suffix("}:job:")?;
        if inner.is_empty() { None } else { Some(inner) }
    }

    /// Hash holding one orchestrator's heartbeat: `<prefix>:orchestrator:<instance id>`.
    pub fn orchestrator(&self, instance_id: &str) -> String {
        format!("{}orchestrator:{instance_id}", self.keys)
    }

    /// Key and channel names of `queue`.
    pub fn queue(&self, queue: &str) -> QueueKeys {
        QueueKeys {
            queue: queue.to_owned(),
            keys: format!("{}{{{queue}}}:", self.keys),
            channels: format!("{}{{{queue}}}:", self.channels),
        }
    }

    /// Pattern matching the wake channel of every queue of this namespace
    /// (for `PSUBSCRIBE`): `<prefix>:db<N>:{*}:wake`.
    pub fn wake_pattern(&self) -> String {
        format!("{}{{*}}:wake", self.channels)
    }

    /// Pattern matching the cancel channel of every queue of this namespace:
    /// `<prefix>:db<N>:{*}:cancel`.
    pub fn cancel_pattern(&self) -> String {
        format!("{}{{*}}:cancel", self.channels)
    }

    /// The queue named by one of this namespace's wake channels, if it is one.
    pub fn queue_of_wake_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        self.queue_of_channel(channel, "}:wake")
    }

    /// The queue named by one of this namespace's cancel channels, if it is one.
    pub fn queue_of_cancel_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        self.queue_of_channel(channel, "}:cancel")
    }

    fn queue_of_channel<'a>(&self, channel: &'a str, suffix: &str) -> Option<&'a str> {
        let inner = channel
            .strip_prefix(self.channels.as_str())?
            .strip_prefix('{')?
            .strip_suffix(suffix)?;
        if inner.is_empty() { None } else { Some(inner) }
    }
}

/// Key names of one queue, from [`Namespace::queue`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKeys {
    queue: String,
    /// `<prefix>:{<queue>}:`
    keys: String,
    /// `<prefix>:db<N>:{<queue>}:`
    channels: String,
}

impl QueueKeys {
    /// The queue name these keys belong to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Hash holding one job record: `<prefix>:{<queue>}:job:<id>`.
    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.keys)
    }

    /// Prefix of every job hash of the queue: `<prefix>:{<queue>}:job:`.
    pub fn job_prefix(&self) -> String {
        format!("{}job:", self.keys)
    }

    /// Sorted set of waiting job ids, scored by run time: `<prefix>:{<queue>}:due`.
    pub fn due(&self) -> String {
        format!("{}due", self.keys)
    }

    /// Sorted set of running job ids, scored by lease deadline: `<prefix>:{<queue>}:active`.
    pub fn active(&self) -> String {
        format!("{}active", self.keys)
    }

    /// Sorted set of dead-lettered job ids: `<prefix>:{<queue>}:dlq`.
    pub fn dlq(&self) -> String {
        format!("{}dlq", self.keys)
    }

    /// Channel announcing that a job became due: `<prefix>:db<N>:{<queue>}:wake`.
    pub fn wake_channel(&self) -> String {
        format!("{}wake", self.channels)
    }

    /// Channel announcing a job's terminal status: `<prefix>:db<N>:{<queue>}:done:<id>`.
    pub fn done_channel(&self, id: &str) -> String {
        format!("{}done:{id}", self.channels)
    }

    /// Prefix of the done channels: `<prefix>:db<N>:{<queue>}:done:`.
    pub fn done_channel_prefix(&self) -> String {
        format!("{}done:", self.channels)
    }

    /// Channel telling orchestrators that a running job should be cancelled
    /// (message: the job id): `<prefix>:db<N>:{<queue>}:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.channels)
    }

    /// Unique-rule key: `<prefix>:{<queue>}:unique:<key>`.
    pub fn unique(&self, key: &str) -> String {
        format!("{}unique:{key}", self.keys)
    }

    /// Rate-limit-rule key: `<prefix>:{<queue>}:rate_limit:<key>`.
    pub fn rate_limit(&self, key: &str) -> String {
        format!("{}rate_limit:{key}", self.keys)
    }

    /// Debounce-rule pointer: `<prefix>:{<queue>}:debounce:<key>`.
    pub fn debounce(&self, key: &str) -> String {
        format!("{}debounce:{key}", self.keys)
    }

    /// Prefix of the debounce pointers: `<prefix>:{<queue>}:debounce:`.
    pub fn debounce_prefix(&self) -> String {
        format!("{}debounce:", self.keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_schema() {
        let ns = Namespace::default();
        let k = ns.queue("emails");
        assert_eq!(k.job("j1"), "rrq:{emails}:job:j1");
        assert_eq!(k.job_prefix(), "rrq:{emails}:job:");
        assert_eq!(k.due(), "rrq:{emails}:due");
        assert_eq!(k.active(), "rrq:{emails}:active");
        assert_eq!(k.dlq(), "rrq:{emails}:dlq");
        assert_eq!(k.wake_channel(), "rrq:db0:{emails}:wake");
        assert_eq!(k.done_channel("j1"), "rrq:db0:{emails}:done:j1");
        assert_eq!(k.done_channel_prefix(), "rrq:db0:{emails}:done:");
        assert_eq!(k.cancel_channel(), "rrq:db0:{emails}:cancel");
        assert_eq!(k.unique("u"), "rrq:{emails}:unique:u");
        assert_eq!(k.rate_limit("r"), "rrq:{emails}:rate_limit:r");
        assert_eq!(k.debounce("d"), "rrq:{emails}:debounce:d");
        assert_eq!(k.debounce_prefix(), "rrq:{emails}:debounce:");
        assert_eq!(ns.queues(), "rrq:queues");
        assert_eq!(ns.orchestrators(), "rrq:orchestrators");
        assert_eq!(ns.orchestrator("h-1"), "rrq:orchestrator:h-1");
        assert_eq!(ns.epoch(), "rrq:epoch");
        assert_eq!(ns.ids(), "rrq:ids");
        assert_eq!(ns.queue_of_job_key(&k.job("j:1"), "j:1"), Some("emails"));
        assert_eq!(ns.queue_of_job_key("other:{emails}:job:j", "j"), None);
        assert_eq!(ns.queue_of_job_key("rrq:{}:job:j", "j"), None);
        assert_eq!(ns.wake_pattern(), "rrq:db0:{*}:wake");
        assert_eq!(ns.cancel_pattern(), "rrq:db0:{*}:cancel");
    }

    #[test]
    fn prefix_and_database_scope_every_name() {
        let ns = Namespace::new("app.b", 9).unwrap();
        assert_eq!(ns.prefix(), "app.b");
        let k = ns.queue("q");
        assert_eq!(k.job("1"), "app.b:{q}:job:1");
        assert_eq!(k.cancel_channel(), "app.b:db9:{q}:cancel");
        assert_eq!(ns.queues(), "app.b:queues");
        assert_eq!(ns.wake_pattern(), "app.b:db9:{*}:wake");
        // Another database's or prefix's channel is not ours.
        let other = Namespace::new("app.b", 0).unwrap();
        assert_eq!(
            ns.queue_of_cancel_channel(&other.queue("q").cancel_channel()),
            None
        );
        let nested = Namespace::new("app.b:db9", 9).unwrap();
        assert_eq!(
            ns.queue_of_wake_channel(&nested.queue("q").wake_channel()),
            None
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "",
            "a{b}",
            "a*",
            "a b",
            "é",
            "x?",
            "[a]",
            "a\\b",
            &"p".repeat(65),
        ] {
            assert!(Namespace::new(bad, 0).is_err(), "{bad:?}");
        }
        assert!(Namespace::new("my-app_1.v2:rrq", 15).is_ok());
    }

    #[test]
    fn cancel_channel_round_trips() {
        let ns = Namespace::default();
        for q in ["default", "a:b", "x}:cancel"] {
            assert_eq!(
                ns.queue_of_cancel_channel(&ns.queue(q).cancel_channel()),
                Some(q)
            );
        }
        assert_eq!(ns.queue_of_cancel_channel("rrq:db0:{q}:wake"), None);
    }

    #[test]
    fn wake_channel_round_trips() {
        let ns = Namespace::default();
        for q in ["default", "a:b", "with{brace", "x}:wake"] {
            let k = ns.queue(q);
            assert_eq!(ns.queue_of_wake_channel(&k.wake_channel()), Some(q));
        }
        assert_eq!(ns.queue_of_wake_channel("rrq:db0:{}:wake"), None);
        assert_eq!(ns.queue_of_wake_channel("rrq:db0:{q}:done:1"), None);
        assert_eq!(ns.queue_of_wake_channel("rrq:{q}:wake"), None);
        assert_eq!(ns.queue_of_wake_channel("other"), None);
    }
}
