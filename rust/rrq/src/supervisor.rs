//! Runner processes: spawns `pool_size` copies of each runner's `cmd`,
//! forwards their output, restarts them with backoff, and kills one by its
//! process token when a job it runs ignores a cancel. Each process gets a
//! fresh spawn token from [`RunnerAuth`], revoked when it exits.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
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

#[derive(Debug)]
struct Inner {
    /// Issues and revokes spawn tokens.
    auth: Arc<RunnerAuth>,
    /// Kill switch of each live process, by process token.
    kills: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
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
    /// Variables of the orchestrator's environment that hold secrets (every
    /// runner's `token_env`): removed from the runner's environment.
    pub secret_env: Vec<String>,
}

impl Supervisor {
    /// A supervisor whose processes authenticate through `auth`.
    pub fn new(auth: Arc<RunnerAuth>) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth,
                kills: Mutex::default(),
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

    /// SIGKILLs the process holding `token`; false if no live process has it.
    pub fn kill(&self, token: &str) -> bool {
        let kills = self.inner.kills.lock().unwrap_or_else(|p| p.into_inner());
        kills.get(token).is_some_and(|tx| tx.send(()).is_ok())
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
                        .kills
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(token.clone(), tx);
                    self.watch(child, rx, &label).await;
                    self.inner
                        .kills
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

    /// Waits for the process to exit, killing it on request or on shutdown.
    async fn watch(&self, mut child: Child, mut kill: mpsc::UnboundedReceiver<()>, label: &str) {
        let pid = child.id();
        tokio::select! {
            status = child.wait() => {
                match status {
                    Ok(s) => warn!(runner = %label, ?pid, "runner process exited: {s}"),
                    Err(e) => warn!(runner = %label, ?pid, "waiting for runner process failed: {e}"),
                }
                return;
            }
            Some(()) = kill.recv() => {
                signal_group(pid, libc::SIGKILL);
            }
            _ = self.inner.stop.cancelled() => {
                signal_group(pid, libc::SIGTERM);
                if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                    warn!(runner = %label, ?pid, "runner did not exit after SIGTERM; killing it");
                    signal_group(pid, libc::SIGKILL);
                }
            }
        }
        match child.wait().await {
            Ok(s) => info!(runner = %label, ?pid, "runner process stopped: {s}"),
            Err(e) => warn!(runner = %label, ?pid, "waiting for runner process failed: {e}"),
        }
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
    let mut command = Command::new(program);
    for var in &spawn.secret_env {
        command.env_remove(var);
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
        tokio::spawn(forward(out, format!("[{label}] ")));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, format!("[{label}] ")));
    }
    Ok(child)
}

/// Copies a child's output to our stderr line by line, each line prefixed
/// with the runner label so interleaved output stays attributable.
async fn forward(stream: impl AsyncRead + Unpin, prefix: String) {
    use std::io::Write as _;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let mut buf = Vec::with_capacity(prefix.len() + line.len());
                buf.extend_from_slice(prefix.as_bytes());
                buf.extend_from_slice(&line);
                // One write per line keeps lines of different runners whole.
                let _ = std::io::stderr().lock().write_all(&buf);
            }
        }
    }
}

/// Sends `signal` to the process group led by `pid` (see `process_group(0)`).
#[allow(unsafe_code)]
fn signal_group(pid: Option<u32>, signal: libc::c_int) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. The group id is our
    // child's pid, which is not reused while we have not reaped the child
    // (callers signal before `wait` completes).
    unsafe {
        libc::kill(-pid, signal);
    }
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
