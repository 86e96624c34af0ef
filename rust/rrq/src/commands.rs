//! The operator commands: `rrq check` and `rrq dlq ...`.
//!
//! Exit statuses: 0 success; 1 the check failed (or a job was not found);
//! 2 configuration or usage error; 3 Redis unreachable.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use rrq_store::{DlqEntry, Store};
use serde_json::{Value, json};

use crate::cli::{CheckArgs, ConfigArg, DlqCommand, DlqInspectArgs, DlqListArgs, DlqTargetArgs};
use crate::health;
use crate::logging::escape;

/// Jobs handled per script call by `--all`.
const BATCH: usize = 100;

/// Exit status of a failed command, with its message.
#[derive(Debug)]
struct Failure(u8, String);

impl Failure {
    /// The reader of our stdout went away (`rrq dlq list | head`): not an
    /// error of the command, so it ends quietly with status 0.
    fn closed_pipe() -> Self {
        Failure(0, String::new())
    }
}

fn redis_failure(dsn: &str, e: impl std::fmt::Display) -> Failure {
    Failure(
        3,
        format!("cannot reach Redis at {}: {e}", rrq_store::redact_dsn(dsn)),
    )
}

/// Writes one line to stdout. `println!` panics when the pipe is closed;
/// this reports it as [`Failure::closed_pipe`] so the command stops quietly.
fn emit(line: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::closed_pipe()),
        Err(e) => Err(Failure(1, format!("cannot write to stdout: {e}"))),
    }
}

/// `println!` through [`emit`], with terminal controls escaped (job fields
/// come from producers and handlers); only inside functions returning
/// `Result<_, Failure>`. JSON output goes to [`emit`] as is: serde_json
/// already escapes control characters.
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(&crate::logging::escape_keep_newlines(&format!($($arg)*)))?
    };
}

/// Runs a command future on a small runtime and maps its result to an exit code.
fn run_command<F>(config: &ConfigArg, body: impl FnOnce(Store, String) -> F) -> ExitCode
where
    F: Future<Output = Result<u8, Failure>>,
{
    let cfg = match config.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("rrq: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rrq: {e}");
            return ExitCode::from(1);
        }
    };
    let dsn = cfg.redis_dsn.clone();
    let prefix = cfg.key_prefix.clone();
    let result = runtime.block_on(async move {
        let store = connect(&dsn, &prefix).await?;
        body(store, dsn).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, message)) => {
            if !message.is_empty() {
                eprintln!("rrq: {message}");
            }
            ExitCode::from(code)
        }
    }
}

async fn connect(dsn: &str, prefix: &str) -> Result<Store, Failure> {
    let client = rrq_store::open_client(dsn).map_err(|e| Failure(2, format!("redis_dsn: {e}")))?;
    let ns = rrq_store::Namespace::of_client(prefix, &client)
        .map_err(|e| Failure(2, format!("key_prefix: {e}")))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| redis_failure(dsn, e))?;
    let manager = redis::aio::ConnectionManager::new_with_config(
        client,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1),
    )
    .await
    .map_err(|e| redis_failure(dsn, e))?;
    drop(conn);
    Ok(Store::new(manager, ns))
}

/// Redis failures in the middle of a command: unreachable (3) when it is a
/// connection problem, else a plain failure (1).
fn store_failure(dsn: &str, e: rrq_store::Error) -> Failure {
    if e.is_retryable() {
        redis_failure(dsn, e)
    } else {
        Failure(1, e.to_string())
    }
}

fn redis_error(dsn: &str, e: redis::RedisError) -> Failure {
    store_failure(dsn, rrq_store::Error::Redis(e))
}

/// `rrq check`.
pub fn check(args: &CheckArgs) -> ExitCode {
    let json = args.json;
    run_command(&args.config, |store, dsn| async move {
        let instances = health::live_instances(&store)
            .await
            .map_err(|e| redis_error(&dsn, e))?;
        let (code, reason) = health::verdict(&instances);
        if json {
            let out = json!({
                "ok": code == 0,
                "reason": reason,
                "alive": instances.len(),
                "serving": instances.iter().filter(|i| i.serving).count(),
                "orchestrators": instances,
            });
            emit(&serde_json::to_string_pretty(&out).unwrap_or_default())?;
        } else {
            for i in &instances {
                outln!("{}", health::describe(i));
            }
        }
        if let Some(reason) = reason {
            eprintln!("rrq check: {reason}");
        }
        Ok(code)
    })
}

/// `rrq dlq ...`.
pub fn dlq(command: &DlqCommand) -> ExitCode {
    match command {
        DlqCommand::List(a) => run_command(&a.config, |s, dsn| list(s, dsn, a)),
        DlqCommand::Inspect(a) => run_command(&a.config, |s, dsn| inspect(s, dsn, a)),
        DlqCommand::Requeue(a) => run_command(&a.config, |s, dsn| requeue(s, dsn, a)),
        DlqCommand::Purge(a) => run_command(&a.config, |s, dsn| purge(s, dsn, a)),
    }
}

