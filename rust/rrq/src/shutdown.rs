//! Signals: the first SIGTERM/SIGINT asks for a graceful drain, a second one
//! cuts the drain's grace period short.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Shutdown requests, as tokens the orchestrator waits on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Cancelled by the first signal: stop claiming and drain.
    pub requested: CancellationToken,
    /// Cancelled by the second signal: stop waiting for running jobs.
    pub hurry: CancellationToken,
}

impl Shutdown {
    /// Installs the signal handlers.
    pub fn listen() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = Self {
            requested: CancellationToken::new(),
            hurry: CancellationToken::new(),
        };
        let tokens = me.clone();
        tokio::spawn(async move {
            for step in 0.. {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if step == 0 {
                    tokens.requested.cancel();
                } else {
                    warn!("second signal: releasing running jobs now");
                    tokens.hurry.cancel();
                }
            }
        });
        Ok(me)
    }
}
