//! `rrq.toml`: the schema of docs/configuration.md, parsed strictly.
//!
//! Every table denies unknown keys, and every error names the offending key
//! (as a dotted path such as `rrq.runners.python.pool_size`) and the file, so
//! a typo is reported instead of silently ignored. Keys typed "number" in the
//! docs accept an integer or a float; "integer" keys accept integers only.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that could not be loaded. The orchestrator exits with
/// status 2 on any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax {
        /// The file (or `<string>`).
        origin: String,
        /// Parser message, with line and column.
        message: String,
    },
    /// A key is unknown, has the wrong type or an invalid value.
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Top level of `rrq.toml`: everything lives under `[rrq]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rrq: Config,
}

/// The `[rrq]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis to use.
    pub redis_dsn: String,
    /// Runner for queues without a route; see [`Config::default_runner`].
    pub default_runner_name: Option<String>,
    /// Queue of jobs enqueued without one.
    pub default_queue_name: String,
    /// Per-attempt timeout when the job sets none.
    pub default_job_timeout_seconds: f64,
    /// Retries after the first attempt when the job sets none.
    pub default_max_retries: u32,
    /// How long completed and cancelled jobs are kept.
    pub default_result_ttl_seconds: f64,
    /// How long dead-lettered jobs are kept.
    pub dlq_retention_seconds: f64,
    /// Unique-key lock TTL (used by producers).
    pub default_unique_job_lock_ttl_seconds: f64,
    /// Largest params accepted and largest result stored.
    pub max_payload_bytes: u64,
    /// Longest error message kept per attempt (UTF-8 bytes; longer ones
    /// keep their head and a marker).
    pub max_error_message_bytes: u32,
    /// Longest traceback kept per attempt (UTF-8 bytes; longer ones keep
    /// their tail and a marker).
    pub max_traceback_bytes: u32,
    /// Delay before the first retry.
    pub retry_backoff_initial_seconds: f64,
    /// Cap on the retry delay.
    pub retry_backoff_max_seconds: f64,
    /// Lease on a running job.
    pub lease_seconds: f64,
    /// How often leases are renewed.
    pub lease_renew_interval_seconds: f64,
    /// How often expired leases are looked for.
    pub recovery_interval_seconds: f64,
    /// Runner heartbeat interval.
    pub runner_heartbeat_interval_seconds: f64,
    /// Silence after which a runner's stream is declared lost (its TCP
    /// connection may look healthy across a partition).
    pub runner_heartbeat_timeout_seconds: f64,
    /// Time a runner has to stop a cancelled handler before it is killed.
    pub cancel_grace_seconds: f64,
    /// Drain time on SIGTERM/SIGINT.
    pub shutdown_grace_seconds: f64,
    /// Queue name → runner name.
    pub runner_routes: BTreeMap<String, String>,
    /// Runner definitions by name.
    pub runners: BTreeMap<String, RunnerConfig>,
    /// On start-up, the most recent cron tick is still enqueued if it is at
    /// most this old; older missed ticks are skipped.
    pub cron_misfire_grace_seconds: f64,
    /// Cron entries.
    pub cron_jobs: Vec<CronJob>,
    /// Start even when Redis may evict keys (`maxmemory-policy` other than
    /// `noeviction`); evicted job records are lost jobs.
    pub allow_evicting_redis: bool,
    /// Start even when Redis keeps nothing on disk (no AOF, no snapshots).
    pub allow_ephemeral_redis: bool,
    /// First part of every Redis key and channel name: applications sharing
    /// one Redis database apart by prefix never see each other's jobs.
    pub key_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_dsn: "redis://localhost:6379/0".to_owned(),
            default_runner_name: None,
            default_queue_name: "default".to_owned(),
            default_job_timeout_seconds: 300.0,
            default_max_retries: 3,
            default_result_ttl_seconds: 86_400.0,
            dlq_retention_seconds: 604_800.0,
            default_unique_job_lock_ttl_seconds: 21_600.0,
            max_payload_bytes: 1_048_576,
            max_error_message_bytes: 8_192,
            max_traceback_bytes: 16_384,
            retry_backoff_initial_seconds: 1.0,
            retry_backoff_max_seconds: 300.0,
            lease_seconds: 30.0,
            lease_renew_interval_seconds: 10.0,
            recovery_interval_seconds: 5.0,
            runner_heartbeat_interval_seconds: 5.0,
            runner_heartbeat_timeout_seconds: 15.0,
            cancel_grace_seconds: 5.0,
            shutdown_grace_seconds: 30.0,
            runner_routes: BTreeMap::new(),
            runners: BTreeMap::new(),
            cron_misfire_grace_seconds: 60.0,
            cron_jobs: Vec::new(),
            allow_evicting_redis: false,
            allow_ephemeral_redis: false,
            key_prefix: rrq_store::keys::DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// How a runner talks to the orchestrator; `socket` is the only kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerType {
    /// A gRPC stream over TCP.
    #[default]
    Socket,
}

