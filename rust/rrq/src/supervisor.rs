//! Runner processes: spawns `pool_size` copies of each runner's `cmd`,
//! forwards their output (see [`crate::output`]), restarts them with backoff,
//! kills one by its process token (a job ignored a cancel, or the runner was
//! declared lost), and retires one gracefully (recycling limits). Each
//! process gets a fresh spawn token from [`RunnerAuth`], revoked when it exits.
//!
//! Each runner process leads its own process group; every signal goes to the
//! whole group, and once the runner has exited, whatever is left of its
//! group (children that ignored SIGTERM) is SIGKILLed. A grandchild that
//! called `setsid` (or `setpgid`) left the group and is not reached: no
//! cgroup is used (see docs/architecture.md, "Runner processes").

use std::collections::HashMap;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::RunnerAuth;
use crate::config::RunnerConfig;

/// First restart delay; doubles per quick death.
const RESTART_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
const RESTART_MAX: Duration = Duration::from_secs(10);
/// A process that stayed up this long resets the restart delay.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// After SIGTERM on shutdown, how long a runner may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the supervisor may be asked to do to a live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// SIGKILL its process group now.
    Kill,
    /// SIGTERM its process group, SIGKILL after [`STOP_GRACE`]; then start a
    /// fresh process without a restart delay.
    Retire,
}

/// A live process: where to send orders, and its pid.
#[derive(Debug)]
struct Live {
    orders: mpsc::UnboundedSender<Order>,
    pid: Option<u32>,
}

#[derive(Debug)]
struct Inner {
    /// Issues and revokes spawn tokens.
    auth: Arc<RunnerAuth>,
    /// Each live process, by process token.
    live: Mutex<HashMap<String, Live>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: CancellationToken,
}

/// See the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// What a runner process needs to know to start.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// Runner name.
    pub runner: String,
    /// Its configuration (with `cmd`).
    pub config: RunnerConfig,
    /// Address to dial (`RRQ_ORCHESTRATOR_ADDR`): `host:port`, or
    /// `unix:/path` for the private unix socket.
    pub addr: String,
    /// The orchestrator's own Redis DSN: withheld from the runner (see [`withheld_env`]).
    pub redis_dsn: String,
    /// Variables of the orchestrator's environment that hold secrets (every
    /// runner's `token_env`): withheld from the runner (see [`withheld_env`]).
    pub secret_env: Vec<String>,
}

