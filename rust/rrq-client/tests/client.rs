//! The producer client against a private redis-server: validation writes
//! nothing, the enqueue rules, enqueue_many, waiting, cancelling. Waits are on events
//! (pub/sub, a subscriber count) with deadlines; no sleeps as synchronisation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rrq_store::limits::{MAX_DURATION_MS, MAX_RETRIES};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use rrq_client::{
    Client, ClientConfig, Debounce, ENQUEUE_MANY_CHUNK, EnqueueOptions, Error, JobStatus, RateLimit,
};
use rrq_store::{EnqueueRequest, EnqueueRule, Enqueued, Namespace, Settle, SettleAction};
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

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.0
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Every record of `ids` in `queue`, in one round trip.
    async fn jobs(&self, queue: &str, ids: &[String]) -> Vec<BTreeMap<String, String>> {
        let keys = Namespace::default().queue(queue);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(keys.job(id));
        }
        pipe.query_async(&mut self.conn().await).await.unwrap()
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

/// A chosen id raced into two queues by two producers makes one job: the
/// id registry is checked and written in the same script as the job.
#[tokio::test]
async fn one_id_raced_into_two_queues_makes_one_job() {
    let redis = Redis::start().await;
    let (a, b) = (client(&redis).await, client(&redis).await);
    for n in 0..30 {
        let id = format!("race-{n}");
        let (ra, rb) = tokio::join!(
            a.enqueue("f", EnqueueOptions::default().job_id(&id).queue_name("qa")),
            b.enqueue("f", EnqueueOptions::default().job_id(&id).queue_name("qb")),
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(_), Err(e)) => ("qa", e),
            (Err(e), Ok(_)) => ("qb", e),
            other => panic!("expected one winner, got {other:?}"),
        };
        match loser {
            Error::DuplicateJob { queue_name, .. } => assert_eq!(queue_name, winner),
            other => panic!("expected DuplicateJob, got {other:?}"),
        }
    }
}

/// Every number has a range (rust/rrq-store/limits.toml), checked before
/// the first write: a huge value is a typed error, not a record nobody can
/// read back or a half-written job.
#[tokio::test]
async fn out_of_range_numbers_write_nothing() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let o = EnqueueOptions::default;
    let huge = Duration::from_secs(u64::MAX / 2);
    let over = Duration::from_millis(MAX_DURATION_MS as u64 + 1);
    let cases: Vec<(&str, EnqueueOptions)> = vec![
        ("max_retries", o().max_retries(i64::MAX)),
        ("max_retries", o().max_retries(MAX_RETRIES + 1)),
        ("job_timeout_seconds", o().job_timeout(huge)),
        (
            "result_ttl_seconds",
            o().result_ttl(Duration::from_secs(100_000_000_000_000)),
        ),
        ("defer_by_seconds", o().defer_by(over)),
        (
            "defer_until",
            o().defer_until(SystemTime::now() + Duration::from_secs(20 * 365 * 86_400)),
        ),
    ];
    for (option, opts) in cases {
        assert_eq!(option_of(c.enqueue("f", opts).await.unwrap_err()), option);
    }
    assert_eq!(
        option_of(
            c.enqueue_with_unique_key("f", "k", o(), Some(huge))
                .await
                .unwrap_err()
        ),
        "unique_ttl_seconds"
    );
    let rl = RateLimit {
        key: "k".into(),
        window: over,
    };
    assert_eq!(
        option_of(c.enqueue_with_rate_limit("f", o(), rl).await.unwrap_err()),
        "rate_limit_seconds"
    );
    let d = Debounce {
        key: "k".into(),
        delay: Duration::from_secs(1),
        max_wait: Some(huge),
    };
    assert_eq!(
        option_of(c.enqueue_with_debounce("f", o(), d).await.unwrap_err()),
        "debounce_max_wait_seconds"
    );
    assert_eq!(redis.dbsize().await, 0);
    // The largest values are accepted, and the record reads back.
    let id = c
        .enqueue(
            "f",
            o().max_retries(MAX_RETRIES)
                .job_timeout(Duration::from_millis(MAX_DURATION_MS as u64))
                .result_ttl(Duration::from_millis(MAX_DURATION_MS as u64)),
        )
        .await
        .unwrap();
    assert!(c.get_job_status(&id).await.unwrap().is_some());
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

