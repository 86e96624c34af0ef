//! Runner authentication end to end: the real `rrq` binary refuses every
//! hello without a token valid for its runner with UNAUTHENTICATED, before a
//! hello_ack, while a job waits; spawned processes (their spawn token) and
//! external runners (the configured token) are served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use rrq_proto::v1::runner_service_client::RunnerServiceClient;
use rrq_proto::v1::{
    OrchestratorMessage, RunnerHello, RunnerMessage, orchestrator_message, outcome, runner_message,
};
use rrq_store::JobStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// `python` is external only; `spawned` keeps a process alive and records
/// its token and environment; `exits` records its token and exits at once
/// (the supervisor restarts it, so its second token proves the first
/// process was reaped and its token revoked).
fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"python\"\n\
         [rrq.runners.python]\nmax_in_flight = 4\n\
         [rrq.runners.spawned]\n\
         cmd = [\"sh\", \"-c\", \"env > {d}/spawned.env; echo \\\"$RRQ_RUNNER_TOKEN\\\" > {d}/spawned.fifo; exec sleep 600\"]\n\
         [rrq.runners.exits]\n\
         cmd = [\"sh\", \"-c\", \"echo \\\"$RRQ_RUNNER_TOKEN\\\" >> {d}/exits.tokens\"]\n"
    )
}

/// The first line written to the FIFO at `path` (blocks until a writer
/// writes and closes it).
async fn read_fifo(path: &Path) -> String {
    let path = path.to_owned();
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path).unwrap()),
    )
    .await
    .expect("the runner process did not write its token")
    .unwrap()
    .trim()
    .to_owned()
}

