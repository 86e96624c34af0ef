//! End-to-end tests of what the orchestrator writes to its log and prints:
//! no Redis password in any DSN form (ready line, connection errors, `rrq
//! dlq` errors), producer-controlled strings escaped onto one line, and the
//! DLQ commands' handling of a closed pipe and of an unknown `--queue`.
//! Real redis-server, real `rrq` binary; synchronisation by log lines and
//! process exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use rrq_store::{JobStatus, Settle, SettleAction};

const PASSWORD: &str = "pw-5ecret-Zq9";

/// `rrq worker run` with `dsn` in `RRQ_REDIS_DSN`, every output line kept.
struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    events: std_mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    dir: std::path::PathBuf,
}

impl Logged {
    fn start(dsn: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rrq-secrets-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rrq.toml");
        std::fs::write(
            &path,
            with_runner_tokens(
                "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
                 [rrq.runners.python]\nmax_in_flight = 4\n",
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rrq"))
            .args(["worker", "run", "--config"])
            .arg(&path)
            .env(TOKEN_ENV, TOKEN)
            .env("RRQ_REDIS_DSN", dsn)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = std_mpsc::channel();
        let kept = lines.clone();
        let reader = std::thread::spawn(move || {
            // By bytes: a raw control character must reach the assertions as is.
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                eprintln!("[rrq] {line}");
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
                buf.clear();
            }
        });
        Self {
            child,
            lines,
            events,
            reader: Some(reader),
            dir,
        }
    }

    /// Waits for a line containing `needle` and returns it.
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .events
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the process to exit on its own; returns its status and log.
    fn exit(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let (tx, rx) = std_mpsc::channel();
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(WAIT)
            .expect("the orchestrator did not exit")
            .unwrap();
        (status, self.finish())
    }

    /// Kills the process and returns every line it wrote.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish()
    }