/// A record without what differs from job to job: its params and its times.
fn shape(mut fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
    for name in ["params_json", "enqueued_at_ms", "run_at_ms"] {
        fields.remove(name);
    }
    fields
}

#[tokio::test]
async fn enqueue_many_writes_records_like_enqueue_in_chunks() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let count = 2 * ENQUEUE_MANY_CHUNK + 200; // three chunks, the last one partial
    let params: Vec<_> = (0..count).map(|i| json!({"n": i})).collect();
    let options = || {
        EnqueueOptions::default()
            .queue_name("bulk")
            .max_retries(1)
            .job_timeout(Duration::from_secs(30))
            .result_ttl(Duration::from_secs(90))
            .defer_by(Duration::from_secs(60))
            .trace_context(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "k=v",
            )
    };

    let ids = c.enqueue_many("work", &params, options()).await.unwrap();

    assert_eq!(ids.len(), count);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), count);
    assert!(ids.iter().all(|id| id.len() == 26)); // ULIDs
    // Every job, the due set and rrq:queues.
    assert_eq!(redis.dbsize().await, i64::try_from(count).unwrap() + 2);
    assert_eq!(c.store().queues().await.unwrap(), vec!["bulk".to_owned()]);

    let single = c.enqueue("work", options()).await.unwrap();
    let single = c.store().job("bulk", &single).await.unwrap().unwrap();
    let records = redis.jobs("bulk", &ids).await;
    for (i, record) in records.into_iter().enumerate() {
        // Ids come back in params order.
        assert_eq!(record["params_json"], format!(r#"{{"n":{i}}}"#));
        let deferred = |r: &BTreeMap<String, String>| {
            r["run_at_ms"].parse::<i64>().unwrap() - r["enqueued_at_ms"].parse::<i64>().unwrap()
        };
        assert_eq!(deferred(&record), deferred(&single));
        assert_eq!(shape(record), shape(single.clone()), "job {i}");
    }
    let last = c.get_job_status(&ids[count - 1]).await.unwrap().unwrap();
    assert_eq!(last.status, JobStatus::Pending);
}

#[tokio::test]
async fn enqueue_many_validates_everything_before_writing() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    let o = EnqueueOptions::default;
    // Something to leave unchanged; this also registers the queue.
    c.enqueue_many("f", &[json!({}), json!(null)], o())
        .await
        .unwrap();
    let before = redis.dbsize().await;

    let with_bad_entry = |bad| {
        let mut list: Vec<_> = (0..2 * ENQUEUE_MANY_CHUNK)
            .map(|i| json!({"n": i}))
            .collect();
        list[ENQUEUE_MANY_CHUNK + 1] = bad; // in the second chunk: the first is good
        list
    };
    // The error names the entry by its index in params_list.
    let named = format!("params_list[{}]: params ", ENQUEUE_MANY_CHUNK + 1);
    assert!(matches!(
        c.enqueue_many("f", &with_bad_entry(json!([1])), o()).await,
        Err(Error::InvalidParams(m)) if m.starts_with(&named)
    ));
    assert!(matches!(
        c.enqueue_many("f", &with_bad_entry(json!("text")), o())
            .await,
        Err(Error::InvalidParams(m)) if m.starts_with(&named)
    ));
    assert!(matches!(
        c.enqueue_many("f", &with_bad_entry(json!({"x": "y".repeat(200)})), o())
            .await,
        Err(Error::PayloadTooLarge(m)) if m.starts_with(&named)
    ));
    assert!(matches!(
        c.enqueue_many("f", &[json!([1]), json!({})], o()).await,
        Err(Error::InvalidParams(m)) if m.starts_with("params_list[0]: params ")
    ));
    assert_eq!(redis.dbsize().await, before);

    let one = [json!({"ok": 1})];
    let many = |options| c.enqueue_many("f", &one, options);
    assert_eq!(
        option_of(many(o().params(json!({}))).await.unwrap_err()),
        "params"
    );
    assert_eq!(
        option_of(many(o().job_id("fixed")).await.unwrap_err()),
        "job_id"
    );
    assert_eq!(
        option_of(many(o().max_retries(-1)).await.unwrap_err()),
        "max_retries"
    );
    assert_eq!(
        option_of(many(o().queue_name("a{b}")).await.unwrap_err()),
        "queue_name"
    );
    assert_eq!(
        option_of(c.enqueue_many("", &[json!({})], o()).await.unwrap_err()),
        "function_name"
    );
    // An empty list still has its options checked.
    assert!(c.enqueue_many("f", &[], o()).await.unwrap().is_empty());
    assert_eq!(
        option_of(
            c.enqueue_many("f", &[], o().max_retries(-1))
                .await
                .unwrap_err()
        ),
        "max_retries"
    );
    assert_eq!(
        option_of(c.enqueue_many("f", &[], o().job_id("x")).await.unwrap_err()),
        "job_id"
    );
    assert_eq!(redis.dbsize().await, before);
}

