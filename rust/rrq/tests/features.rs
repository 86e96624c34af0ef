//! End-to-end tests of cancellation, cron, health checks, the DLQ commands,
//! error history, OpenTelemetry spans and runner routing: a private
//! redis-server, the real `rrq` binary, and test runners on the generated
//! tonic client. Synchronisation is by events (ready line, stream messages,
//! done channel, collector requests), each with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use common::*;
use rrq_proto::v1::{
    CancelReason, Cancelled, Failure, FailureKind, Success, orchestrator_message, outcome,
};
use rrq_store::{CancelOutcome, JobStatus, Namespace, Settle, SettleAction, Store};

/// Runs `rrq <args>` against `dsn` and returns its output.
async fn rrq_cli(dsn: &str, args: &[&str]) -> Output {
    let (dsn, args): (String, Vec<String>) = (
        dsn.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rrq"))
            .args(&args)
            .env("RRQ_REDIS_DSN", dsn)
            .env_remove("RRQ_CONFIG")
            // No ./rrq.toml here: the defaults apply.
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn next_message(runner: &mut TestRunner) -> orchestrator_message::Kind {
    tokio::time::timeout(WAIT, runner.inbound.message())
        .await
        .expect("no message arrived")
        .unwrap()
        .expect("stream ended")
        .kind
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_job_means_it_never_runs() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["echo"]).await;

    let mut done = DoneWatch::new(&redis, "default", "c-wait").await;
    let mut req = job("default", "c-wait", "echo", 0);
    req.defer_ms = 3_600_000;
    store.enqueue(&req).await.unwrap();
    assert_eq!(
        store
            .cancel("default", "c-wait", "not needed", 60_000)
            .await
            .unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(done.wait().await, JobStatus::Cancelled as i32);
    assert_eq!(
        job_field(&store, "default", "c-wait", "last_error_type").await,
        "Cancelled"
    );
    // A second cancel reports the finished job; an unknown id is reported too.
    assert_eq!(
        store
            .cancel("default", "c-wait", "x", 60_000)
            .await
            .unwrap(),
        CancelOutcome::Finished(JobStatus::Cancelled as i32)
    );
    assert_eq!(
        store.cancel("default", "nope", "x", 60_000).await.unwrap(),
        CancelOutcome::NotFound
    );
    // The next job the runner receives is a later one: the cancelled one never ran.
    store
        .enqueue(&job("default", "after", "echo", 0))
        .await
        .unwrap();
    let exec = runner.next_execution().await;
    assert_eq!(exec.job_id, "after");
    assert_eq!(job_field(&store, "default", "c-wait", "attempt").await, ""); // 0: not stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_asks_the_runner() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["hang"]).await;

    let mut done = DoneWatch::new(&redis, "default", "c-run").await;
    store
        .enqueue(&job("default", "c-run", "hang", 3))
        .await
        .unwrap();
    let exec = runner.next_execution().await;
    assert_eq!(
        store
            .cancel("default", "c-run", "user asked", 60_000)
            .await
            .unwrap(),
        CancelOutcome::Requested
    );
    match next_message(&mut runner).await {
        orchestrator_message::Kind::Cancel(c) => {
            assert_eq!((c.job_id.as_str(), c.attempt), ("c-run", exec.attempt));
            assert_eq!(c.reason, CancelReason::Requested as i32);
        }
        other => panic!("expected cancel, got {other:?}"),
    }
    runner
        .send(
            "c-run",
            exec.attempt,
            outcome::Result::Cancelled(Cancelled {}),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Cancelled as i32);
    assert_eq!(
        job_field(&store, "default", "c-run", "last_error").await,
        "cancelled on request"
    );
    assert_eq!(
        job_field(&store, "default", "c-run", "last_error_type").await,
        "Cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_ignoring_a_cancel_is_cut_off_and_the_job_cancelled() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "cancel_grace_seconds = 0.2").await;
    let mut runner = TestRunner::connect(&orch.addr, &["hang"]).await;

    let mut done = DoneWatch::new(&redis, "default", "c-stuck").await;
    store
        .enqueue(&job("default", "c-stuck", "hang", 3))
        .await
        .unwrap();
    runner.next_execution().await;
    store
        .cancel("default", "c-stuck", "stop", 60_000)
        .await
        .unwrap();
    assert!(matches!(
        next_message(&mut runner).await,
        orchestrator_message::Kind::Cancel(_)
    ));
    // No answer: after the grace the job ends CANCELLED and the stream is aborted.
    assert_eq!(done.wait().await, JobStatus::Cancelled as i32);
    let end = tokio::time::timeout(WAIT, runner.inbound.message())
        .await
        .unwrap();
    assert!(matches!(end, Err(s) if s.code() == tonic::Code::Aborted));
}

async fn exists(store: &Store, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut store.connection())
        .await
        .unwrap()
        == 1
}

async fn redis_time(store: &Store) -> i64 {
    store.time_ms().await.unwrap()
}

async fn keys_matching(store: &Store, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut store.connection())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_makes_one_job_per_tick_with_two_orchestrators() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let config = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
                  [rrq.runners.python]\nmax_in_flight = 8\n\
                  [[rrq.cron_jobs]]\nname = \"tick\"\nfunction_name = \"beat\"\n\
                  schedule = \"*/1 * * * * *\"\nparams = { n = 1 }\n";
    let a = Orchestrator::start_config(&redis, config, &[], &[]).await;
    let _b = Orchestrator::start_config(&redis, config, &[], &[]).await;
    let mut runner = TestRunner::connect(&a.addr, &["beat"]).await;

    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    while seen.len() < 4 {
        let exec = runner.next_execution().await;
        let tick: i64 = exec
            .job_id
            .strip_prefix("cron:tick:")
            .expect("cron job id")
            .parse()
            .unwrap();
        assert_eq!(tick % 1000, 0, "ticks fall on whole seconds");
        assert_eq!(exec.params_json, r#"{"n":1}"#);
        assert_eq!(exec.attempt, 1, "{exec:?}");
        assert!(
            seen.insert(tick, exec.attempt).is_none(),
            "tick {tick} ran twice"
        );
        runner
            .send(
                &exec.job_id,
                exec.attempt,
                outcome::Result::Success(Success {
                    result_json: "null".into(),
                }),
            )
            .await;
    }
    let ticks: Vec<i64> = seen.keys().copied().collect();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "no tick missed: {ticks:?}");
    }
    let k = Namespace::default().queue("default");
    for (i, &t) in ticks.iter().enumerate() {
        let id = format!("cron:tick:{t}");
        let run_at = job_run_at_ms(&store, "default", &id).await;
        if i == 0 {
            // Possibly the start-up catch-up of a tick already past: due now.
            assert!(run_at >= t, "tick {t} due at {run_at}");
        } else {
            // Enqueued ahead of its tick, due exactly at it.
            assert_eq!(run_at, t);
        }
        let started: i64 = job_field(&store, "default", &id, "started_at_ms")
            .await
            .parse()
            .unwrap();
        assert!(started >= t, "tick {t} started early at {started}");
        let holder: Option<String> = redis::cmd("GET")
            .arg(k.unique(&id))
            .query_async(&mut store.connection())
            .await
            .unwrap();
        assert_eq!(holder.as_deref(), Some(id.as_str()));
    }
    // Exactly one job per tick between the first and the last seen, counted
    // by their deterministic ids.
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    let ids: BTreeSet<i64> = keys_matching(&store, "rrq:{default}:job:cron:tick:*")
        .await
        .into_iter()
        .filter_map(|key| key.rsplit(':').next().and_then(|t| t.parse().ok()))
        .filter(|t| (first..=last).contains(t))
        .collect();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ticks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_catches_up_only_the_latest_tick_within_the_grace() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let config = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ncron_misfire_grace_seconds = 7200\n\
                  [rrq.runners.python]\n\
                  [[rrq.cron_jobs]]\nname = \"hourly\"\nfunction_name = \"h\"\nschedule = \"0 0 * * * *\"\n\
                  [[rrq.cron_jobs]]\nname = \"yearly\"\nfunction_name = \"y\"\nschedule = \"0 0 0 1 1 *\"\n";
    let before = redis_time(&store).await;
    let _orch = Orchestrator::start_config(&redis, config, &[], &[]).await;
    let after = redis_time(&store).await;
    let hour = 3_600_000;
    let (h1, h2) = (before - before % hour, after - after % hour);
    if h1 == h2 {
        let k = Namespace::default().queue("default");
        // The most recent tick (< 1 h old, within the 2 h grace) is enqueued
        // before the ready line (due at once, its tick being past)...
        let id = format!("cron:hourly:{h1}");
        assert!(exists(&store, &k.job(&id)).await, "{id} was not enqueued");
        let run_at = job_run_at_ms(&store, "default", &id).await;
        assert!((h1..=after).contains(&run_at), "{run_at}");
        // ...the one before it is skipped, although it is within the grace too.
        assert!(!exists(&store, &k.job(&format!("cron:hourly:{}", h1 - hour))).await);
    }
    // The yearly tick is months old: older than the grace, skipped.
    assert!(
        keys_matching(&store, "rrq:{default}:job:cron:yearly:*")
            .await
            .is_empty()
    );
}