/// A `[rrq.runners.<name>]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// Transport kind.
    #[serde(rename = "type")]
    pub kind: RunnerType,
    /// Command starting one runner process; `None` = external runners only.
    pub cmd: Option<Vec<String>>,
    /// Loopback address to listen on for this runner (`127.0.0.1:0` = free
    /// port). `None`: a private unix socket when `cmd` is set (only the
    /// orchestrator's own runner processes can reach it), else `127.0.0.1:0`.
    pub tcp_socket: Option<String>,
    /// Processes of `cmd` to keep running.
    pub pool_size: u32,
    /// Jobs one runner process runs at once.
    pub max_in_flight: u32,
    /// Working directory of the runner processes.
    pub cwd: Option<PathBuf>,
    /// Extra environment of the runner processes.
    pub env: BTreeMap<String, String>,
    /// Recycle a spawned runner process after it was sent this many jobs.
    pub max_jobs_per_runner: Option<u64>,
    /// Recycle a spawned runner process once its resident memory exceeds
    /// this (checked after each batch of outcomes).
    pub max_memory_per_runner: Option<ByteSize>,
    /// Name of the orchestrator's environment variable holding the token
    /// that external processes of this runner present; `None` = no external
    /// runner may connect (spawned ones prove themselves with their spawn token).
    pub token_env: Option<String>,
}

/// A size in bytes: an integer, or a string `"<integer><unit>"` with unit
/// `B`, `KiB`, `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses the string form (see the type).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = (&t[..split], t[split..].trim());
        let n: u64 = digits.parse().map_err(|_| {
            format!("{text:?} is not a size such as \"512MiB\" or a number of bytes")
        })?;
        let scale: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => u64::try_from(n)
                .map(Self)
                .map_err(|_| serde::de::Error::custom(format!("{n} is negative"))),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Smallest `max_memory_per_runner`: below this every runtime would be
/// recycled after each job.
pub const MIN_RUNNER_MEMORY: u64 = 16 << 20;
/// Largest `max_memory_per_runner` (1 TiB).
pub const MAX_RUNNER_MEMORY: u64 = 1 << 40;

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            kind: RunnerType::Socket,
            cmd: None,
            tcp_socket: None,
            pool_size: 1,
            max_in_flight: 1,
            cwd: None,
            env: BTreeMap::new(),
            max_jobs_per_runner: None,
            max_memory_per_runner: None,
            token_env: None,
        }
    }
}

impl RunnerConfig {
    /// The listen address; valid after [`Config::validate`].
    pub fn listen_addr(&self) -> Result<ListenAddr, String> {
        match (&self.tcp_socket, &self.cmd) {
            (Some(text), _) => parse_loopback(text).map(ListenAddr::Tcp),
            (None, Some(_)) => Ok(ListenAddr::Unix),
            (None, None) => Ok(ListenAddr::Tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                0,
            ))),
        }
    }
}

/// Where the orchestrator listens for one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// A loopback TCP address (`tcp_socket`, or a free port for external runners).
    Tcp(SocketAddr),
    /// A unix socket with mode 0600 in a 0700 directory the orchestrator
    /// creates: the default for runners it spawns.
    Unix,
}

impl ListenAddr {
    /// The TCP address, if any.
    pub fn tcp(self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(a),
            ListenAddr::Unix => None,
        }
    }
}

/// A `[[rrq.cron_jobs]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronJob {
    /// Identifies the entry in tick job ids (`cron:<name>:<tick ms>`);
    /// defaults to `function_name`.
    pub name: Option<String>,
    /// Handler to enqueue.
    pub function_name: String,
    /// Cron expression, 5 fields or 6 with leading seconds.
    pub schedule: String,
    /// Params of the enqueued job.
    #[serde(default)]
    pub params: toml::Table,
    /// Queue to enqueue into (default queue when absent).
    pub queue_name: Option<String>,
    /// IANA time zone of the schedule (UTC when absent).
    pub timezone: Option<String>,
}

