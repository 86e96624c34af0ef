//! [`Runner`]: connects to the orchestrator and serves a [`Registry`].

use std::sync::Arc;
use std::time::Duration;

use rrq_proto::v1::runner_service_client::RunnerServiceClient;
use rrq_proto::v1::{RunnerHello, RunnerMessage, orchestrator_message, runner_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::handler::Registry;
use crate::session::{Ended, Session};
use crate::{ADDR_ENV, MAX_IN_FLIGHT_ENV, NAME_ENV, PROTOCOL_VERSION, SPAWNED_ENV, TOKEN_ENV};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A spawned runner that never got a stream gives up after this many tries;
/// its orchestrator then starts a new process.
const SPAWNED_CONNECT_ATTEMPTS: u32 = 10;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_NAME: &str = "rust";

/// Serves the handlers of a [`Registry`] to one orchestrator.
///
/// Settings not given to the builder come from the environment the
/// orchestrator sets for the processes it spawns (`RRQ_RUNNER_NAME`,
/// `RRQ_RUNNER_TOKEN`, `RRQ_RUNNER_SPAWNED`, `RRQ_RUNNER_MAX_IN_FLIGHT`), else
/// the defaults (name `"rust"`, no token, external, max_in_flight 1).
///
/// A spawned runner (`RRQ_RUNNER_SPAWNED=1`) exits when its stream ends.
/// An external runner reconnects with backoff until it is stopped. SIGTERM
/// (and SIGINT, for external runners) stops the runner: no new executions,
/// running ones get the shutdown grace (default 10 s), then the stream closes.
#[derive(Debug)]
pub struct Runner {
    registry: Arc<Registry>,
    max_in_flight: Option<u32>,
    runner_name: Option<String>,
    process_token: Option<String>,
    shutdown_grace: Duration,
    handle_signals: bool,
    stop: CancellationToken,
}

/// How one connection attempt went.
enum Attempt {
    Ended(Ended),
    Rejected(Error),
    Unreachable,
}

impl Runner {
    /// A runner for `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
            max_in_flight: None,
            runner_name: None,
            process_token: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            handle_signals: true,
            stop: CancellationToken::new(),
        }
    }

    /// Executions accepted at once (overrides `RRQ_RUNNER_MAX_IN_FLIGHT`).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// Runner name, `[rrq.runners.<name>]` (overrides `RRQ_RUNNER_NAME`).
    pub fn runner_name(mut self, name: impl Into<String>) -> Self {
        self.runner_name = Some(name.into());
        self
    }

    /// Token the hello presents (overrides `RRQ_RUNNER_TOKEN`): an external
    /// runner's configured token (`rrq.runners.<name>.token_env`).
    pub fn process_token(mut self, token: impl Into<String>) -> Self {
        self.process_token = Some(token.into());
        self
    }

    /// How long running executions may finish after a stop (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Whether SIGTERM/SIGINT stop the runner (default true). Turn it off
    /// when the runner lives inside a larger program that owns the signals,
    /// and stop it through [`Runner::stop_token`].
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// A token that stops the runner when cancelled, as SIGTERM does.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves the orchestrator at `RRQ_ORCHESTRATOR_ADDR` (`host:port`).
    pub async fn run_from_env(self) -> Result<()> {
        let addr = std::env::var(ADDR_ENV)
            .ok()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Error::Config(format!("no orchestrator address: set {ADDR_ENV}")))?;
        self.run(addr).await
    }

    /// Serves the orchestrator at `addr` (`host:port`, `http://host:port`,
    /// or `unix:/path` for the unix socket of a spawned runner) until
    /// stopped or, for a spawned runner, until its stream ends.
    pub async fn run(self, addr: impl Into<String>) -> Result<()> {
        let addr = addr.into();
        let settings = self.settings()?;
        let unix = addr.strip_prefix("unix:").map(std::path::PathBuf::from);
        let uri = if unix.is_some() {
            // Only the authority of HTTP/2 requests; the connector dials the socket.
            "http://localhost".to_owned()
        } else if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|source| Error::InvalidAddress {
                addr: addr.clone(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let signals = self
            .handle_signals
            .then(|| spawn_signal_listener(self.stop.clone(), settings.spawned));
        let dial = Dial { endpoint, unix };
        let result = self.serve(&addr, &dial, &settings).await;
        if let Some(task) = signals {
            task.abort();
        }
        result
    }

    fn settings(&self) -> Result<Settings> {
        let name = match &self.runner_name {
            Some(n) => n.clone(),
            None => std::env::var(NAME_ENV)
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAME.to_owned()),
        };
        if name.is_empty() {
            return Err(Error::Config("the runner name must not be empty".into()));
        }
        let token = match &self.process_token {
            Some(t) => t.clone(),
            None => std::env::var(TOKEN_ENV).unwrap_or_default(),
        };
        let max_in_flight = match self.max_in_flight {
            Some(n) => n,
            None => match std::env::var(MAX_IN_FLIGHT_ENV) {
                Ok(raw) if !raw.is_empty() => raw.trim().parse::<u32>().map_err(|_| {
                    Error::Config(format!(
                        "{MAX_IN_FLIGHT_ENV} must be a positive integer, got {raw:?}"
                    ))
                })?,
                _ => 1,
            },
        };
        if max_in_flight == 0 {
            return Err(Error::Config("max_in_flight must be at least 1".into()));
        }
        Ok(Settings {
            name,
            token,
            spawned: std::env::var(SPAWNED_ENV).is_ok_and(|v| v == "1"),
            max_in_flight,
        })
    }

    async fn serve(&self, addr: &str, endpoint: &Dial, settings: &Settings) -> Result<()> {
        let spawned = settings.spawned;
        let mut delay = BACKOFF_INITIAL;
        let mut failures = 0;
        while !self.stop.is_cancelled() {
            match self.session(addr, endpoint, settings).await {
                Attempt::Ended(Ended::Stopped) => return Ok(()),
                Attempt::Ended(Ended::Stream) => {
                    if spawned {
                        // The orchestrator is gone; its replacement spawns its own runners.
                        return Ok(());
                    }
                    failures = 0;
                    delay = BACKOFF_INITIAL;
                }
                Attempt::Rejected(err) => {
                    error!("{err}");
                    if spawned {
                        return Err(err);
                    }
                    failures += 1;
                }
                Attempt::Unreachable => {
                    failures += 1;
                    if spawned && failures >= SPAWNED_CONNECT_ATTEMPTS {
                        return Err(Error::Unreachable {
                            addr: addr.to_owned(),
                            attempts: failures,
                        });
                    }
                }
            }
            let jittered = delay.mul_f64(0.5 + fastrand::f64());
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(jittered) => {}
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
        Ok(())
    }

    async fn session(&self, addr: &str, endpoint: &Dial, settings: &Settings) -> Attempt {
        let channel = tokio::select! {
            () = self.stop.cancelled() => return Attempt::Ended(Ended::Stopped),
            c = endpoint.connect() => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!("orchestrator at {addr} is not reachable: {e}");
                    return Attempt::Unreachable;
                }
            },
        };
        let mut client = RunnerServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = RunnerHello {
            protocol_version: PROTOCOL_VERSION,
            runner_name: settings.name.clone(),
            language: "rust".to_owned(),
            handlers: self.registry.names(),
            max_in_flight: settings.max_in_flight,
            pid: std::process::id(),
            process_token: settings.token.clone(),
        };
        let _ = tx.send(RunnerMessage {
            kind: Some(runner_message::Kind::Hello(hello)),
        });
        let mut inbound = match client.connect(UnboundedReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Attempt::Rejected(Error::Rejected(status)),
        };
        let ack = match inbound.message().await {
            Ok(Some(message)) => match message.kind {
                Some(orchestrator_message::Kind::HelloAck(ack)) => ack,
                _ => {
                    return Attempt::Rejected(Error::Protocol(
                        "the orchestrator's first message was not a hello_ack".into(),
                    ));
                }
            },
            Ok(None) => {
                return Attempt::Rejected(Error::Protocol(
                    "the stream ended before the hello_ack".into(),
                ));
            }
            Err(status) => return Attempt::Rejected(Error::Rejected(status)),
        };
        info!(
            "connected to orchestrator {} at {addr} as runner {:?} ({} handler(s), max_in_flight {})",
            ack.orchestrator_id,
            settings.name,
            self.registry.len(),
            settings.max_in_flight
        );
        let session = Session {
            registry: self.registry.clone(),
            ack,
            outbound: tx,
            stop: self.stop.clone(),
            shutdown_grace: self.shutdown_grace,
        };
        Attempt::Ended(session.run(inbound).await)
    }
}

/// How to reach the orchestrator: TCP through the endpoint, or its unix socket.
struct Dial {
    endpoint: Endpoint,
    unix: Option<std::path::PathBuf>,
}

impl Dial {
    async fn connect(&self) -> std::result::Result<Channel, tonic::transport::Error> {
        let Some(path) = self.unix.clone() else {
            return self.endpoint.connect().await;
        };
        self.endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
    }
}

#[derive(Debug)]
struct Settings {
    name: String,
    token: String,
    /// Started by the orchestrator: exit when the stream ends.
    spawned: bool,
    max_in_flight: u32,
}

/// SIGTERM (and, for an external runner, SIGINT) cancels `stop`. A spawned
/// runner shares the terminal's process group with its orchestrator: on
/// Ctrl-C the orchestrator drains and then stops its runners, so the runner
/// ignores SIGINT itself.
#[cfg(unix)]
fn spawn_signal_listener(stop: CancellationToken, spawned: bool) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => {
                    if !spawned {
                        break;
                    }
                }
            }
        }
        info!("signal received: stopping");
        stop.cancel();
    })
}

#[cfg(not(unix))]
fn spawn_signal_listener(stop: CancellationToken, _spawned: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    })
}