/// Runs `rrq check --json` until `done(exit code, json)` holds, again after
/// every heartbeat write (seen through keyspace notifications of
/// `rrq:orchestrators`).
async fn check_until(
    redis: &Redis,
    done: impl Fn(i32, &serde_json::Value) -> bool,
) -> (i32, serde_json::Value) {
    use futures::StreamExt as _;
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kz")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut pubsub = redis.client().get_async_pubsub().await.unwrap();
    pubsub
        .subscribe("__keyspace@0__:rrq:orchestrators")
        .await
        .unwrap();
    let mut writes = pubsub.into_on_message();
    let dsn = redis.dsn();
    loop {
        let out = rrq_cli(&dsn, &["check", "--json"]).await;
        let code = out.status.code().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if done(code, &json) {
            return (code, json);
        }
        tokio::time::timeout(WAIT, writes.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "rrq check never got there: {code} {json} {}",
                    text(&out.stderr)
                )
            })
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_live_serving_orchestrators() {
    let redis = Redis::start().await;
    let dsn = redis.dsn();

    // Nobody is running.
    let out = rrq_cli(&dsn, &["check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no orchestrator is alive"));

    // Running, but no runner connected: alive, not serving.
    let orch = Orchestrator::start(&redis, "").await;
    let (code, json) = check_until(&redis, |_, j| j["alive"] == 1).await;
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["serving"], 0);

    // A runner connects: serving.
    let _runner = TestRunner::connect(&orch.addr, &["echo"]).await;
    let (code, json) = check_until(&redis, |c, _| c == 0).await;
    let me = &json["orchestrators"][0];
    assert_eq!(me["serving"], true, "{json}");
    assert_eq!(me["runners"]["python"]["sessions"], 1);
    assert_eq!(me["runners"]["python"]["free_slots"], 4);
    assert!(me["queues"].as_array().unwrap().contains(&"default".into()));
    assert_eq!(code, 0);
    let out = rrq_cli(&dsn, &["check"]).await;
    let line = text(&out.stdout);
    assert!(
        line.contains("serving=yes") && line.contains("python(sessions=1"),
        "{line}"
    );

    // Redis unreachable: 3. Configuration error: 2.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let out = rrq_cli(&dead, &["check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach Redis"));
    let out = rrq_cli(&dsn, &["check", "--config", "/nonexistent/rrq.toml"]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// Dead-letters job `id` of `queue` through the real scripts.
async fn dead_letter(store: &Store, queue: &str, id: &str, message: &str) {
    store.enqueue(&job(queue, id, "work", 0)).await.unwrap();
    let claim = store.claim(queue, 1, "tester", 30_000).await.unwrap();
    assert_eq!(claim.jobs.len(), 1);
    let r = store
        .settle(&[Settle {
            queue: queue.into(),
            job_id: id.into(),
            attempt: 1,
            owner: "tester".into(),
            action: SettleAction::Fail {
                message: message.into(),
                error_type: "ValueError".into(),
                traceback: format!("Traceback (most recent call last):\n  {id}\nValueError"),
            },
            default_result_ttl_ms: 60_000,
            dlq_retention_ms: 600_000,
        }])
        .await
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap().status, JobStatus::Failed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_commands_list_inspect_requeue_and_purge() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let dsn = redis.dsn();
    dead_letter(&store, "qa", "d-1", "boom 1\nsecond line").await;
    dead_letter(&store, "qa", "d-2", "boom 2").await;
    dead_letter(&store, "qb", "d-3", "boom 3").await;

    let out = rrq_cli(&dsn, &["dlq", "list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-1", "d-2", "d-3"]);
    assert_eq!(list[0]["queue"], "qa");
    assert_eq!(list[0]["function_name"], "work");
    assert_eq!(list[0]["attempts"], 1);
    assert_eq!(list[0]["last_error_type"], "ValueError");

    let out = rrq_cli(&dsn, &["dlq", "list", "--queue", "qb"]).await;
    let t = text(&out.stdout);
    assert!(t.contains("d-3") && !t.contains("d-1"), "{t}");
    assert!(t.contains("ValueError: boom 3"), "{t}");
    let out = rrq_cli(&dsn, &["dlq", "list", "--limit", "1"]).await;
    let t = text(&out.stdout);
    assert_eq!(t.lines().count(), 1, "{t}");
    assert!(
        t.contains("ValueError: boom 1") && !t.contains("second line"),
        "{t}"
    );

    let out = rrq_cli(&dsn, &["dlq", "inspect", "d-1", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["params_json"]["x"], 1);
    assert_eq!(rec["status_name"], "FAILED");
    assert_eq!(rec["errors_json"][0]["message"], "boom 1\nsecond line");
    assert!(
        rec["errors_json"][0]["traceback"]
            .as_str()
            .unwrap()
            .starts_with("Traceback")
    );
    let out = rrq_cli(&dsn, &["dlq", "inspect", "d-1"]).await;
    let t = text(&out.stdout);
    assert!(t.contains("errors (1):") && t.contains("Traceback"), "{t}");
    let out = rrq_cli(&dsn, &["dlq", "inspect", "ghost"]).await;
    assert_eq!(out.status.code(), Some(1));

    // Usage error without ids or --all.
    let out = rrq_cli(&dsn, &["dlq", "requeue"]).await;
    assert_eq!(out.status.code(), Some(2));

    let out = rrq_cli(&dsn, &["dlq", "requeue", "d-2"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("requeued 1 job(s)"));
    assert_eq!(
        job_field(&store, "qa", "d-2", "status").await,
        (JobStatus::Pending as i32).to_string()
    );
    assert_eq!(job_field(&store, "qa", "d-2", "attempt").await, ""); // 0: not stored

    let out = rrq_cli(&dsn, &["dlq", "purge", "--queue", "qb", "--all"]).await;
    assert!(
        text(&out.stdout).contains("deleted 1 job(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(store.job("qb", "d-3").await.unwrap().is_none());

    let out = rrq_cli(&dsn, &["dlq", "requeue", "--all"]).await;
    assert!(text(&out.stdout).contains("requeued 1 job(s)"));
    let out = rrq_cli(&dsn, &["dlq", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_keep_their_history_and_tracebacks() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Orchestrator::start(&redis, "").await;
    let mut runner = TestRunner::connect(&orch.addr, &["flaky"]).await;
    let mut done = DoneWatch::new(&redis, "default", "h-1").await;
    store
        .enqueue(&job("default", "h-1", "flaky", 3))
        .await
        .unwrap();
    for n in 1..=2 {
        let exec = runner.next_execution().await;
        assert_eq!(exec.attempt, n);
        runner
            .send(
                "h-1",
                n,
                outcome::Result::Failure(Failure {
                    kind: FailureKind::HandlerError as i32,
                    error_type: "KeyError".into(),
                    message: format!("boom {n}"),
                    traceback: format!("Traceback {n}\n  line\nKeyError"),
                }),
            )
            .await;
    }
    let exec = runner.next_execution().await;
    assert_eq!(exec.attempt, 3);
    runner
        .send(
            "h-1",
            3,
            outcome::Result::Success(Success {
                result_json: "1".into(),
            }),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    assert_eq!(
        job_field(&store, "default", "h-1", "last_error").await,
        "boom 2"
    );
    let history: serde_json::Value =
        serde_json::from_str(&job_field(&store, "default", "h-1", "errors_json").await).unwrap();
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{history}");
    for (i, e) in entries.iter().enumerate() {
        let n = i + 1;
        assert_eq!(e["attempt"], n);
        assert_eq!(e["error_type"], "KeyError");
        assert_eq!(e["message"], format!("boom {n}"));
        assert_eq!(e["traceback"], format!("Traceback {n}\n  line\nKeyError"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_runner_prefixes_pick_the_runner() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let config = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
                  [rrq.runner_routes]\nfast = \"ts\"\n\
                  [rrq.runners.python]\nmax_in_flight = 4\n[rrq.runners.ts]\nmax_in_flight = 4\n";
    let orch = Orchestrator::start_config(&redis, config, &[], &[]).await;
    let mut py = TestRunner::connect_as(&orch.addrs["python"], "python", &["echo"]).await;
    let mut ts = TestRunner::connect_as(&orch.addrs["ts"], "ts", &["echo"]).await;

    let cases = [
        ("default", "r-1", "echo", "python"),
        ("fast", "r-2", "echo", "ts"),
        ("fast", "r-3", "python#echo", "python"),
        ("default", "r-4", "ts#echo", "ts"),
    ];
    for (queue, id, function, expected) in cases {
        let mut done = DoneWatch::new(&redis, queue, id).await;
        store.enqueue(&job(queue, id, function, 0)).await.unwrap();
        let runner = if expected == "python" {
            &mut py
        } else {
            &mut ts
        };
        let exec = runner.next_execution().await;
        assert_eq!(
            exec.job_id, id,
            "{function} in {queue} should run on {expected}"
        );
        assert_eq!(exec.function_name, "echo");
        runner
            .send(
                id,
                exec.attempt,
                outcome::Result::Success(Success {
                    result_json: format!("\"{expected}\""),
                }),
            )
            .await;
        assert_eq!(done.wait().await, JobStatus::Completed as i32);
        assert_eq!(
            job_field(&store, queue, id, "result_json").await,
            format!("\"{expected}\"")
        );
    }
}

mod otel {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;
    use tokio::sync::mpsc;

    struct Collector(mpsc::UnboundedSender<Span>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            for rs in request.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        let _ = self.0.send(span);
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn attr(span: &Span, key: &str) -> String {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_are_traced_in_the_producers_trace() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut spans) = mpsc::unbounded_channel();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        let redis = Redis::start().await;
        let store = redis.store().await;
        let endpoint = format!("http://127.0.0.1:{port}");
        let config = "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\n[rrq.runners.python]\n";
        let orch = Orchestrator::start_config(
            &redis,
            config,
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ],
        )
        .await;
        let mut runner = TestRunner::connect(&orch.addr, &["fail"]).await;

        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent_id = "00f067aa0ba902b7";
        let mut req = job("default", "o-1", "fail", 0);
        req.trace_parent = format!("00-{trace_id}-{parent_id}-01");
        let mut done = DoneWatch::new(&redis, "default", "o-1").await;
        store.enqueue(&req).await.unwrap();
        let exec = runner.next_execution().await;
        // The runner's parent is the process span: same trace, new span id.
        let parts: Vec<&str> = exec.trace_parent.split('-').collect();
        assert_eq!(parts.len(), 4, "{}", exec.trace_parent);
        assert_eq!(parts[1], trace_id);
        assert_ne!(parts[2], parent_id);
        let process_id = parts[2].to_owned();
        runner
            .send(
                "o-1",
                exec.attempt,
                outcome::Result::Failure(Failure {
                    kind: FailureKind::Fatal as i32,
                    error_type: "BadThing".into(),
                    message: "no".into(),
                    traceback: String::new(),
                }),
            )
            .await;
        assert_eq!(done.wait().await, JobStatus::Failed as i32);

        let mut got: BTreeMap<String, Span> = BTreeMap::new();
        while got.len() < 3 {
            let span = tokio::time::timeout(WAIT, spans.recv())
                .await
                .expect("the collector did not receive the spans")
                .unwrap();
            got.insert(span.name.clone(), span);
        }
        for (name, op, kind) in [
            ("wait default", "receive", 1),
            ("dispatch default", "receive", 1),
            ("process default", "process", 5),
        ] {
            let s = got
                .get(name)
                .unwrap_or_else(|| panic!("no {name} span in {got:?}"));
            assert_eq!(hex(&s.trace_id), trace_id, "{name}");
            assert_eq!(hex(&s.parent_span_id), parent_id, "{name}");
            assert_eq!(s.kind, kind, "{name}");
            assert_eq!(attr(s, "messaging.system"), "rrq");
            assert_eq!(attr(s, "messaging.operation.type"), op);
            assert_eq!(attr(s, "messaging.destination.name"), "default");
            assert_eq!(attr(s, "messaging.message.id"), "o-1");
            assert_eq!(attr(s, "rrq.job.attempt"), "1");
            assert_eq!(attr(s, "rrq.job.function"), "fail");
            assert_eq!(attr(s, "rrq.runner.name"), "python");
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano, "{name}");
        }
        let process = &got["process default"];
        assert_eq!(hex(&process.span_id), process_id);
        assert_eq!(attr(process, "error.type"), "BadThing");
        assert_eq!(process.status.as_ref().unwrap().code, 2);
        let wait = &got["wait default"];
        let dispatch = &got["dispatch default"];
        assert!(wait.end_time_unix_nano <= dispatch.start_time_unix_nano + 1_000_000);
        assert!(dispatch.end_time_unix_nano <= process.start_time_unix_nano + 1_000_000);
    }
}