impl Supervisor {
    /// A supervisor whose processes authenticate through `auth`.
    pub fn new(auth: Arc<RunnerAuth>) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth,
                live: Mutex::default(),
                tasks: Mutex::default(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Starts the pool of one runner.
    pub fn start(&self, spawn: Spawn) {
        let Some(cmd) = spawn.config.cmd.clone() else {
            return;
        };
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for index in 0..spawn.config.pool_size {
            let me = self.clone();
            let spawn = spawn.clone();
            let cmd = cmd.clone();
            tasks.push(tokio::spawn(async move {
                me.keep_running(spawn, cmd, index).await
            }));
        }
    }

    /// SIGKILLs the process group of the process holding `token`; false if
    /// no live process has it.
    pub fn kill(&self, token: &str) -> bool {
        self.order(token, Order::Kill)
    }

    /// Stops the process holding `token` gracefully (SIGTERM to its group,
    /// SIGKILL after a grace) and starts a fresh one at once; false if no
    /// live process has it.
    pub fn retire(&self, token: &str) -> bool {
        self.order(token, Order::Retire)
    }

    fn order(&self, token: &str, order: Order) -> bool {
        let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(token)
            .is_some_and(|l| l.orders.send(order).is_ok())
    }

    /// Resident memory (KiB) of the runner holding `token`: of `runner_pid`
    /// (the pid its hello reported) when that process is in the spawned
    /// process group (`cmd` may be a wrapper such as `uv run`), else of the
    /// spawned process. `None` when no live process has the token or
    /// `/proc` cannot tell.
    pub fn rss_kib(&self, token: &str, runner_pid: u32) -> Option<u64> {
        let spawned = {
            let live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
            live.get(token)?.pid?
        };
        let pid = if runner_pid != 0 && process_group_of(runner_pid) == Some(spawned) {
            runner_pid
        } else {
            spawned
        };
        rss_kib(pid)
    }

    /// Stops every runner process (SIGTERM, then SIGKILL after a grace) and
    /// waits for them.
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn keep_running(self, spawn: Spawn, cmd: Vec<String>, index: u32) {
        let label = format!("{}-{index}", spawn.runner);
        let mut delay = RESTART_MIN;
        while !self.inner.stop.is_cancelled() {
            let started = Instant::now();
            let mut retired = false;
            let auth = &self.inner.auth;
            let started_process = auth.issue(&spawn.runner).and_then(|token| {
                start_process(&spawn, &cmd, &token, &label)
                    .map(|child| (child, token.clone()))
                    .inspect_err(|_| auth.revoke(&spawn.runner, &token))
            });
            match started_process {
                Ok((child, token)) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.inner
                        .live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            token.clone(),
                            Live {
                                orders: tx,
                                pid: child.id(),
                            },
                        );
                    retired = self.watch(child, rx, &label).await;
                    self.inner
                        .live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&token);
                    // An exited process's token admits nothing more.
                    auth.revoke(&spawn.runner, &token);
                }
                Err(e) => {
                    error!(runner = %spawn.runner, "cannot start runner process {:?}: {e}", cmd)
                }
            }
            if self.inner.stop.is_cancelled() {
                return;
            }
            if retired {
                // A planned replacement, not a crash: no delay, no backoff.
                info!(runner = %label, "starting a fresh runner process");
                delay = RESTART_MIN;
                continue;
            }
            if started.elapsed() >= STABLE_AFTER {
                delay = RESTART_MIN;
            }
            warn!(runner = %label, "restarting runner process in {delay:?}");
            tokio::select! {
                _ = self.inner.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RESTART_MAX);
        }
    }

    /// Waits for the process to exit, killing or retiring it on request and
    /// stopping it on shutdown; then kills what is left of its process group.
    /// True when it was retired.
    async fn watch(
        &self,
        mut child: Child,
        mut orders: mpsc::UnboundedReceiver<Order>,
        label: &str,
    ) -> bool {
        let pid = child.id();
        let mut retired = false;
        let status = tokio::select! {
            status = child.wait() => status,
            Some(order) = orders.recv() => {
                if order == Order::Retire {
                    retired = true;
                    info!(runner = %label, ?pid, "retiring runner process (recycling limit)");
                    self.terminate(&mut child, label).await
                } else {
                    signal_group(pid, libc::SIGKILL);
                    child.wait().await
                }
            }
            _ = self.inner.stop.cancelled() => self.terminate(&mut child, label).await,
        };
        // Children of the runner still in its group (they ignored SIGTERM, or
        // the runner died without them) would run on unsupervised.
        signal_group(pid, libc::SIGKILL);
        match status {
            Ok(s) if retired || self.inner.stop.is_cancelled() => {
                info!(runner = %label, ?pid, "runner process stopped: {s}")
            }
            Ok(s) => warn!(runner = %label, ?pid, "runner process exited: {s}"),
            Err(e) => warn!(runner = %label, ?pid, "waiting for runner process failed: {e}"),
        }
        retired
    }

    /// SIGTERM to the group, SIGKILL after [`STOP_GRACE`]; waits for the exit.
    async fn terminate(&self, child: &mut Child, label: &str) -> std::io::Result<ExitStatus> {
        let pid = child.id();
        signal_group(pid, libc::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!(runner = %label, ?pid, "runner did not exit after SIGTERM; killing it");
                signal_group(pid, libc::SIGKILL);
                child.wait().await
            }
        }
    }
}

/// Checks that `runner`'s `cwd` (when set) is an existing directory, so a
/// bad one is not reported by the spawn as the program not being found.
pub fn check_cwd(name: &str, runner: &RunnerConfig) -> Result<(), String> {
    let Some(cwd) = &runner.cwd else {
        return Ok(());
    };
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "runner {name}: cwd {} is not a directory",
            cwd.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "runner {name}: cwd {} does not exist",
            cwd.display()
        )),
        Err(e) => Err(format!(
            "runner {name}: cwd {} cannot be used: {e}",
            cwd.display()
        )),
    }
}

fn start_process(
    spawn: &Spawn,
    cmd: &[String],
    token: &str,
    label: &str,
) -> std::io::Result<Child> {
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    // Checked again at each start: the directory may have gone since.
    check_cwd(&spawn.runner, &spawn.config).map_err(std::io::Error::other)?;
    let mut command = Command::new(program);
    for name in withheld_env(std::env::vars_os(), &spawn.redis_dsn, &spawn.secret_env) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(&spawn.config.env)
        .env("RRQ_ORCHESTRATOR_ADDR", &spawn.addr)
        .env("RRQ_RUNNER_NAME", &spawn.runner)
        .env("RRQ_RUNNER_TOKEN", token)
        // Tells the runtime it was spawned: it exits when its stream ends
        // (an external runner, which also has a token, reconnects instead).
        .env("RRQ_RUNNER_SPAWNED", "1")
        .env(
            "RRQ_RUNNER_MAX_IN_FLIGHT",
            spawn.config.max_in_flight.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a kill reaches the runner's own children
        // (e.g. `uv run python ...`) and a terminal's Ctrl-C reaches only us:
        // we stop runners in order, after draining.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spawn.config.cwd {
        command.current_dir(cwd);
    }
    set_parent_death_signal(&mut command);
    let mut child = command.spawn()?;
    info!(runner = %label, pid = ?child.id(), "started runner process");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(crate::output::forward(out, format!("[{label}] ")));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(crate::output::forward(err, format!("[{label}] ")));
    }
    Ok(child)
}

