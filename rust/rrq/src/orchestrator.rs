//! Wires the services together and owns the order of startup and shutdown.

use std::sync::Arc;

use rrq_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::RunnerAuth;
use crate::clock::RedisClock;
use crate::config::Config;
use crate::config::ListenAddr;
use crate::dispatcher::Dispatcher;
use crate::health::Heartbeat;
use crate::scheduler::{Scheduler, ServedQueues, Wake};
use crate::server::Listener;
use crate::settle::Settler;
use crate::shutdown::Shutdown;
use crate::socket_dir::SocketDir;
use crate::supervisor::{Spawn, Supervisor};
use crate::telemetry::Telemetry;
use crate::{Error, Result, cron, discovery, lease, recovery};

/// How `rrq worker run` was invoked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--queue`: serve exactly these (empty = discover).
    pub queues: Vec<String>,
    /// `--burst`: exit when no job is due or running.
    pub burst: bool,
}

/// `hostname-pid-random`: unique per process, readable in logs and in the
/// `lease_owner` field.
pub fn instance_id() -> String {
    let host = crate::health::host_name();
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}

/// Runs the orchestrator until a signal (or, with `--burst`, until the work is done).
pub async fn run(cfg: Config, opts: RunOptions) -> Result<()> {
    let cfg = Arc::new(cfg);
    let instance_id = instance_id();
    // Validated with the configuration already; this names the entry again
    // should anything slip through.
    let cron_entries = Arc::new(cron::entries(&cfg).map_err(|message| {
        Error::Config(crate::config::ConfigError::Invalid {
            origin: "config".to_owned(),
            key: "rrq.cron_jobs".to_owned(),
            message,
        })
    })?);
    // A runner's working directory is checked here, where it will be used
    // (`rrq check` and `rrq dlq` load the same file and spawn nothing).
    for (name, runner) in cfg.runners.iter().filter(|(_, r)| r.cmd.is_some()) {
        crate::supervisor::check_cwd(name, runner).map_err(|message| {
            Error::Config(crate::config::ConfigError::Invalid {
                origin: "config".to_owned(),
                key: format!("rrq.runners.{name}.cwd"),
                message,
            })
        })?;
    }
    // External runners' tokens: a missing one is a configuration error,
    // reported before anything connects.
    let auth = Arc::new(RunnerAuth::from_config(&cfg, |var| {
        std::env::var(var).ok()
    })?);
    let dsn = rrq_store::redact_dsn(&cfg.redis_dsn);
    let redis_err = |source| Error::Redis {
        dsn: dsn.clone(),
        source,
    };
    let client = rrq_store::open_client(&cfg.redis_dsn).map_err(redis_err)?;
    let conn = redis::aio::ConnectionManager::new_with_config(
        client.clone(),
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            // A reply is awaited for up to one lease (the client's default is
            // 500 ms). A request given up on may still run when a partition
            // heals: an abandoned lease renewal would leave us fencing jobs
            // Redis still gives us, and an abandoned claim strands its jobs
            // until their lease expires. Waiting a lease covers every
            // partition that the lease itself tolerates.
            .set_response_timeout(Some(cfg.lease()))
            .set_max_delay(std::time::Duration::from_secs(2)),
    )
    .await
    .map_err(redis_err)?;
    {
        let mut probe = conn.clone();
        let policy = crate::redis_policy::read_policy(&mut probe).await;
        let persistence = crate::redis_policy::read_persistence(&mut probe).await;
        for verdict in [
            crate::redis_policy::verdict(policy, cfg.allow_evicting_redis),
            crate::redis_policy::persistence_verdict(persistence, cfg.allow_ephemeral_redis),
        ] {
            if let Some(message) = crate::redis_policy::apply(&verdict) {
                return Err(Error::UnsafeRedis(message));
            }
        }
    }
    // Validated with the config; the database comes from the DSN.
    let ns = rrq_store::Namespace::of_client(&cfg.key_prefix, &client).map_err(|e| {
        Error::Config(crate::config::ConfigError::Invalid {
            origin: "rrq.toml".to_owned(),
            key: "rrq.key_prefix".to_owned(),
            message: e.to_string(),
        })
    })?;
    let store = Store::new(conn, ns.clone());
    let clock = Arc::new(RedisClock::new());
    let started_at_ms = {
        let sent = std::time::Instant::now();
        let now = store.time_ms().await?;
        clock.observe(now, sent, std::time::Instant::now());
        now
    };
    let telemetry = Telemetry::from_env(clock.clone());

    let fixed = !opts.queues.is_empty();
    let initial = if fixed {
        opts.queues.clone()
    } else {
        let mut q = store.queues().await?;
        q.push(cfg.default_queue_name.clone());
        q
    };
    let queues = Arc::new(ServedQueues::new(initial, fixed));

    let shutdown = Shutdown::listen()?;
    let stop_claims = CancellationToken::new();
    let stop_services = CancellationToken::new();
    let stop_listeners = CancellationToken::new();

    let wake = Arc::new(Wake::default());
    let settler = Settler::start(store.clone());
    let supervisor = Supervisor::new(auth.clone());
    let dispatcher = Dispatcher::new(
        cfg.clone(),
        instance_id.clone(),
        settler.clone(),
        supervisor.clone(),
        wake.clone(),
        telemetry.clone(),
    );

    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    // Created only if a runner listens on a unix socket; removed on return.
    let mut socket_dir: Option<SocketDir> = None;
    for (index, (name, runner)) in cfg.runners.iter().enumerate() {
        let addr = runner.listen_addr().map_err(|message| {
            Error::Config(crate::config::ConfigError::Invalid {
                origin: "config".to_owned(),
                key: format!("rrq.runners.{name}.tcp_socket"),
                message,
            })
        })?;
        let l = match addr {
            ListenAddr::Tcp(addr) => Listener::bind(name, addr).await?,
            ListenAddr::Unix => {
                let dir = match &mut socket_dir {
                    Some(dir) => dir,
                    None => socket_dir.insert(SocketDir::create()?),
                };
                Listener::bind_unix(name, &dir.socket(index))?
            }
        };
        addrs.push((name.clone(), l.addr.clone()));
        listeners.push(l.serve(
            cfg.clone(),
            dispatcher.clone(),
            auth.clone(),
            instance_id.clone(),
            stop_listeners.clone(),
        ));
    }
    let secret_env: Vec<String> = cfg
        .runners
        .values()
        .filter_map(|r| r.token_env.clone())
        .collect();
    for (name, addr) in &addrs {
        let runner = &cfg.runners[name];
        if runner.cmd.is_some() {
            supervisor.start(Spawn {
                runner: name.clone(),
                config: runner.clone(),
                addr: addr.clone(),
                secret_env: secret_env.clone(),
                redis_dsn: cfg.redis_dsn.clone(),
            });
        }
    }

    // Missed cron ticks within the grace are enqueued before we report ready.
    let cron_from = if cron_entries.is_empty() {
        started_at_ms
    } else {
        cron::catch_up(&store, &cfg, &cron_entries, &clock).await?
    };

    let burst_done = opts.burst.then(CancellationToken::new);
    let heartbeat = Arc::new(Heartbeat {
        store: store.clone(),
        clock: clock.clone(),
        dispatcher: dispatcher.clone(),
        queues: queues.clone(),
        instance_id: instance_id.clone(),
        started_at_ms,
        epoch: Default::default(),
    });
    let mut tasks = vec![
        tokio::spawn(
            Scheduler {
                cfg: cfg.clone(),
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                settler: settler.clone(),
                wake: wake.clone(),
                queues: queues.clone(),
                owner: instance_id.clone(),
                clock: clock.clone(),
                stop: stop_claims.clone(),
                burst_done: burst_done.clone(),
            }
            .run(),
        ),
        tokio::spawn(discovery::listen(
            client.clone(),
            ns,
            queues.clone(),
            wake.clone(),
            dispatcher.clone(),
            stop_services.clone(),
        )),
        tokio::spawn(discovery::refresh(
            store.clone(),
            queues.clone(),
            wake.clone(),
            stop_services.clone(),
        )),
        tokio::spawn(lease::run(
            cfg.clone(),
            store.clone(),
            dispatcher.clone(),
            instance_id.clone(),
            stop_services.clone(),
        )),
        tokio::spawn(recovery::run(
            cfg.clone(),
            store.clone(),
            queues.clone(),
            stop_services.clone(),
        )),
        tokio::spawn(heartbeat.clone().run(stop_services.clone())),
    ];
    if !cron_entries.is_empty() && !opts.burst {
        tasks.push(tokio::spawn(cron::run(
            store.clone(),
            cfg.clone(),
            cron_entries.clone(),
            clock.clone(),
            cron_from,
            stop_claims.clone(),
        )));
    }

    let listen: Vec<String> = addrs.iter().map(|(n, a)| format!("{n}={a}")).collect();
    info!(
        "rrq orchestrator ready instance_id={instance_id} listen=[{}] queues=[{}] redis={dsn} burst={}",
        listen.join(","),
        queues.list().join(","),
        opts.burst
    );

    let burst_wait = async {
        match &burst_done {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.requested.cancelled() => info!("shutdown requested; draining"),
        _ = burst_wait => {}
    }

    // 1. Stop claiming; held jobs go back to their queues.
    stop_claims.cancel();
    dispatcher.begin_drain();
    // 2. Let running executions finish, up to the grace period.
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace();
    dispatcher.wait_idle(deadline, &shutdown.hurry).await;
    // 3. Cancel and release the rest without charging their attempt.
    let released = dispatcher.release_running();
    if released > 0 {
        warn!(
            released,
            "released executions still running after shutdown_grace_seconds"
        );
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), settler.flushed())
        .await
        .is_err()
    {
        warn!(
            pending = settler.pending(),
            "gave up waiting for settles; lease recovery will handle them"
        );
    }
    // 4. Stop runners and services.
    stop_services.cancel();
    supervisor.stop().await;
    dispatcher.close_all();
    stop_listeners.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if let Err(e) = heartbeat.remove().await {
        warn!("removing the heartbeat failed: {e}");
    }
    if let Some(t) = &telemetry {
        t.shutdown(std::time::Duration::from_secs(5)).await;
    }
    for l in listeners {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), l).await;
    }
    info!("rrq orchestrator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_differ() {
        let a = instance_id();
        assert!(a.contains(&std::process::id().to_string()));
        assert_ne!(a, instance_id());
    }
}
