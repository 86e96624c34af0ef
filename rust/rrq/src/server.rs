//! The gRPC side: `RunnerService.Connect`, one listener per configured runner.
//!
//! Each stream goes hello → hello_ack → (execute/cancel ⇄ outcomes/heartbeat).
//! A protocol violation ends only that stream, with a typed status. A hello
//! without a token valid for its runner ([`crate::auth`]) ends with
//! UNAUTHENTICATED before any hello_ack: that stream never sees a job.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rrq_proto::v1::runner_service_server::{RunnerService, RunnerServiceServer};
use rrq_proto::v1::{
    HelloAck, OrchestratorMessage, RunnerHello, RunnerMessage, orchestrator_message, runner_message,
};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{Admission, RunnerAuth};
use crate::config::Config;
use crate::dispatcher::{Dispatcher, NewSession};
use crate::session::SessionId;

/// The only protocol version this orchestrator speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message accepted from a runner: room for a full batch of results
/// of `max_payload_bytes` each.
const MIN_DECODING_LIMIT: usize = 64 * 1024 * 1024;

/// `RunnerService` implementation shared by every listener.
#[derive(Debug, Clone)]
pub struct Endpoint {
    cfg: Arc<Config>,
    dispatcher: Arc<Dispatcher>,
    auth: Arc<RunnerAuth>,
    instance_id: String,
    /// Runner this listener was opened for (for logs).
    listener_runner: String,
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<OrchestratorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RunnerService for Endpoint {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<RunnerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let silence = self.cfg.heartbeat_timeout();
        let first = match tokio::time::timeout(silence, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello received")),
            // A first frame that does not decode gets the same status as a later one.
            Ok(Err(status)) => return Err(inbound_error(&status)),
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream ended before hello")),
            Ok(Ok(Some(m))) => m,
        };
        let hello = match first.kind {
            Some(runner_message::Kind::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("the first message must be hello")),
        };
        let admission = self.check_hello(&hello)?;

        let (tx, rx) = mpsc::unbounded_channel();
        // The ack goes first on the channel, so it precedes every execute.
        let _ = tx.send(Ok(OrchestratorMessage {
            kind: Some(orchestrator_message::Kind::HelloAck(HelloAck {
                protocol_version: PROTOCOL_VERSION,
                orchestrator_id: self.instance_id.clone(),
                heartbeat_interval_ms: self.cfg.heartbeat_interval().as_millis() as i64,
                max_result_bytes: i64::try_from(self.cfg.max_payload_bytes).unwrap_or(i64::MAX),
                max_error_bytes: i64::from(
                    self.cfg
                        .max_error_message_bytes
                        .max(self.cfg.max_traceback_bytes),
                ),
            })),
        }));
        let close = CancellationToken::new();
        let handlers: BTreeSet<String> = hello.handlers.iter().cloned().collect();
        info!(
            "runner connected name={} pid={} max_in_flight={} handlers={} listener={}",
            hello.runner_name,
            hello.pid,
            hello.max_in_flight,
            handlers.len(),
            self.listener_runner
        );
        let sid = self.dispatcher.register(NewSession {
            runner: hello.runner_name.clone(),
            handlers,
            max_in_flight: hello.max_in_flight as usize,
            pid: hello.pid,
            admission,
            tx: tx.clone(),
            close: close.clone(),
        });
        tokio::spawn(read_loop(
            self.dispatcher.clone(),
            sid,
            inbound,
            tx,
            close,
            silence,
        ));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

impl Endpoint {
    /// The endpoint of `listener_runner`'s listener. [`Listener::serve`]
    /// builds its own; the wire-format fuzzer (rrq-fuzz, fault row F30) uses
    /// this to drive `connect` with in-memory streams.
    pub fn new(
        cfg: Arc<Config>,
        dispatcher: Arc<Dispatcher>,
        auth: Arc<RunnerAuth>,
        instance_id: String,
        listener_runner: String,
    ) -> Self {
        Self {
            cfg,
            dispatcher,
            auth,
            instance_id,
            listener_runner,
        }
    }

    /// Checks the hello's fields, then its token: the admission to keep
    /// with the session, or the status that ends the stream.
    fn check_hello(&self, hello: &RunnerHello) -> Result<Admission, Status> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol_version {} is not supported; this orchestrator speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            )));
        }
        if hello.runner_name.is_empty() {
            return Err(Status::invalid_argument(
                "hello.runner_name must not be empty",
            ));
        }
        if hello.max_in_flight == 0 {
            return Err(Status::invalid_argument(
                "hello.max_in_flight must be at least 1",
            ));
        }
        if !self.cfg.runners.contains_key(&hello.runner_name) {
            // Answered as any other refused credential: a stream that has not
            // authenticated learns nothing of the configuration (not even
            // which runner names exist); the operator's log says what happened.
            let names: Vec<&str> = self.cfg.runners.keys().map(String::as_str).collect();
            warn!(
                "runner refused: no runner named {:?} is configured (configured: {}; pid={} listener={})",
                hello.runner_name,
                names.join(", "),
                hello.pid,
                self.listener_runner
            );
            return Err(Status::unauthenticated(format!(
                "no token is valid for runner {:?}",
                hello.runner_name
            )));
        }
        self.auth
            .admit(&hello.runner_name, &hello.process_token)
            .map_err(|e| {
                // `{:?}` escapes whatever the caller put in the name; the
                // error names the runner, never the token.
                warn!(
                    "runner refused: {e} (name={:?} pid={} listener={})",
                    hello.runner_name, hello.pid, self.listener_runner
                );
                Status::unauthenticated(e.to_string())
            })
    }
}