/// Variables a runner never inherits, by name.
const WITHHELD_ENV: &[&str] = &["RRQ_REDIS_DSN"];

/// The inherited variables to remove from a runner's environment: a runner
/// talks only to the orchestrator, never to Redis, so it gets no Redis
/// credential a handler could read or return. That is `RRQ_REDIS_DSN`, any
/// variable holding the orchestrator's DSN under another name (`REDIS_URL=...`
/// from the same deployment), and the `secret_names` (every runner's
/// `token_env`). Everything else is inherited (`PATH`, `HOME`, a virtualenv,
/// the application's own settings), and the runner's `env` table is applied
/// after this, so an operator can still hand a runner a DSN on purpose.
fn withheld_env(
    parent: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    redis_dsn: &str,
    secret_names: &[String],
) -> Vec<std::ffi::OsString> {
    parent
        .into_iter()
        .filter(|(name, value)| {
            name.to_str()
                .is_some_and(|n| WITHHELD_ENV.contains(&n) || secret_names.iter().any(|s| s == n))
                || (!redis_dsn.is_empty() && value.to_str() == Some(redis_dsn))
        })
        .map(|(name, _)| name)
        .collect()
}

/// Sends `signal` to the process group led by `pid` (see `process_group(0)`).
#[allow(unsafe_code)]
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. The group id is our
    // child's pid. Before the child is reaped that pid cannot be reused; after
    // (the final sweep in `watch`), Linux does not hand out a pid that is
    // still some live group's id, so the signal reaches our leftovers or
    // nobody (ESRCH), short of the group emptying and the pid wrapping
    // around in between.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Process group id of `pid`, when it exists.
#[allow(unsafe_code)]
fn process_group_of(pid: u32) -> Option<u32> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: getpgid(2) has no memory-safety preconditions.
    let pgid = unsafe { libc::getpgid(pid) };
    u32::try_from(pgid).ok()
}

/// `VmRSS` of `pid` from `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes the kernel send SIGTERM to the runner when the orchestrator dies,
/// even by SIGKILL, so no orphaned runner keeps running jobs whose leases
/// nobody renews.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    //
    // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
    // We spawn from tokio runtime worker threads, which live as long as the
    // orchestrator, so in practice it fires when the orchestrator exits.
    let parent = std::process::id();
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If we died between fork and prctl, the signal will never come.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_credentials_are_withheld_from_runners() {
        let dsn = "unix://:secret@/run/redis.sock?db=0";
        let parent = [
            ("PATH", "/usr/bin"),
            ("RRQ_REDIS_DSN", dsn),
            ("REDIS_URL", dsn),
            ("APP_REDIS", "redis://cache:6379/0"),
            ("HOME", "/home/app"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let withheld = withheld_env(parent, dsn, &[]);
        assert_eq!(withheld, ["RRQ_REDIS_DSN", "REDIS_URL"]);
        // The name alone is enough, whatever its value.
        let parent = [("RRQ_REDIS_DSN".into(), "redis://other/1".into())];
        assert_eq!(withheld_env(parent, dsn, &[]), ["RRQ_REDIS_DSN"]);
        // So is a runner's token_env.
        let parent =
            [("EXT_TOKEN", "t0ken"), ("PATH", "/usr/bin")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(
            withheld_env(parent, dsn, &["EXT_TOKEN".to_owned()]),
            ["EXT_TOKEN"]
        );
    }

    #[test]
    fn a_bad_cwd_is_named() {
        let mut runner = RunnerConfig {
            cwd: Some("/nonexistent/rrq-dir".into()),
            ..RunnerConfig::default()
        };
        assert_eq!(
            check_cwd("py", &runner).unwrap_err(),
            "runner py: cwd /nonexistent/rrq-dir does not exist"
        );
        runner.cwd = Some("/proc/self/status".into());
        assert_eq!(
            check_cwd("py", &runner).unwrap_err(),
            "runner py: cwd /proc/self/status is not a directory"
        );
        runner.cwd = Some("/".into());
        assert!(check_cwd("py", &runner).is_ok());
        runner.cwd = None;
        assert!(check_cwd("py", &runner).is_ok());
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tpython\nVmHWM:\t  9000 kB\nVmRSS:\t   8123 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(8123));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