impl CronJob {
    /// `name`, else `function_name`.
    pub fn effective_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.function_name)
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: if key == "." { "rrq".to_owned() } else { key },
                message: describe_toml_error(text, e.inner()),
            }
        })?;
        let config = file.rrq;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks ranges and cross references: the first failure, as a
    /// [`ConfigError::Invalid`] naming `origin` and the key.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        };
        let key = |k: &str| format!("rrq.{k}");
        if let Err(e) = rrq_store::Namespace::new(&self.key_prefix, 0) {
            return Err(invalid(key("key_prefix"), e.to_string()));
        }
        let positive = [
            (
                "default_job_timeout_seconds",
                self.default_job_timeout_seconds,
            ),
            (
                "default_result_ttl_seconds",
                self.default_result_ttl_seconds,
            ),
            ("dlq_retention_seconds", self.dlq_retention_seconds),
            (
                "default_unique_job_lock_ttl_seconds",
                self.default_unique_job_lock_ttl_seconds,
            ),
            ("retry_backoff_max_seconds", self.retry_backoff_max_seconds),
            ("lease_seconds", self.lease_seconds),
            (
                "lease_renew_interval_seconds",
                self.lease_renew_interval_seconds,
            ),
            ("recovery_interval_seconds", self.recovery_interval_seconds),
            (
                "runner_heartbeat_interval_seconds",
                self.runner_heartbeat_interval_seconds,
            ),
            (
                "runner_heartbeat_timeout_seconds",
                self.runner_heartbeat_timeout_seconds,
            ),
        ];
        for (name, value) in positive {
            // Durations are built from these; a non-finite or huge value would
            // panic in Duration::from_secs_f64, so bound them here.
            if !(value.is_finite() && value > 0.0 && value <= MAX_SECONDS) {
                return Err(invalid(
                    key(name),
                    format!("must be a number of seconds > 0 and <= {MAX_SECONDS}, got {value}"),
                ));
            }
        }
        let non_negative = [
            (
                "retry_backoff_initial_seconds",
                self.retry_backoff_initial_seconds,
            ),
            ("cancel_grace_seconds", self.cancel_grace_seconds),
            ("shutdown_grace_seconds", self.shutdown_grace_seconds),
            (
                "cron_misfire_grace_seconds",
                self.cron_misfire_grace_seconds,
            ),
        ];
        for (name, value) in non_negative {
            if !(value.is_finite() && (0.0..=MAX_SECONDS).contains(&value)) {
                return Err(invalid(
                    key(name),
                    format!("must be a number of seconds >= 0 and <= {MAX_SECONDS}, got {value}"),
                ));
            }
        }
        if self.lease_renew_interval_seconds >= self.lease_seconds {
            return Err(invalid(
                key("lease_renew_interval_seconds"),
                format!(
                    "must be less than lease_seconds ({}), got {}",
                    self.lease_seconds, self.lease_renew_interval_seconds
                ),
            ));
        }
        // Two intervals at least: one late heartbeat must not drop a runner.
        if self.runner_heartbeat_timeout_seconds < 2.0 * self.runner_heartbeat_interval_seconds {
            return Err(invalid(
                key("runner_heartbeat_timeout_seconds"),
                format!(
                    "must be at least twice runner_heartbeat_interval_seconds ({}), got {}",
                    self.runner_heartbeat_interval_seconds, self.runner_heartbeat_timeout_seconds
                ),
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > i64::MAX as u64 {
            return Err(invalid(
                key("max_payload_bytes"),
                "must be at least 1".to_owned(),
            ));
        }
        for (name, value) in [
            ("max_error_message_bytes", self.max_error_message_bytes),
            ("max_traceback_bytes", self.max_traceback_bytes),
        ] {
            if !ERROR_TEXT_BYTES.contains(&value) {
                return Err(invalid(
                    key(name),
                    format!(
                        "must be between {} and {} bytes, got {value}",
                        ERROR_TEXT_BYTES.start(),
                        ERROR_TEXT_BYTES.end()
                    ),
                ));
            }
        }
        if self.default_queue_name.is_empty() {
            return Err(invalid(
                key("default_queue_name"),
                "must not be empty".to_owned(),
            ));
        }
        if self.redis_dsn.is_empty() {
            return Err(invalid(key("redis_dsn"), "must not be empty".to_owned()));
        }
        if let Some(name) = &self.default_runner_name
            && !self.runners.contains_key(name)
        {
            return Err(invalid(
                key("default_runner_name"),
                format!(
                    "names runner {name:?}, which is not configured{}",
                    self.known_runners()
                ),
            ));
        }
        for (queue, runner) in &self.runner_routes {
            if !self.runners.contains_key(runner) {
                return Err(invalid(
                    format!("rrq.runner_routes.{queue}"),
                    format!(
                        "names runner {runner:?}, which is not configured{}",
                        self.known_runners()
                    ),
                ));
            }
        }
        let mut fixed_addrs: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (name, runner) in &self.runners {
            let rkey = |k: &str| format!("rrq.runners.{name}.{k}");
            if name.is_empty() || name.contains('#') {
                return Err(invalid(
                    format!("rrq.runners.{name}"),
                    "a runner name must be non-empty and must not contain '#'".to_owned(),
                ));
            }
            if let Some(cmd) = &runner.cmd
                && cmd.first().is_none_or(|program| program.is_empty())
            {
                return Err(invalid(
                    rkey("cmd"),
                    "must name a program to run (got an empty command)".to_owned(),
                ));
            }
            let addr = runner
                .listen_addr()
                .map_err(|m| invalid(rkey("tcp_socket"), m))?;
            if let Some(addr) = addr.tcp()
                && addr.port() != 0
                && let Some(other) = fixed_addrs.insert(addr, name)
            {
                return Err(invalid(
                    rkey("tcp_socket"),
                    format!("{addr} is already used by runner {other:?}"),
                ));
            }
            if let Some(var) = &runner.token_env
                && !is_env_var_name(var)
            {
                return Err(invalid(
                    rkey("token_env"),
                    format!(
                        "must name an environment variable (letters, digits, '_', not starting with a digit), got {var:?}"
                    ),
                ));
            }
            if runner.pool_size == 0 {
                return Err(invalid(rkey("pool_size"), "must be at least 1".to_owned()));
            }
            if runner.max_in_flight == 0 {
                return Err(invalid(
                    rkey("max_in_flight"),
                    "must be at least 1".to_owned(),
                ));
            }
            let spawned_only =
                "applies only to runner processes the orchestrator spawns; set `cmd`";
            if let Some(n) = runner.max_jobs_per_runner {
                if !(1..=1_000_000_000).contains(&n) {
                    return Err(invalid(
                        rkey("max_jobs_per_runner"),
                        format!("must be between 1 and 1000000000 (got {n})"),
                    ));
                }
                if runner.cmd.is_none() {
                    return Err(invalid(
                        rkey("max_jobs_per_runner"),
                        spawned_only.to_owned(),
                    ));
                }
            }
            if let Some(ByteSize(b)) = runner.max_memory_per_runner {
                if !(MIN_RUNNER_MEMORY..=MAX_RUNNER_MEMORY).contains(&b) {
                    return Err(invalid(
                        rkey("max_memory_per_runner"),
                        format!("must be between 16MiB and 1TiB (got {b} bytes)"),
                    ));
                }
                if runner.cmd.is_none() {
                    return Err(invalid(
                        rkey("max_memory_per_runner"),
                        spawned_only.to_owned(),
                    ));
                }
            }
        }
        let mut cron_names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, cron) in self.cron_jobs.iter().enumerate() {
            let ckey = |k: &str| format!("rrq.cron_jobs[{i}].{k}");
            if cron.function_name.is_empty() {
                return Err(invalid(
                    ckey("function_name"),
                    "must not be empty".to_owned(),
                ));
            }
            if let Some(name) = &cron.name
                && name.is_empty()
            {
                return Err(invalid(ckey("name"), "must not be empty".to_owned()));
            }
            let name = cron.effective_name();
            if let Some(first) = cron_names.insert(name, i) {
                return Err(invalid(
                    ckey("name"),
                    format!(
                        "entries rrq.cron_jobs[{first}] and rrq.cron_jobs[{i}] both have the name {name:?} \
                         (the name defaults to function_name); set a distinct `name` on one of them"
                    ),
                ));
            }
            validate_schedule(&cron.schedule)
                .map_err(|m| invalid(ckey("schedule"), format!("cron entry {name:?}: {m}")))?;
            if let Some(q) = &cron.queue_name
                && q.is_empty()
            {
                return Err(invalid(ckey("queue_name"), "must not be empty".to_owned()));
            }
            if let Some(tz) = &cron.timezone
                && tz.parse::<chrono_tz::Tz>().is_err()
            {
                return Err(invalid(
                    ckey("timezone"),
                    format!("cron entry {name:?}: {tz:?} is not an IANA time zone"),
                ));
            }
        }
        Ok(())
    }

    fn known_runners(&self) -> String {
        if self.runners.is_empty() {
            " (no runners are configured)".to_owned()
        } else {
            let names: Vec<&str> = self.runners.keys().map(String::as_str).collect();
            format!(" (configured: {})", names.join(", "))
        }
    }

    /// Runner for queues without a route: `default_runner_name`, else the
    /// only runner when exactly one is configured.
    pub fn default_runner(&self) -> Option<&str> {
        match &self.default_runner_name {
            Some(name) => Some(name),
            None if self.runners.len() == 1 => self.runners.keys().next().map(String::as_str),
            None => None,
        }
    }

    /// Runner serving `queue`: its route, else the default runner.
    pub fn runner_for_queue(&self, queue: &str) -> Option<&str> {
        self.runner_routes
            .get(queue)
            .map(String::as_str)
            .or_else(|| self.default_runner())
    }

    /// Per-attempt timeout when the job sets none.
    pub fn default_job_timeout(&self) -> Duration {
        secs(self.default_job_timeout_seconds)
    }
    /// Lease duration.
    pub fn lease(&self) -> Duration {
        secs(self.lease_seconds)
    }
    /// Lease renewal interval.
    pub fn lease_renew_interval(&self) -> Duration {
        secs(self.lease_renew_interval_seconds)
    }
    /// Recovery sweep interval.
    pub fn recovery_interval(&self) -> Duration {
        secs(self.recovery_interval_seconds)
    }
    /// Runner heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        secs(self.runner_heartbeat_interval_seconds)
    }
    /// Silence after which a runner is declared lost.
    pub fn heartbeat_timeout(&self) -> Duration {
        secs(self.runner_heartbeat_timeout_seconds)
    }
    /// Grace after a cancel before the runner is killed.
    pub fn cancel_grace(&self) -> Duration {
        secs(self.cancel_grace_seconds)
    }
    /// Drain time on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        secs(self.shutdown_grace_seconds)
    }
    /// First retry delay.
    pub fn backoff_initial(&self) -> Duration {
        secs(self.retry_backoff_initial_seconds)
    }
    /// Retry delay cap.
    pub fn backoff_max(&self) -> Duration {
        secs(self.retry_backoff_max_seconds)
    }
    /// Result TTL in ms.
    pub fn default_result_ttl_ms(&self) -> i64 {
        ms(self.default_result_ttl_seconds)
    }
    /// Dead-letter retention in ms.
    pub fn dlq_retention_ms(&self) -> i64 {
        ms(self.dlq_retention_seconds)
    }
    /// Cron misfire grace in ms.
    pub fn cron_misfire_grace_ms(&self) -> i64 {
        ms(self.cron_misfire_grace_seconds)
    }
}