#[tokio::test]
async fn enqueue_many_reloads_a_flushed_script() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    c.enqueue_many("f", &[json!({})], EnqueueOptions::default())
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    // Two chunks, so both calls in flight meet NOSCRIPT.
    let params = vec![json!({}); ENQUEUE_MANY_CHUNK + 1];
    let ids = c
        .enqueue_many("f", &params, EnqueueOptions::default())
        .await
        .unwrap();
    assert_eq!(ids.len(), params.len());
    let due: usize = redis::cmd("ZCARD")
        .arg(Namespace::default().queue("default").due())
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    assert_eq!(due, params.len() + 1);
}

#[tokio::test]
async fn store_enqueue_many_reports_existing_ids_and_refuses_rules() {
    let redis = Redis::start().await;
    let c = client(&redis).await;
    c.enqueue("f", EnqueueOptions::default().job_id("taken"))
        .await
        .unwrap();
    let first = EnqueueRequest {
        id: "a".into(),
        function_name: "f".into(),
        queue: "default".into(),
        params_json: "{}".into(),
        max_params_bytes: 100,
        ..EnqueueRequest::default()
    };
    let more = [
        ("taken".to_owned(), r#"{"new":1}"#.to_owned()),
        ("b".to_owned(), "{}".to_owned()),
    ];
    let replies = c.store().enqueue_many(&first, &more, false).await.unwrap();
    let Enqueued::Created { run_at_ms, .. } = replies[0] else {
        panic!("expected Created, got {replies:?}");
    };
    assert_eq!(
        replies[1..],
        [
            Enqueued::Exists {
                id: "taken".into(),
                status: rrq_store::JobStatus::Pending as i32,
            },
            Enqueued::Created {
                id: "b".into(),
                run_at_ms,
            },
        ]
    );
    let taken = c.store().job("default", "taken").await.unwrap().unwrap();
    assert_eq!(taken["params_json"], "{}"); // the existing job is left as it was

    // A lone job answers in the same shape.
    let again = c.store().enqueue_many(&first, &[], false).await.unwrap();
    assert_eq!(
        again,
        [Enqueued::Exists {
            id: "a".into(),
            status: rrq_store::JobStatus::Pending as i32,
        }]
    );

    let before = redis.dbsize().await;
    let ruled = EnqueueRequest {
        id: "c".into(),
        rule: Some(EnqueueRule::Unique {
            key: "u".into(),
            ttl_ms: 1000,
        }),
        ..first
    };
    assert!(matches!(
        c.store().enqueue_many(&ruled, &[], false).await,
        Err(rrq_store::Error::InvalidArgument(_))
    ));
    assert_eq!(redis.dbsize().await, before);
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
    subscribed(
        &redis,
        &Namespace::default().queue("default").done_channel(&id),
    )
    .await;
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
