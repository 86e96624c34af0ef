//! A job record as read back from Redis.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Where a job is in its lifecycle (`rrq.v1.JobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobStatus {
    /// Waiting to run (maybe deferred).
    Pending,
    /// An attempt is running.
    Active,
    /// Waiting for its next attempt after a failure.
    Retrying,
    /// Finished with a result.
    Completed,
    /// Dead-lettered: retries used up, fatal error, or unknown handler.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// A status number this client does not know.
    Unknown(i32),
}

impl JobStatus {
    /// The status of a `JobStatus` number as stored in the record.
    pub fn from_number(n: i32) -> Self {
        match n {
            1 => JobStatus::Pending,
            2 => JobStatus::Active,
            3 => JobStatus::Retrying,
            4 => JobStatus::Completed,
            5 => JobStatus::Failed,
            6 => JobStatus::Cancelled,
            other => JobStatus::Unknown(other),
        }
    }

    /// True for COMPLETED, FAILED and CANCELLED, which never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// Lowercase name, as Python's `str(JobStatus)`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Active => "active",
            JobStatus::Retrying => "retrying",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of one failed attempt (an entry of the record's `errors_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// Attempt number.
    pub attempt: i64,
    /// Error class.
    pub error_type: String,
    /// Message.
    pub message: String,
    /// Stack trace, when the runner had one.
    pub traceback: String,
    /// When the failure was recorded (Redis clock).
    pub at: SystemTime,
}

/// A snapshot of one job record.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobResult {
    /// Job id.
    pub job_id: String,
    /// Current status.
    pub status: JobStatus,
    /// Handler name as enqueued.
    pub function_name: String,
    /// Queue.
    pub queue_name: String,
    /// Attempts started so far.
    pub attempt: i64,
    /// Retries allowed after the first attempt.
    pub max_retries: i64,
    /// The handler's decoded return value (`None` until completed).
    pub result: Option<Value>,
    /// Error of the most recent failed attempt (empty when none failed).
    pub last_error: String,
    /// Error class of the most recent failed attempt.
    pub last_error_type: String,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptError>,
    /// When it was enqueued.
    pub enqueued_at: Option<SystemTime>,
    /// When it (or its next attempt) is due.
    pub run_at: Option<SystemTime>,
    /// When its latest attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached a terminal status.
    pub finished_at: Option<SystemTime>,
    /// Unique key it was enqueued with (empty when none).
    pub unique_key: String,
    /// Rate-limit key it was enqueued with (empty when none).
    pub rate_limit_key: String,
    /// Debounce key it was enqueued with (empty when none).
    pub debounce_key: String,
    /// True once a cancel was requested while an attempt ran.
    pub cancel_requested: bool,
}

fn time(ms: i64) -> Option<SystemTime> {
    (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs()))
}

impl JobResult {
    /// Converts a job hash (every field, as from `HGETALL`) of job `id` in
    /// `queue`: both are in the record's key, not in the hash.
    pub fn from_fields(fields: &BTreeMap<String, String>, id: &str, queue: &str) -> Self {
        let or = |k: &str, default: &str| {
            fields
                .get(k)
                .filter(|v| !v.is_empty())
                .map_or_else(|| default.to_owned(), Clone::clone)
        };
        let text = |k: &str| fields.get(k).cloned().unwrap_or_default();
        let int = |k: &str| {
            fields
                .get(k)
                .and_then(|v| {
                    v.parse::<i64>()
                        .ok()
                        .or_else(|| v.parse::<f64>().ok().map(|f| f as i64))
                })
                .unwrap_or(0)
        };
        let result = fields
            .get("result_json")
            .filter(|r| !r.is_empty())
            .map(|r| serde_json::from_str(r).unwrap_or_else(|_| Value::String(r.clone())));
        JobResult {
            job_id: or("id", id),
            status: JobStatus::from_number(i32::try_from(int("status")).unwrap_or(0)),
            function_name: text("function_name"),
            queue_name: or("queue_name", queue),
            attempt: int("attempt"),
            max_retries: int("max_retries"),
            result,
            last_error: text("last_error"),
            last_error_type: text("last_error_type"),
            errors: errors_from_json(&text("errors_json")),
            enqueued_at: time(int("enqueued_at_ms")),
            // Not stored when the job was due at once.
            run_at: time(int(if fields.contains_key("run_at_ms") {
                "run_at_ms"
            } else {
                "enqueued_at_ms"
            })),
            started_at: time(int("started_at_ms")),
            finished_at: time(int("finished_at_ms")),
            unique_key: text("unique_key"),
            rate_limit_key: text("rate_limit_key"),
            debounce_key: text("debounce_key"),
            cancel_requested: matches!(
                fields.get("cancel_requested").map(String::as_str),
                Some("1" | "true")
            ),
        }
    }
}

/// Parses `errors_json`; entries that are not objects are skipped (cjson
/// encodes an empty table as `{}`).
fn errors_from_json(text: &str) -> Vec<AttemptError> {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(Value::as_object)
        .map(|e| {
            let s = |k: &str| match e.get(k) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let at_ms = e.get("at_ms").and_then(Value::as_f64).unwrap_or(0.0);
            AttemptError {
                attempt: e.get("attempt").and_then(Value::as_i64).unwrap_or(0),
                error_type: s("error_type"),
                message: s("message"),
                traceback: s("traceback"),
                at: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms.max(0.0) as u64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_record() {
        let mut f = BTreeMap::new();
        for (k, v) in [
            ("status", "4"),
            ("attempt", "2"),
            ("result_json", r#"{"a":1}"#),
            (
                "errors_json",
                r#"[{"attempt":1,"error_type":"E","message":"m","at_ms":5}]"#,
            ),
            ("enqueued_at_ms", "1000"),
        ] {
            f.insert(k.to_owned(), v.to_owned());
        }
        let r = JobResult::from_fields(&f, "j", "q");
        assert_eq!((r.job_id.as_str(), r.queue_name.as_str()), ("j", "q"));
        assert_eq!(r.status, JobStatus::Completed);
        assert!(r.status.is_terminal());
        assert_eq!(r.result, Some(serde_json::json!({"a": 1})));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].error_type, "E");
        assert_eq!(
            r.enqueued_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(r.finished_at, None);
        assert!(errors_from_json("{}").is_empty());
    }
}