/// The queues a command acts on: `given`, each of which must be a known
/// queue (a member of the queues set), or every known queue. A typo in
/// `--queue` is an error rather than "deleted 0".
async fn queues_of(store: &Store, dsn: &str, given: &[String]) -> Result<Vec<String>, Failure> {
    let mut known = store.queues().await.map_err(|e| store_failure(dsn, e))?;
    known.sort();
    if given.is_empty() {
        return Ok(known);
    }
    check_known(given, &known)?;
    Ok(given.to_vec())
}

/// Fails with status 1 naming the first of `given` not in `known`.
fn check_known(given: &[String], known: &[String]) -> Result<(), Failure> {
    match given.iter().find(|q| !known.contains(q)) {
        None => Ok(()),
        Some(q) => Err(Failure(
            1,
            format!(
                "queue {q:?} does not exist (known queues: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        )),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn entry_json(e: &DlqEntry) -> Value {
    let f = |k: &str| e.fields.get(k).cloned().unwrap_or_default();
    json!({
        "id": e.id,
        "queue": e.queue,
        "function_name": f("function_name"),
        "attempts": f("attempt").parse::<i64>().unwrap_or(0),
        "failed_at_ms": e.failed_at_ms,
        "failed_at": format_ms(e.failed_at_ms),
        "last_error_type": f("last_error_type"),
        "last_error": f("last_error"),
    })
}

async fn list(store: Store, dsn: String, a: &DlqListArgs) -> Result<u8, Failure> {
    let mut entries = Vec::new();
    for q in queues_of(&store, &dsn, &a.queues).await? {
        entries.extend(
            store
                .dlq_list(&q, a.limit)
                .await
                .map_err(|e| store_failure(&dsn, e))?,
        );
    }
    entries.sort_by(|x, y| (x.failed_at_ms, &x.id).cmp(&(y.failed_at_ms, &y.id)));
    entries.truncate(a.limit);
    if a.json {
        let out: Vec<Value> = entries.iter().map(entry_json).collect();
        emit(&serde_json::to_string_pretty(&out).unwrap_or_default())?;
    } else if entries.is_empty() {
        outln!("no dead-lettered jobs");
    } else {
        for e in &entries {
            // One line per job: a field's own newline is escaped too.
            let f = |k: &str| escape(e.fields.get(k).map(String::as_str).unwrap_or(""));
            outln!(
                "{}  queue={}  function={}  attempts={}  failed_at={}  {}: {}",
                escape(&e.id),
                escape(&e.queue),
                f("function_name"),
                f("attempt").parse::<i64>().unwrap_or(0),
                format_ms(e.failed_at_ms),
                f("last_error_type"),
                escape(first_line(
                    e.fields.get("last_error").map(String::as_str).unwrap_or("")
                ))
            );
        }
    }
    Ok(0)
}

/// Fields holding JSON text, shown decoded.
const JSON_FIELDS: [&str; 3] = ["params_json", "result_json", "errors_json"];

/// The status name of a `JobStatus` number (`COMPLETED`, ...).
fn status_name(n: &str) -> String {
    n.parse::<i32>()
        .ok()
        .and_then(|n| rrq_store::JobStatus::try_from(n).ok())
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_owned())
        .unwrap_or_else(|| n.to_owned())
}

fn record_json(fields: &BTreeMap<String, String>, queue: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in fields {
        let value = if JSON_FIELDS.contains(&k.as_str()) {
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()))
        } else if let Ok(n) = v.parse::<i64>() {
            json!(n)
        } else {
            Value::String(v.clone())
        };
        out.insert(k.clone(), value);
    }
    out.entry("queue_name").or_insert_with(|| json!(queue));
    if let Some(s) = fields.get("status") {
        out.insert("status_name".into(), json!(status_name(s)));
    }
    Value::Object(out)
}

async fn inspect(store: Store, dsn: String, a: &DlqInspectArgs) -> Result<u8, Failure> {
    let Some(queue) = store
        .find_job_queue(&a.job_id)
        .await
        .map_err(|e| store_failure(&dsn, e))?
    else {
        return Err(Failure(1, format!("no job {:?} in any queue", a.job_id)));
    };
    let Some(fields) = store
        .job(&queue, &a.job_id)
        .await
        .map_err(|e| store_failure(&dsn, e))?
    else {
        return Err(Failure(1, format!("no job {:?} in any queue", a.job_id)));
    };
    let record = record_json(&fields, &queue);
    if a.json {
        emit(&serde_json::to_string_pretty(&record).unwrap_or_default())?;
        return Ok(0);
    }
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    outln!("job {} (queue {queue})", a.job_id);
    for (k, v) in &fields {
        if JSON_FIELDS.contains(&k.as_str()) || k == "last_error" {
            continue;
        }
        match k.as_str() {
            "status" => outln!("  {k}: {} ({})", status_name(v), v),
            k if k.ends_with("_at_ms") => {
                let ms = v.parse::<i64>().unwrap_or(0);
                outln!("  {k}: {v} ({})", format_ms(ms))
            }
            _ => outln!("  {k}: {v}"),
        }
    }
    if let Some(e) = fields.get("last_error") {
        outln!("  last_error: {e}");
    }
    if let Some(p) = record.get("params_json") {
        outln!("params:\n{}", indent(&pretty(p)));
    }
    if let Some(r) = record.get("result_json") {
        outln!("result:\n{}", indent(&pretty(r)));
    }
    match record.get("errors_json").and_then(Value::as_array) {
        Some(errors) if !errors.is_empty() => {
            outln!("errors ({}):", errors.len());
            for e in errors {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let at = e.get("at_ms").and_then(Value::as_i64).unwrap_or(0);
                outln!(
                    "  attempt {} at {}: {}: {}",
                    e.get("attempt").and_then(Value::as_i64).unwrap_or(0),
                    format_ms(at),
                    s("error_type"),
                    s("message")
                );
                let tb = s("traceback");
                if !tb.is_empty() {
                    outln!("{}", indent(&indent(tb.trim_end())));
                }
            }
        }
        _ => outln!("errors: none"),
    }
    Ok(0)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn requeue(store: Store, dsn: String, a: &DlqTargetArgs) -> Result<u8, Failure> {
    let (mut requeued, mut pruned) = (0, 0);
    for q in queues_of(&store, &dsn, &a.queues).await? {
        if a.all {
            let len = store
                .dlq_len(&q)
                .await
                .map_err(|e| store_failure(&dsn, e))?;
            // Bounded: each call removes up to BATCH entries.
            for _ in 0..=(len as usize).div_ceil(BATCH) {
                let r = store
                    .dlq_requeue(&q, &[], BATCH)
                    .await
                    .map_err(|e| store_failure(&dsn, e))?;
                requeued += r.requeued;
                pruned += r.pruned;
                if store
                    .dlq_len(&q)
                    .await
                    .map_err(|e| store_failure(&dsn, e))?
                    == 0
                {
                    break;
                }
            }
        } else {
            for ids in a.job_ids.chunks(BATCH) {
                let r = store
                    .dlq_requeue(&q, ids, BATCH)
                    .await
                    .map_err(|e| store_failure(&dsn, e))?;
                requeued += r.requeued;
                pruned += r.pruned;
            }
        }
    }
    outln!("requeued {requeued} job(s)");
    if pruned > 0 {
        outln!("pruned {pruned} dead-letter entr(y/ies) whose record had expired");
    }
    Ok(0)
}

async fn purge(store: Store, dsn: String, a: &DlqTargetArgs) -> Result<u8, Failure> {
    let mut deleted = 0;
    for q in queues_of(&store, &dsn, &a.queues).await? {
        if a.all {
            let len = store
                .dlq_len(&q)
                .await
                .map_err(|e| store_failure(&dsn, e))?;
            for _ in 0..=(len as usize).div_ceil(BATCH) {
                let n = store
                    .dlq_purge(&q, &[], BATCH)
                    .await
                    .map_err(|e| store_failure(&dsn, e))?;
                deleted += n;
                if (n as usize) < BATCH {
                    break;
                }
            }
        } else {
            for ids in a.job_ids.chunks(BATCH) {
                deleted += store
                    .dlq_purge(&q, ids, BATCH)
                    .await
                    .map_err(|e| store_failure(&dsn, e))?;
            }
        }
    }
    outln!("deleted {deleted} job(s)");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_json_fields() {
        let mut f = BTreeMap::new();
        f.insert("params_json".to_owned(), r#"{"a":1}"#.to_owned());
        f.insert("errors_json".to_owned(), r#"[{"attempt":1}]"#.to_owned());
        f.insert("status".to_owned(), "5".to_owned());
        f.insert("last_error".to_owned(), "boom".to_owned());
        let r = record_json(&f, "q");
        assert_eq!(r["params_json"]["a"], 1);
        assert_eq!(r["errors_json"][0]["attempt"], 1);
        assert_eq!(r["status"], 5);
        assert_eq!(r["status_name"], "FAILED");
        assert_eq!(r["queue_name"], "q");
        assert_eq!(r["last_error"], "boom");
    }

    #[test]
    fn formats_times_and_lines() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(first_line("a\nb"), "a");
    }

    #[test]
    fn unknown_queues_are_named() {
        let known = vec!["a".to_owned(), "b".to_owned()];
        assert!(check_known(&["b".to_owned()], &known).is_ok());
        let Err(Failure(code, message)) = check_known(&["b".to_owned(), "typo".to_owned()], &known)
        else {
            panic!("typo accepted");
        };
        assert_eq!(code, 1);
        assert_eq!(
            message,
            "queue \"typo\" does not exist (known queues: a, b)"
        );
    }
}
