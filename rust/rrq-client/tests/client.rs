//! The producer client against a private redis-server: validation writes
//! nothing, the enqueue rules, waiting, cancelling. Waits are on events
//! (pub/sub, a subscriber count) with deadlines; no sleeps as synchronisation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use rrq_client::{Client, ClientConfig, Debounce, EnqueueOptions, Error, JobStatus, RateLimit};
use rrq_store::{QueueKeys, Settle, SettleAction};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// A private redis-server (see `rrq_testkit`), with the helpers these tests need.
struct Redis(rrq_testkit::RedisServer);

impl Redis {
    async fn start() -> Self {
        Self(rrq_testkit::RedisServer::start())
    }

    fn dsn(&self) -> String {
        self.0.dsn()
    }

    async fn dbsize(&self) -> i64 {
        let mut c = redis::Client::open(self.dsn())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("DBSIZE").query_async(&mut c).await.unwrap()
    }
}

async fn client(redis: &Redis) -> Client {
    let mut config = ClientConfig::with_dsn(redis.dsn());
    config.max_payload_bytes = 100;
    Client::with_config(config).await.unwrap()
}

fn option_of(e: Error) -> String {
    match e {
        Error::InvalidOption { option, .. } => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[tokio::test]
async fn validation_errors_write_nothing() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let o = EnqueueOptions::default;
    assert_eq!(
        option_of(c.enqueue("", o()).await.unwrap_err()),
        "function_name"
    );
    assert!(matches!(
        c.enqueue("f", o().params(json!([1]))).await,
        Err(Error::InvalidParams(_))
    ));
    assert!(matches!(
        c.enqueue("f", o().params(json!({"x": "y".repeat(200)})))
            .await,
        Err(Error::PayloadTooLarge(_))
    ));
    assert_eq!(
        option_of(c.enqueue("f", o().queue_name("a{b}")).await.unwrap_err()),
        "queue_name"
    );
    assert_eq!(
        option_of(c.enqueue("f", o().queue_name("")).await.unwrap_err()),
        "queue_name"
    );
    assert_eq!(
        option_of(c.enqueue("f", o().job_id("")).await.unwrap_err()),
        "job_id"
    );
    assert_eq!(
        option_of(c.enqueue("f", o().max_retries(-1)).await.unwrap_err()),
        "max_retries"
    );
    assert_eq!(
        option_of(
            c.enqueue("f", o().job_timeout(Duration::ZERO))
                .await
                .unwrap_err()
        ),
        "job_timeout_seconds"
    );
    assert_eq!(
        option_of(
            c.enqueue("f", o().result_ttl(Duration::from_micros(10)))
                .await
                .unwrap_err()
        ),
        "result_ttl_seconds"
    );
    assert_eq!(
        option_of(
            c.enqueue(
                "f",
                o().defer_by(Duration::from_secs(1))
                    .defer_until(SystemTime::now())
            )
            .await
            .unwrap_err()
        ),
        "defer_until"
    );
    assert_eq!(
        option_of(
            c.enqueue_with_unique_key("f", "", o(), None)
                .await
                .unwrap_err()
        ),
        "unique_key"
    );
    let rl = RateLimit {
        key: "k".into(),
        window: Duration::ZERO,
    };
    assert_eq!(
        option_of(c.enqueue_with_rate_limit("f", o(), rl).await.unwrap_err()),
        "rate_limit_seconds"
    );
    let d = |max_wait| Debounce {
        key: "k".into(),
        delay: Duration::from_secs(2),
        max_wait,
    };
    assert_eq!(
        option_of(
            c.enqueue_with_debounce("f", o().job_id("x"), d(None))
                .await
                .unwrap_err()
        ),
        "job_id"
    );
    assert_eq!(
        option_of(
            c.enqueue_with_debounce("f", o(), d(Some(Duration::from_secs(1))))
                .await
                .unwrap_err()
        ),
        "debounce_max_wait_seconds"
    );
    assert_eq!(redis.dbsize().await, 0);
}

#[tokio::test]
async fn enqueue_writes_the_record_and_rejects_duplicates() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let id = c
        .enqueue(
            "echo",
            EnqueueOptions::with_params(json!({"b": 1, "a": 2})).max_retries(5),
        )
        .await
        .unwrap();
    let store = c.store();
    let fields = store.job("default", &id).await.unwrap().unwrap();
    // Key order is kept, compact separators, as Python's json.dumps.
    assert_eq!(fields["params_json"], r#"{"b":1,"a":2}"#);
    assert_eq!(fields["max_retries"], "5");
    assert_eq!(store.queues().await.unwrap(), vec!["default".to_owned()]);
    let status = c.get_job_status(&id).await.unwrap().unwrap();
    assert_eq!(status.status, JobStatus::Pending);
    assert!(c.get_job_status("nope").await.unwrap().is_none());

    // An explicit id that exists in another queue is a duplicate too.
    c.enqueue("echo", EnqueueOptions::default().job_id("fixed"))
        .await
        .unwrap();
    let before = redis.dbsize().await;
    for queue in ["default", "other"] {
        match c
            .enqueue(
                "echo",
                EnqueueOptions::default().job_id("fixed").queue_name(queue),
            )
            .await
        {
            Err(Error::DuplicateJob {
                job_id,
                status,
                queue_name,
            }) => {
                assert_eq!(
                    (job_id.as_str(), status, queue_name.as_str()),
                    ("fixed", JobStatus::Pending, "default")
                );
            }
            other => panic!("expected DuplicateJob, got {other:?}"),
        }
    }
    assert_eq!(redis.dbsize().await, before);
}

#[tokio::test]
async fn unique_rate_limit_and_debounce_rules() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let o = EnqueueOptions::default;

    let first = c
        .enqueue_with_unique_key("f", "u", o(), None)
        .await
        .unwrap();
    let second = c
        .enqueue_with_unique_key("f", "u", o(), None)
        .await
        .unwrap();
    assert_eq!(first, second);
    let rec = c.get_job_status(&first).await.unwrap().unwrap();
    assert_eq!(rec.unique_key, "u");

    let rl = || RateLimit {
        key: "r".into(),
        window: Duration::from_secs(60),
    };
    let opened = c.enqueue_with_rate_limit("f", o(), rl()).await.unwrap();
    assert!(opened.is_some());
    assert_eq!(
        c.enqueue_with_rate_limit("f", o(), rl()).await.unwrap(),
        None
    );

    let d = || Debounce {
        key: "d".into(),
        delay: Duration::from_secs(60),
        max_wait: None,
    };
    let a = c
        .enqueue_with_debounce("f", o().params(json!({"n": 1})), d())
        .await
        .unwrap();
    let b = c
        .enqueue_with_debounce("f", o().params(json!({"n": 2})), d())
        .await
        .unwrap();
    assert_eq!(a, b);
    let fields = c.store().job("default", &a).await.unwrap().unwrap();
    assert_eq!(fields["params_json"], r#"{"n":2}"#);
    // unique job, rate-limited job, debounced job, their 3 rule keys, due, rrq:queues.
    assert_eq!(redis.dbsize().await, 8);
}

/// Waits until `channel` has a subscriber (condition wait with a deadline).
async fn subscribed(redis: &Redis, channel: &str) {
    let mut c = redis::Client::open(redis.dsn())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut c)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody subscribed to {channel}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_result_wakes_on_a_settle() {
    let redis = Redis::start().await;
    let c = std::sync::Arc::new(client(&redis).await);
    let id = c.enqueue("f", EnqueueOptions::default()).await.unwrap();
    let waiter = {
        let c = c.clone();
        let id = id.clone();
        tokio::spawn(async move { c.wait_for_result(&id, Some(WAIT)).await })
    };
    subscribed(&redis, &QueueKeys::new("default").done_channel(&id)).await;
    let store = c.store();
    let claim = store.claim("default", 1, "owner", 60_000).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    let settled = store
        .settle(&[Settle {
            queue: "default".into(),
            job_id: id.clone(),
            attempt: 1,
            owner: "owner".into(),
            action: SettleAction::Complete {
                result_json: r#"{"ok":true}"#.into(),
            },
            default_result_ttl_ms: 60_000,
            dlq_retention_ms: 60_000,
        }])
        .await
        .unwrap();
    assert!(settled[0].is_ok());
    let result = waiter.await.unwrap().unwrap();
    assert_eq!(result.status, JobStatus::Completed);
    assert_eq!(result.result, Some(json!({"ok": true})));

    // A job that stays pending times out; an unknown one is NotFound.
    let pending = c.enqueue("f", EnqueueOptions::default()).await.unwrap();
    assert!(matches!(
        c.wait_for_result(&pending, Some(Duration::from_millis(50)))
            .await,
        Err(Error::Timeout(_))
    ));
    assert!(matches!(
        c.wait_for_result("nope", None).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn cancel_a_pending_job() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let id = c.enqueue("f", EnqueueOptions::default()).await.unwrap();
    assert!(c.cancel(&id).await.unwrap());
    let done = c.wait_for_result(&id, Some(WAIT)).await.unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    assert_eq!(done.last_error, "cancelled on request");
    // Finished jobs stay as they are.
    assert!(!c.cancel(&id).await.unwrap());
    assert!(matches!(c.cancel("nope").await, Err(Error::NotFound(_))));
}