    fn finish(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_no_password(lines: &[String]) {
    for line in lines {
        assert!(!line.contains(PASSWORD), "password in the log: {line}");
    }
}

/// A Redis that requires `PASSWORD`, on TCP and on a unix socket.
fn redis_with_password(dir: &std::path::Path) -> (rrq_testkit::RedisServer, String) {
    let socket = dir.join("redis.sock").display().to_string();
    let server = rrq_testkit::RedisServer::start_with(&[
        "--requirepass",
        PASSWORD,
        "--unixsocket",
        &socket,
        "--unixsocketperm",
        "700",
    ]);
    (server, socket)
}

#[test]
fn the_ready_line_shows_no_password_tcp_or_unix() {
    let dir = tempdir("ready");
    let (server, socket) = redis_with_password(&dir);
    for dsn in [
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", server.port),
        format!("redis://default:{PASSWORD}@127.0.0.1:{}/0", server.port),
        format!("redis+unix://{socket}?db=0&pass={PASSWORD}"),
        format!("unix://{socket}?pass={PASSWORD}&db=0"),
    ] {
        let orch = Logged::start(&dsn);
        let ready = orch.wait_for("rrq orchestrator ready");
        assert!(ready.contains("redis="), "{ready}");
        assert!(ready.contains("***"), "{ready}");
        assert_no_password(&orch.stop());
    }
}

#[test]
fn connection_errors_show_no_password() {
    let dir = tempdir("errors");
    let missing = dir.join("missing.sock").display().to_string();
    for dsn in [
        format!("redis://:{PASSWORD}@127.0.0.1:{}/0", free_port()),
        format!("rediss://user:{PASSWORD}@127.0.0.1:{}/0", free_port()),
        format!("redis+unix://{missing}?db=0&pass={PASSWORD}"),
        format!("unix://:{PASSWORD}@{missing}?db=0"),
        format!("redis://:{PASSWORD}@127.0.0.1:notaport/0"),
        format!("redis:/:{PASSWORD}@127.0.0.1/0"),
    ] {
        let (status, lines) = Logged::start(&dsn).exit();
        assert!(!status.success(), "{dsn}: {status}");
        assert!(
            lines.iter().any(|l| l.starts_with("rrq: ")),
            "{dsn}: no error: {lines:?}"
        );
        assert_no_password(&lines);

        let out = Command::new(env!("CARGO_BIN_EXE_rrq"))
            .args(["dlq", "list"])
            .env("RRQ_REDIS_DSN", &dsn)
            .env_remove("RRQ_CONFIG")
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{dsn}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.is_empty());
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rrq-{tag}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_function_name_stays_on_one_escaped_line() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let orch = Logged::start(&redis.dsn());
    let ready = orch.wait_for("rrq orchestrator ready");
    let addr = ready
        .split("listen=[python=")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .to_owned();
    let _runner = TestRunner::connect(&addr, &["echo"]).await;

    let forged = "x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m\u{202e}";
    let mut done = DoneWatch::new(&redis, "default", "forge-1").await;
    store
        .enqueue(&job("default", "forge-1", forged, 0))
        .await
        .unwrap();
    assert_eq!(done.wait().await, JobStatus::Failed as i32);
    let line = tokio::task::spawn_blocking(move || {
        let line = orch.wait_for("unknown function");
        (line, orch.stop())
    })
    .await
    .unwrap();
    let (line, lines) = line;
    assert!(
        line.contains(r"x\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m\u{202e}"),
        "{line}"
    );
    for l in &lines {
        assert!(!l.starts_with("2026-01-01T00:00:00Z"), "forged line: {l}");
        assert!(
            !l.contains('\x1b') && !l.contains('\u{202e}'),
            "raw control: {l:?}"
        );
    }
}

/// Runs `rrq <args>` against `dsn`; stdout goes to `stdout`.
fn rrq(dsn: &str, args: &[&str], stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rrq"))
        .args(args)
        .env("RRQ_REDIS_DSN", dsn)
        .env_remove("RRQ_CONFIG")
        .current_dir(std::env::temp_dir())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Dead-letters `n` jobs of `queue` through the real scripts (a claim and
/// a failing settle each).
async fn dead_letter(redis: &Redis, queue: &str, n: usize) {
    let store = redis.store().await;
    for i in 0..n {
        let id = format!("dead-{i}");
        store.enqueue(&job(queue, &id, "work", 0)).await.unwrap();
        let claim = store.claim(queue, 1, "tester", 30_000).await.unwrap();
        assert_eq!(claim.jobs.len(), 1);
        let r = store
            .settle(&[Settle {
                queue: queue.into(),
                job_id: id,
                attempt: 1,
                owner: "tester".into(),
                action: SettleAction::Fail {
                    message: "boom ".repeat(20),
                    error_type: "ValueError".into(),
                    traceback: String::new(),
                },
                default_result_ttl_ms: 60_000,
                dlq_retention_ms: 600_000,
            }])
            .await
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap().status, JobStatus::Failed as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_into_a_closed_pipe_exits_quietly() {
    let redis = Redis::start().await;
    dead_letter(&redis, "default", 40).await;
    let dsn = redis.dsn();
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        // `| head -1`: read one line, then close the pipe while rrq still writes.
        let mut child = rrq(&dsn, &["dlq", "list", "--limit", "40"], Stdio::piped());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(first.starts_with("dead-"), "{first}");
        drop(stdout);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (child.wait().unwrap(), stderr)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_commands_refuse_an_unknown_queue() {
    let redis = Redis::start().await;
    dead_letter(&redis, "default", 1).await;
    let dsn = redis.dsn();
    tokio::task::spawn_blocking(move || {
        for args in [
            &["dlq", "purge", "--all", "--queue", "typo"][..],
            &["dlq", "requeue", "--all", "--queue", "typo"],
            &["dlq", "purge", "dead-0", "--queue", "typo"],
            &["dlq", "list", "--queue", "typo"],
            &["dlq", "list", "--queue", "default", "--queue", "typo"],
        ] {
            let out = rrq(&dsn, args, Stdio::piped()).wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains("queue \"typo\" does not exist (known queues: default)"),
                "{args:?}: {stderr}"
            );
            assert!(out.stdout.is_empty(), "{args:?}");
        }
        // Nothing was touched: the known queue still has its entry.
        let out = rrq(&dsn, &["dlq", "list", "--queue", "default"], Stdio::piped())
            .wait_with_output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("dead-0"));
    })
    .await
    .unwrap();
}
