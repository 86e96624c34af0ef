"""Runner hygiene with a real orchestrator and Python runners:
``max_jobs_per_runner`` and ``max_memory_per_runner`` recycle a runner process
between jobs without losing or charging a job; on shutdown, what is left of a
runner's process group is killed; a bad ``cwd`` is named as such."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from conftest import ConfigureOrchestrators, OrchestratorFactory, find_orchestrator_binary
from rrq.client import RRQClient
from rrq.job import JobStatus

WAIT = 30.0
SETTINGS = "fixture_recycling:settings"


def hygiene_config(configure: ConfigureOrchestrators, runner_keys: str) -> OrchestratorFactory:
    """One Python runner process running one job at a time, with ``runner_keys``."""
    factory = configure(max_in_flight=1)
    text = factory.config.read_text(encoding="utf-8")
    text = text.replace("fixture_handlers:settings", SETTINGS)
    text = text.replace("max_in_flight = 1\n", f"max_in_flight = 1\n{runner_keys}", 1)
    factory.config.write_text(text, encoding="utf-8")
    return factory


async def run_one(client: RRQClient, queue: str, fn: str, params: dict[str, object]) -> int:
    """Runs one job to completion; the pid of the runner that ran it (attempt 1)."""
    job_id = await client.enqueue(fn, {"queue_name": queue, "params": params, "max_retries": 0})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED, result
    assert result.attempt == 1, result
    assert result.result["attempt"] == 1, result
    return int(result.result["pid"])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout}s"
        time.sleep(0.02)  # bounded poll of /proc: a non-child's exit has no event


async def test_max_jobs_per_runner_recycles_between_jobs(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    factory = hygiene_config(configure_orchestrators, "max_jobs_per_runner = 2\n")
    orch = factory.start()
    pids = [await run_one(client, queue, "whoami", {}) for _ in range(5)]
    # Two jobs per process, then a fresh one; none failed or used a second attempt.
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
    assert len(set(pids)) == 3, pids
    for old in pids[:4]:
        wait_gone(old, WAIT)
    assert orch.log is not None
    assert orch.log.text().count("recycling runner process") >= 2


async def test_jobs_in_flight_finish_before_a_recycle(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    factory = hygiene_config(configure_orchestrators, "max_jobs_per_runner = 3\n")
    factory.start()
    jobs = [
        await client.enqueue("whoami", {"queue_name": queue, "max_retries": 0}) for _ in range(9)
    ]
    results = [await client.wait_for_result(j, timeout=WAIT) for j in jobs]
    assert all(r.status is JobStatus.COMPLETED and r.attempt == 1 for r in results), results
    by_pid: dict[int, int] = {}
    for r in results:
        by_pid[r.result["pid"]] = by_pid.get(r.result["pid"], 0) + 1
    assert sorted(by_pid.values()) == [3, 3, 3], by_pid


async def test_max_memory_per_runner_recycles_a_leaking_runner(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    factory = hygiene_config(configure_orchestrators, 'max_memory_per_runner = "200MiB"\n')
    factory.start()
    first = await run_one(client, queue, "whoami", {})
    # Under the limit: the same process runs the next job.
    assert await run_one(client, queue, "whoami", {}) == first
    # 256 MiB kept by the handler: over the limit after this job.
    assert await run_one(client, queue, "leak", {"mib": 256}) == first
    fresh = await run_one(client, queue, "whoami", {})
    assert fresh != first
    wait_gone(first, WAIT)
    assert await run_one(client, queue, "whoami", {}) == fresh


async def test_shutdown_kills_what_is_left_of_the_runner_group(
    orchestrators: OrchestratorFactory, client: RRQClient, queue: str, tmp_path: Path
) -> None:
    text = orchestrators.config.read_text(encoding="utf-8")
    orchestrators.config.write_text(text.replace("fixture_handlers:settings", SETTINGS))
    orch = orchestrators.start()
    in_group, own_session = tmp_path / "in-group.pid", tmp_path / "own-session.pid"
    job_a = await client.enqueue(
        "start_child", {"queue_name": queue, "params": {"pid_file": str(in_group)}}
    )
    job_b = await client.enqueue(
        "start_child",
        {"queue_name": queue, "params": {"pid_file": str(own_session), "setsid": True}},
    )
    for job in (job_a, job_b):
        assert (await client.wait_for_result(job, timeout=WAIT)).status is JobStatus.COMPLETED
    child = int(in_group.read_text())
    escaped = int(own_session.read_text())
    try:
        assert alive(child)
        assert orch.stop() == 0
        # The child ignored SIGTERM and its runner exited: it is killed with the group.
        wait_gone(child, WAIT)
        # A child in a session of its own left the group: not reached (documented).
        assert alive(escaped)
    finally:
        for pid in (child, escaped):
            if alive(pid):
                os.kill(pid, 9)


def test_a_bad_cwd_is_named(tmp_path: Path, redis_dsn: str) -> None:
    binary = find_orchestrator_binary()
    missing = tmp_path / "no-such-dir"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for cwd, what in ((missing, "does not exist"), (a_file, "is not a directory")):
        config = tmp_path / "rrq.toml"
        config.write_text(
            f'[rrq]\nredis_dsn = "{redis_dsn}"\n\n[rrq.runners.python]\n'
            f'cmd = ["python3", "-c", "pass"]\ncwd = "{cwd}"\n',
            encoding="utf-8",
        )
        done = subprocess.run(
            [binary, "worker", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert f"runner python: cwd {cwd} {what}" in done.stderr, done.stderr
        assert "rrq.runners.python.cwd" in done.stderr, done.stderr