/// Reads one session's messages until it ends, goes silent, breaks the
/// protocol or is closed by us; then reports it lost.
async fn read_loop(
    dispatcher: Arc<Dispatcher>,
    sid: SessionId,
    mut inbound: Streaming<RunnerMessage>,
    tx: mpsc::UnboundedSender<Result<OrchestratorMessage, Status>>,
    close: CancellationToken,
    silence: Duration,
) {
    let reason = loop {
        let next = tokio::select! {
            _ = close.cancelled() => break "closed by the orchestrator".to_owned(),
            r = tokio::time::timeout(silence, inbound.message()) => r,
        };
        let message = match next {
            Err(_) => {
                let _ = tx.send(Err(Status::deadline_exceeded(format!(
                    "no message for {}s (runner_heartbeat_timeout_seconds)",
                    silence.as_secs_f64()
                ))));
                break "no heartbeat".to_owned();
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => break "stream ended".to_owned(),
            Ok(Err(status)) => {
                // Tell the runner why its stream ends (a frame that does not
                // decode, or one over the size limit) instead of ending it OK.
                let _ = tx.send(Err(inbound_error(&status)));
                break format!("stream failed: {}", status.message());
            }
        };
        match message.kind {
            Some(runner_message::Kind::Outcomes(batch)) => {
                dispatcher.on_outcomes(sid, batch.outcomes)
            }
            Some(runner_message::Kind::Heartbeat(h)) => {
                debug!(session = sid, in_flight = h.in_flight, "heartbeat")
            }
            Some(runner_message::Kind::Hello(_)) => {
                warn!(
                    session = sid,
                    "runner sent a second hello; closing its stream"
                );
                let _ = tx.send(Err(Status::invalid_argument("hello may only be sent once")));
                break "protocol violation: second hello".to_owned();
            }
            None => {
                warn!(
                    session = sid,
                    "runner sent a message without a kind; closing its stream"
                );
                let _ = tx.send(Err(Status::invalid_argument("message has no kind set")));
                break "protocol violation: empty message".to_owned();
            }
        }
    };
    dispatcher.session_lost(sid, &reason);
}

/// The status a runner gets when its inbound stream fails to decode. Tonic
/// reports a frame over `max_decoding_message_size` as OUT_OF_RANGE; gRPC
/// names that case RESOURCE_EXHAUSTED.
fn inbound_error(status: &Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        Status::new(status.code(), status.message().to_owned())
    }
}

/// A bound runner listener.
#[derive(Debug)]
pub struct Listener {
    /// Runner name.
    pub runner: String,
    /// Bound address as runners dial it: `host:port`, or `unix:/path`.
    pub addr: String,
    bound: Bound,
}

#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds the loopback TCP `addr` for `runner`.
    pub async fn bind(runner: &str, addr: std::net::SocketAddr) -> crate::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| crate::Error::Bind {
                runner: runner.to_owned(),
                addr: addr.to_string(),
                source,
            })?;
        let addr = listener.local_addr()?;
        Ok(Self {
            runner: runner.to_owned(),
            addr: addr.to_string(),
            bound: Bound::Tcp(listener),
        })
    }

    /// Binds a unix socket at `path` (in a private directory, see
    /// [`crate::socket_dir`]) for `runner`, with mode 0600.
    pub fn bind_unix(runner: &str, path: &std::path::Path) -> crate::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |source| crate::Error::Bind {
            runner: runner.to_owned(),
            addr: format!("unix:{}", path.display()),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self {
            runner: runner.to_owned(),
            addr: format!("unix:{}", path.display()),
            bound: Bound::Unix(listener),
        })
    }

    /// Serves `RunnerService` on this listener until `stop`.
    pub fn serve(
        self,
        cfg: Arc<Config>,
        dispatcher: Arc<Dispatcher>,
        auth: Arc<RunnerAuth>,
        instance_id: String,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let limit = MIN_DECODING_LIMIT.max(
            usize::try_from(cfg.max_payload_bytes)
                .unwrap_or(usize::MAX)
                .saturating_mul(4),
        );
        let endpoint = Endpoint {
            cfg,
            dispatcher,
            auth,
            instance_id,
            listener_runner: self.runner.clone(),
        };
        let service = RunnerServiceServer::new(endpoint).max_decoding_message_size(limit);
        let runner = self.runner;
        let builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)));
        tokio::spawn(async move {
            let mut builder = builder;
            let router = builder.add_service(service);
            let result = match self.bound {
                Bound::Tcp(listener) => {
                    // serve_with_incoming ignores the builder's tcp_nodelay, so
                    // set it on the incoming sockets: with Nagle on, a small
                    // execute written while the runner delays its ACK waits
                    // 40 ms (seen as the pickup p99).
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                }
                Bound::Unix(listener) => {
                    router
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::UnixListenerStream::new(listener),
                            stop.cancelled_owned(),
                        )
                        .await
                }
            };
            if let Err(e) = result {
                warn!(runner, "runner listener stopped: {e}");
            }
        })
    }
}