/// Sends a hello; the code of what comes back (OK = a hello_ack) and, on
/// OK, the open stream.
async fn hello(
    addr: &str,
    runner: &str,
    token: &str,
) -> (
    Code,
    Option<(
        mpsc::Sender<RunnerMessage>,
        tonic::Streaming<OrchestratorMessage>,
    )>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RunnerServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(RunnerMessage {
        kind: Some(runner_message::Kind::Hello(RunnerHello {
            protocol_version: 1,
            runner_name: runner.to_owned(),
            language: "forged".into(),
            handlers: vec!["echo".into()],
            max_in_flight: 4,
            pid: 1,
            process_token: token.to_owned(),
        })),
    })
    .await
    .unwrap();
    let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (status.code(), None),
    };
    match tokio::time::timeout(WAIT, inbound.message()).await.unwrap() {
        Ok(Some(OrchestratorMessage {
            kind: Some(orchestrator_message::Kind::HelloAck(_)),
        })) => (Code::Ok, Some((tx, inbound))),
        Ok(other) => panic!("expected a hello_ack or a status, got {other:?}"),
        Err(status) => (status.code(), None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_tokens_register_and_see_jobs() {
    let redis = Redis::start().await;
    let store = redis.store().await;
    let dir = std::env::temp_dir().join(format!(
        "rrq-auth-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("spawned.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let orch = Orchestrator::start_config(&redis, &config(&dir), &[], &[]).await;
    let python = orch.addrs["python"].clone();

    // A job waits for the python runner while forged runners knock.
    let mut done = DoneWatch::new(&redis, "default", "waiting-1").await;
    store
        .enqueue(&job("default", "waiting-1", "echo", 0))
        .await
        .unwrap();

    let spawned = read_fifo(&fifo).await;
    // The supervisor revokes a token when its process exits, before it
    // schedules the restart.
    orch.log.wait_for("restarting runner process", 1).await;
    let exited = std::fs::read_to_string(dir.join("exits.tokens"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(spawned.len(), 64, "a spawn token is 256 random bits in hex");
    let forged = [
        ("no token", "python", String::new()),
        (
            "a wrong token",
            "python",
            "made-up-token-0123456789abcdef".to_owned(),
        ),
        (
            "a near miss",
            "python",
            format!("{}x", &TOKEN[..TOKEN.len() - 1]),
        ),
        ("another runner's token", "python", spawned.clone()),
        ("a token of an exited process", "exits", exited.clone()),
    ];
    for (what, runner, token) in &forged {
        let (code, stream) = hello(&python, runner, token).await;
        assert_eq!(code, Code::Unauthenticated, "{what}");
        assert!(stream.is_none(), "{what}");
    }
    orch.log.wait_for("runner refused", forged.len()).await;
    for line in orch.log.lines() {
        for (_, _, token) in forged.iter().filter(|f| !f.2.is_empty()) {
            assert!(
                !line.contains(token.as_str()),
                "a log line shows a token: {line}"
            );
        }
    }
    assert!(
        !orch
            .log
            .lines()
            .iter()
            .any(|l| l.contains("runner connected") && l.contains("name=python")),
        "a forged runner registered"
    );

    // The spawned process's token works, once at a time.
    let (code, first) = hello(&python, "spawned", &spawned).await;
    assert_eq!(code, Code::Ok);
    let (code, _) = hello(&python, "spawned", &spawned).await;
    assert_eq!(
        code,
        Code::Unauthenticated,
        "a second stream on one spawn token"
    );
    drop(first);

    // The external runner with the configured token gets the waiting job,
    // as its first attempt: nobody saw it before.
    let mut runner = TestRunner::connect_as(&python, "python", &["echo"]).await;
    let exec = runner.next_execution().await;
    assert_eq!((exec.job_id.as_str(), exec.attempt), ("waiting-1", 1));
    runner
        .send(
            &exec.job_id,
            exec.attempt,
            outcome::Result::Success(rrq_proto::v1::Success {
                result_json: "1".into(),
            }),
        )
        .await;
    assert_eq!(done.wait().await, JobStatus::Completed as i32);

    // The spawned process saw its own token and no other secret.
    let env = std::fs::read_to_string(dir.join("spawned.env")).unwrap();
    assert!(env.lines().any(|l| l == "RRQ_RUNNER_SPAWNED=1"), "{env}");
    assert!(
        !env.contains(TOKEN),
        "the external token reached a child: {env}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_external_token_is_a_config_error() {
    let dir = std::env::temp_dir().join(format!(
        "rrq-auth-cfg-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rrq.toml");
    std::fs::write(
        &path,
        "[rrq.runners.python]\ntoken_env = \"RRQ_TEST_UNSET_TOKEN_VAR\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rrq"))
        .args(["worker", "run", "--config"])
        .arg(&path)
        .env_remove("RRQ_TEST_UNSET_TOKEN_VAR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rrq.runners.python.token_env"), "{stderr}");
    assert!(
        stderr.contains("RRQ_TEST_UNSET_TOKEN_VAR is not set"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A spawned runner's default transport is a private unix socket: the Rust
/// runtime dials the `unix:/path` address the orchestrator hands its process
/// and, with that process's spawn token, runs a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_runtime_dials_the_unix_socket_with_a_spawn_token() {
    use std::os::unix::fs::PermissionsExt as _;

    let redis = Redis::start().await;
    let store = redis.store().await;
    let dir = std::env::temp_dir().join(format!(
        "rrq-auth-unix-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("rust.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // The process hands its address and token to the test, which serves in
    // its place (in process, so the test owns the handler).
    let config = format!(
        "[rrq]\nredis_dsn = \"redis://127.0.0.1:1/0\"\ndefault_runner_name = \"rust\"\n\
         [rrq.runners.rust]\nmax_in_flight = 2\n\
         cmd = [\"sh\", \"-c\", \"echo \\\"$RRQ_ORCHESTRATOR_ADDR $RRQ_RUNNER_TOKEN\\\" > {}; exec sleep 600\"]\n",
        fifo.display()
    );
    let orch = Orchestrator::start_config(&redis, &config, &[], &[]).await;
    let line = read_fifo(&fifo).await;
    let (addr, token) = line.split_once(' ').unwrap();
    assert_eq!(orch.addrs["rust"], addr);
    let path = addr.strip_prefix("unix:").expect("a unix socket address");
    let socket_mode = std::fs::metadata(path).unwrap().permissions().mode();
    let dir_mode = std::fs::metadata(Path::new(path).parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!((socket_mode & 0o777, dir_mode & 0o777), (0o600, 0o700));

    let mut registry = rrq_runner::Registry::new();
    registry.register("echo", |req, _cancel| async move { Ok(req.params) });
    let runner = rrq_runner::Runner::new(registry)
        .runner_name("rust")
        .process_token(token)
        .handle_signals(false);
    let stop = runner.stop_token();
    let serving = tokio::spawn(runner.run(addr.to_owned()));
    let mut done = DoneWatch::new(&redis, "default", "unix-1").await;
    store
        .enqueue(&job("default", "unix-1", "echo", 0))
        .await
        .unwrap();
    assert_eq!(done.wait().await, JobStatus::Completed as i32);
    stop.cancel();
    serving.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