/// Upper bound of every seconds value (100 years): keeps Duration and
/// millisecond arithmetic far from overflow.
/// Range of `max_error_message_bytes` and `max_traceback_bytes`: at least
/// room for a readable message, at most 1 MiB (each attempt's error is kept,
/// so a record holds up to `max_retries + 1` of them).
const ERROR_TEXT_BYTES: std::ops::RangeInclusive<u32> = 256..=1_048_576;

const MAX_SECONDS: f64 = 100.0 * 365.0 * 86_400.0;

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.0, MAX_SECONDS))
}

fn ms(value: f64) -> i64 {
    (value.clamp(0.0, MAX_SECONDS) * 1000.0).round() as i64
}

/// Parses `host:port` where host is a loopback IP or `localhost`.
fn parse_loopback(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let port = text
                .strip_prefix("localhost:")
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| format!("{text:?} is not a host:port address"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{text:?} is not a loopback address; the runner listener is plaintext and must bind loopback (127.0.0.1 or ::1)"
        ));
    }
    Ok(addr)
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Accepts 5-field cron expressions and 6-field ones with leading seconds.
pub fn validate_schedule(schedule: &str) -> Result<(), String> {
    let fields = schedule.split_whitespace().count();
    if !(fields == 5 || fields == 6) {
        return Err(format!(
            "{schedule:?} must have 5 fields (minute hour day month weekday) or 6 (with leading seconds), got {fields}"
        ));
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| format!("{schedule:?} is not a valid cron expression: {e}"))?;
    // A schedule that matches no time of day or no date (`0 0 30 2 *`, an
    // empty list) never fires, and every tick search on it would scan to
    // croner's year 5000. The calendar, weekdays included, repeats every 400
    // years, so one such cycle tells.
    let p = &cron.pattern;
    let time = (0..60).any(|s| p.second_match(s).unwrap_or(false))
        && (0..60).any(|m| p.minute_match(m).unwrap_or(false))
        && (0..24).any(|h| p.hour_match(h).unwrap_or(false));
    let date = || {
        (2000..2400).any(|y| {
            (1..=12).any(|m| {
                p.month_match(m).unwrap_or(false)
                    && (1..=31).any(|d| {
                        chrono::NaiveDate::from_ymd_opt(y, m, d).is_some()
                            && p.day_match(y, m, d).unwrap_or(false)
                    })
            })
        })
    };
    if !(time && date()) {
        return Err(format!(
            "{schedule:?} never fires (it matches no date or time)"
        ));
    }
    Ok(())
}

