//! Wake-ups, cancel requests and queue discovery: the pub/sub listener
//! (`PSUBSCRIBE <prefix>:db<N>:{*}:wake`, or `SUBSCRIBE` per queue with
//! `--queue`, plus `PSUBSCRIBE <prefix>:db<N>:{*}:cancel`: only this
//! namespace's channels, so another database's or prefix's queues are never
//! discovered or cancelled) and the periodic `SMEMBERS <prefix>:queues` refresh.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rrq_store::{Namespace, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::dispatcher::Dispatcher;
use crate::scheduler::{ServedQueues, Wake};

/// How often `rrq:queues` is read again (a lost wake-up for a new queue is
/// then found within this time).
const REFRESH: Duration = Duration::from_secs(2);

/// Listens for wake-up and cancel messages until `stop`; reconnects with backoff.
pub async fn listen(
    client: redis::Client,
    ns: Namespace,
    queues: Arc<ServedQueues>,
    wake: Arc<Wake>,
    dispatcher: Arc<Dispatcher>,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let run = async {
            let mut pubsub = client.get_async_pubsub().await?;
            if queues.fixed {
                for q in queues.list() {
                    pubsub.subscribe(ns.queue(&q).wake_channel()).await?;
                }
            } else {
                pubsub.psubscribe(ns.wake_pattern()).await?;
            }
            pubsub.psubscribe(ns.cancel_pattern()).await?;
            // Anything published while we were not subscribed was missed.
            wake.all();
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let channel = msg.get_channel_name();
                if let Some(queue) = ns.queue_of_wake_channel(channel) {
                    queues.add(queue);
                    wake.queue(queue);
                } else if let Some(queue) = ns.queue_of_cancel_channel(channel) {
                    match msg.get_payload::<String>() {
                        Ok(job_id) if !job_id.is_empty() => {
                            debug!(queue, %job_id, "cancel request");
                            dispatcher.cancel_requested(queue, &job_id);
                        }
                        _ => debug!(channel, "ignoring a cancel message without a job id"),
                    }
                } else {
                    debug!(channel, "ignoring message on unexpected channel");
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = run => r,
        };
        match result {
            Ok(()) => warn!("wake-up subscription ended; reconnecting"),
            Err(e) => warn!("wake-up subscription failed: {e}; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Adds the members of `rrq:queues` to the served queues periodically.
pub async fn refresh(
    store: Store,
    queues: Arc<ServedQueues>,
    wake: Arc<Wake>,
    stop: CancellationToken,
) {
    if queues.fixed {
        return;
    }
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.queues().await {
            Ok(names) => {
                for q in names {
                    if queues.add(&q) {
                        wake.queue(&q);
                    }
                }
            }
            Err(e) => warn!("reading {} failed: {e}", store.namespace().queues()),
        }
    }
}