/// A toml error as one line: its message plus the line it points at.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().to_owned();
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "rrq.toml")
    }

    fn err_key(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn quick_start_snippet_loads() {
        let c = parse(
            r#"
[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
"#,
        )
        .unwrap();
        assert_eq!(c.default_runner(), Some("python"));
        let r = &c.runners["python"];
        assert_eq!(r.cmd.as_ref().unwrap().len(), 3);
        assert_eq!(r.listen_addr().unwrap().tcp().unwrap().port(), 9000);
        assert_eq!(r.pool_size, 1);
        assert_eq!(r.max_in_flight, 1);
    }

    #[test]
    fn cron_snippet_loads() {
        let c = parse(
            r#"
[[rrq.cron_jobs]]
function_name = "daily_report"
schedule = "0 0 9 * * *"  # 9 AM daily (6-field cron with seconds)
queue_name = "scheduled"
"#,
        )
        .unwrap();
        assert_eq!(c.cron_jobs.len(), 1);
        assert_eq!(c.cron_jobs[0].queue_name.as_deref(), Some("scheduled"));
        assert!(c.runners.is_empty());
    }

    #[test]
    fn key_settings_snippet_loads() {
        let c = parse(
            r#"
[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"
default_job_timeout_seconds = 300  # 5 minutes
default_max_retries = 3

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
pool_size = 4           # Number of runner processes
max_in_flight = 10      # Concurrent jobs per runner
"#,
        )
        .unwrap();
        assert_eq!(c.default_job_timeout(), Duration::from_secs(300));
        assert_eq!(c.runners["python"].pool_size, 4);
        assert_eq!(c.runners["python"].max_in_flight, 10);
    }

    #[test]
    fn defaults_match_the_docs() {
        let c = parse("").unwrap();
        assert_eq!(c.redis_dsn, "redis://localhost:6379/0");
        assert_eq!(c.default_queue_name, "default");
        assert_eq!(c.default_max_retries, 3);
        assert_eq!(c.max_payload_bytes, 1_048_576);
        assert_eq!(c.max_error_message_bytes, 8_192);
        assert_eq!(c.max_traceback_bytes, 16_384);
        assert_eq!(c.lease(), Duration::from_secs(30));
        assert_eq!(c.lease_renew_interval(), Duration::from_secs(10));
        assert_eq!(c.default_result_ttl_ms(), 86_400_000);
        assert_eq!(c.dlq_retention_ms(), 604_800_000);
        assert_eq!(c.default_runner(), None);
    }

    #[test]
    fn error_text_caps_are_bounded() {
        let c =
            parse("[rrq]\nmax_error_message_bytes = 256\nmax_traceback_bytes = 1048576\n").unwrap();
        assert_eq!(c.max_error_message_bytes, 256);
        assert_eq!(c.max_traceback_bytes, 1_048_576);
        for (name, bad) in [
            ("max_error_message_bytes", "255"),
            ("max_error_message_bytes", "1048577"),
            ("max_traceback_bytes", "0"),
            ("max_traceback_bytes", "-1"),
            ("max_traceback_bytes", "1e9"),
            ("max_error_message_bytes", "99999999999"),
        ] {
            let (key, message) = err_key(&format!("[rrq]\n{name} = {bad}\n"));
            assert_eq!(key, format!("rrq.{name}"), "{bad}: {message}");
        }
    }

    #[test]
    fn key_prefix_is_checked() {
        assert_eq!(parse("").unwrap().key_prefix, "rrq");
        assert_eq!(
            parse("[rrq]\nkey_prefix = \"app.b:1\"\n")
                .unwrap()
                .key_prefix,
            "app.b:1"
        );
        for bad in ["\"\"", "\"a{b}\"", "\"a*\"", "\"with space\"", "1"] {
            let (key, message) = err_key(&format!("[rrq]\nkey_prefix = {bad}\n"));
            assert_eq!(key, "rrq.key_prefix", "{bad}: {message}");
        }
    }

    #[test]
    fn numbers_accept_floats_and_ints() {
        let c = parse("[rrq]\nlease_seconds = 2.5\nlease_renew_interval_seconds = 1\n").unwrap();
        assert_eq!(c.lease(), Duration::from_millis(2500));
        assert_eq!(c.lease_renew_interval(), Duration::from_secs(1));
    }

    #[test]
    fn integers_reject_floats() {
        let (key, _) = err_key("[rrq]\ndefault_max_retries = 2.5\n");
        assert_eq!(key, "rrq.default_max_retries");
    }

    #[test]
    fn only_runner_is_the_default() {
        let c = parse("[rrq.runners.ts]\n").unwrap();
        assert_eq!(c.default_runner(), Some("ts"));
        assert_eq!(c.runner_for_queue("any"), Some("ts"));
    }

    #[test]
    fn routes_pick_the_runner() {
        let c = parse(
            "[rrq]\ndefault_runner_name = \"py\"\n[rrq.runner_routes]\nfast = \"ts\"\n[rrq.runners.py]\n[rrq.runners.ts]\n",
        )
        .unwrap();
        assert_eq!(c.runner_for_queue("fast"), Some("ts"));
        assert_eq!(c.runner_for_queue("other"), Some("py"));
    }

    #[test]
    fn unknown_runner_key_is_named() {
        let (key, message) = err_key("[rrq.runners.python]\nfoo = 1\n");
        assert_eq!(key, "rrq.runners.python.foo");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        assert_eq!(err_key("[rrq]\nbogus = 1\n").0, "rrq.bogus");
        assert_eq!(err_key("[other]\nx = 1\n").0, "other");
        assert_eq!(
            err_key(
                "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\nextra = 1\n"
            )
            .0,
            "rrq.cron_jobs[0].extra"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let (key, _) = err_key("[rrq]\nlease_seconds = \"30\"\n");
        assert_eq!(key, "rrq.lease_seconds");
        let (key, _) = err_key("[rrq.runners.py]\ncmd = \"python\"\n");
        assert_eq!(key, "rrq.runners.py.cmd");
        let (key, _) = err_key("[rrq.runners.py]\ntype = \"unix\"\n");
        assert_eq!(key, "rrq.runners.py.type");
    }

    #[test]
    fn default_runner_must_exist() {
        let (key, message) = err_key("[rrq]\ndefault_runner_name = \"nope\"\n[rrq.runners.py]\n");
        assert_eq!(key, "rrq.default_runner_name");
        assert!(message.contains("nope"), "{message}");
    }

    #[test]
    fn route_must_name_a_runner() {
        let (key, _) = err_key("[rrq.runner_routes]\nq = \"ghost\"\n[rrq.runners.py]\n");
        assert_eq!(key, "rrq.runner_routes.q");
    }

    #[test]
    fn renew_interval_must_be_below_lease() {
        let (key, _) = err_key("[rrq]\nlease_seconds = 10\nlease_renew_interval_seconds = 10\n");
        assert_eq!(key, "rrq.lease_renew_interval_seconds");
    }

    #[test]
    fn spawned_runners_default_to_a_unix_socket() {
        let c = parse(
            "[rrq.runners.a]\ncmd = [\"x\"]\n[rrq.runners.b]\n\
             [rrq.runners.c]\ncmd = [\"x\"]\ntcp_socket = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(c.runners["a"].listen_addr().unwrap(), ListenAddr::Unix);
        assert_eq!(
            c.runners["b"].listen_addr().unwrap(),
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            c.runners["c"].listen_addr().unwrap(),
            ListenAddr::Tcp("127.0.0.1:9000".parse().unwrap())
        );
    }

    #[test]
    fn token_env_names_an_environment_variable() {
        let c = parse("[rrq.runners.py]\ntoken_env = \"MY_RUNNER_TOKEN\"\n").unwrap();
        assert_eq!(
            c.runners["py"].token_env.as_deref(),
            Some("MY_RUNNER_TOKEN")
        );
        assert_eq!(
            parse("[rrq.runners.py]\n").unwrap().runners["py"].token_env,
            None
        );
        for bad in ["", "1ABC", "MY-TOKEN", "A B", "X=Y"] {
            let (key, message) = err_key(&format!("[rrq.runners.py]\ntoken_env = {bad:?}\n"));
            assert_eq!(key, "rrq.runners.py.token_env", "{bad:?}");
            assert!(message.contains("environment variable"), "{message}");
        }
        assert_eq!(
            err_key("[rrq.runners.py]\ntoken_env = 5\n").0,
            "rrq.runners.py.token_env"
        );
    }

    #[test]
    fn tcp_socket_must_be_loopback() {
        let (key, message) = err_key("[rrq.runners.py]\ntcp_socket = \"0.0.0.0:9000\"\n");
        assert_eq!(key, "rrq.runners.py.tcp_socket");
        assert!(message.contains("loopback"), "{message}");
        assert!(parse("[rrq.runners.py]\ntcp_socket = \"localhost:9000\"\n").is_ok());
        assert!(parse("[rrq.runners.py]\ntcp_socket = \"[::1]:0\"\n").is_ok());
        assert_eq!(
            err_key("[rrq.runners.py]\ntcp_socket = \"nonsense\"\n").0,
            "rrq.runners.py.tcp_socket"
        );
    }

    #[test]
    fn cmd_must_not_be_empty() {
        assert_eq!(
            err_key("[rrq.runners.py]\ncmd = []\n").0,
            "rrq.runners.py.cmd"
        );
        assert_eq!(
            err_key("[rrq.runners.py]\ncmd = [\"\"]\n").0,
            "rrq.runners.py.cmd"
        );
    }

    #[test]
    fn recycling_limits() {
        let ok = |extra: &str| parse(&format!("[rrq.runners.py]\ncmd = [\"x\"]\n{extra}"));
        let c = ok("max_jobs_per_runner = 100\nmax_memory_per_runner = \"512MiB\"\n").unwrap();
        assert_eq!(c.runners["py"].max_jobs_per_runner, Some(100));
        assert_eq!(
            c.runners["py"].max_memory_per_runner,
            Some(ByteSize(512 << 20))
        );
        let c = ok("max_memory_per_runner = 100000000\n").unwrap();
        assert_eq!(
            c.runners["py"].max_memory_per_runner,
            Some(ByteSize(100_000_000))
        );
        assert_eq!(
            ok("max_memory_per_runner = \"2GB\"\n").unwrap().runners["py"].max_memory_per_runner,
            Some(ByteSize(2_000_000_000))
        );
        assert!(ok("").unwrap().runners["py"].max_jobs_per_runner.is_none());
        let key = |extra: &str| err_key(&format!("[rrq.runners.py]\ncmd = [\"x\"]\n{extra}"));
        for bad in [
            "max_jobs_per_runner = 0\n",
            "max_jobs_per_runner = -1\n",
            "max_jobs_per_runner = \"ten\"\n",
        ] {
            assert_eq!(key(bad).0, "rrq.runners.py.max_jobs_per_runner", "{bad}");
        }
        for bad in [
            "max_memory_per_runner = \"512 parsecs\"\n",
            "max_memory_per_runner = \"1MiB\"\n",
            "max_memory_per_runner = \"2TiB\"\n",
            "max_memory_per_runner = -5\n",
            "max_memory_per_runner = \"99999999999999999999GiB\"\n",
            "max_memory_per_runner = 1.5\n",
        ] {
            assert_eq!(key(bad).0, "rrq.runners.py.max_memory_per_runner", "{bad}");
        }
        let (k, m) = err_key("[rrq.runners.py]\nmax_jobs_per_runner = 5\n");
        assert_eq!(k, "rrq.runners.py.max_jobs_per_runner");
        assert!(m.contains("cmd"), "{m}");
    }

    #[test]
    fn pool_and_in_flight_must_be_positive() {
        assert_eq!(
            err_key("[rrq.runners.py]\npool_size = 0\n").0,
            "rrq.runners.py.pool_size"
        );
        assert_eq!(
            err_key("[rrq.runners.py]\nmax_in_flight = 0\n").0,
            "rrq.runners.py.max_in_flight"
        );
        assert_eq!(
            err_key("[rrq.runners.py]\npool_size = -1\n").0,
            "rrq.runners.py.pool_size"
        );
    }

    #[test]
    fn negative_and_zero_durations_are_rejected() {
        assert_eq!(err_key("[rrq]\nlease_seconds = 0\n").0, "rrq.lease_seconds");
        assert_eq!(
            err_key("[rrq]\ncancel_grace_seconds = -1\n").0,
            "rrq.cancel_grace_seconds"
        );
        assert!(parse("[rrq]\nshutdown_grace_seconds = 0\n").is_ok());
    }

    #[test]
    fn cron_entries_are_validated() {
        let ok = "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"*/5 * * * *\"\ntimezone = \"Europe/Paris\"\nparams = { a = 1 }\n";
        let c = parse(ok).unwrap();
        assert_eq!(
            c.cron_jobs[0].params.get("a"),
            Some(&toml::Value::Integer(1))
        );
        assert_eq!(
            err_key("[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"not cron\"\n").0,
            "rrq.cron_jobs[0].schedule"
        );
        assert_eq!(
            err_key("[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * *\"\n").0,
            "rrq.cron_jobs[0].schedule"
        );
        assert_eq!(
            err_key("[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"61 * * * *\"\n").0,
            "rrq.cron_jobs[0].schedule"
        );
        // Schedules that match no date (found by the F30 fuzzer: each tick
        // search on them scanned to year 5000).
        for never in ["0 0 30 2 *", "0 , L * *"] {
            let (key, message) = err_key(&format!(
                "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"{never}\"\n"
            ));
            assert_eq!(key, "rrq.cron_jobs[0].schedule");
            assert!(message.contains("never fires"), "{message}");
        }
        assert_eq!(
            err_key("[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\ntimezone = \"Mars/Base\"\n").0,
            "rrq.cron_jobs[0].timezone"
        );
        assert_eq!(
            err_key("[[rrq.cron_jobs]]\nschedule = \"* * * * *\"\n").0,
            "rrq.cron_jobs[0]"
        );
        assert_eq!(
            err_key(
                "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\nparams = 3\n"
            )
            .0,
            "rrq.cron_jobs[0].params"
        );
    }

    #[test]
    fn cron_names_must_be_distinct() {
        let two = "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\n\
                   [[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"0 * * * *\"\n";
        let (key, message) = err_key(two);
        assert_eq!(key, "rrq.cron_jobs[1].name");
        assert!(
            message.contains("rrq.cron_jobs[0]")
                && message.contains("rrq.cron_jobs[1]")
                && message.contains("set a distinct `name`"),
            "{message}"
        );
        let named = format!("{two}name = \"f-hourly\"\n");
        let c = parse(&named).unwrap();
        assert_eq!(c.cron_jobs[0].effective_name(), "f");
        assert_eq!(c.cron_jobs[1].effective_name(), "f-hourly");
        // An explicit name may also clash with another entry's function name.
        let clash = "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\n\
                     [[rrq.cron_jobs]]\nname = \"f\"\nfunction_name = \"g\"\nschedule = \"* * * * *\"\n";
        assert_eq!(err_key(clash).0, "rrq.cron_jobs[1].name");
        assert_eq!(
            err_key(
                "[[rrq.cron_jobs]]\nname = \"\"\nfunction_name = \"f\"\nschedule = \"* * * * *\"\n"
            )
            .0,
            "rrq.cron_jobs[0].name"
        );
    }

    #[test]
    fn cron_misfire_grace_defaults_to_60s() {
        assert_eq!(parse("").unwrap().cron_misfire_grace_ms(), 60_000);
        assert_eq!(
            parse("[rrq]\ncron_misfire_grace_seconds = 0\n")
                .unwrap()
                .cron_misfire_grace_ms(),
            0
        );
        assert_eq!(
            err_key("[rrq]\ncron_misfire_grace_seconds = -1\n").0,
            "rrq.cron_misfire_grace_seconds"
        );
    }

    #[test]
    fn cron_errors_name_the_entry_and_key() {
        let e = Config::from_toml(
            "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"bad\"\n",
            "rrq.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rrq.cron_jobs[0].schedule"), "{e}");
        let e = Config::from_toml(
            "[[rrq.cron_jobs]]\nfunction_name = \"f\"\nschedule = \"* * * * *\"\ntimezone = \"Nope/Nope\"\n",
            "rrq.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rrq.cron_jobs[0].timezone") && e.contains("Nope/Nope"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        match parse("[rrq\n") {
            Err(ConfigError::Syntax { message, .. }) => {
                assert!(message.contains("line 1"), "{message}")
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::from_toml("[rrq]\nlease_seconds = \"x\"\n", "/etc/rrq.toml").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/rrq.toml: key `rrq.lease_seconds`:"),
            "{text}"
        );
    }

    #[test]
    fn duplicate_fixed_ports_are_rejected() {
        let (key, _) = err_key(
            "[rrq]\ndefault_runner_name = \"a\"\n[rrq.runners.a]\ntcp_socket = \"127.0.0.1:9000\"\n[rrq.runners.b]\ntcp_socket = \"127.0.0.1:9000\"\n",
        );
        assert_eq!(key, "rrq.runners.b.tcp_socket");
    }
}
