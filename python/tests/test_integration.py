"""End to end: real Redis, the real orchestrator binary, real Python runner processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from conftest import OrchestratorFactory
from helpers import async_wait_for_file, wait_until
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobResult, JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def run_job(
    client: RRQClient,
    queue: str,
    function: str,
    params: dict[str, Any] | None = None,
    **options: Any,
) -> JobResult:
    job_id = await client.enqueue(
        function, {"queue_name": queue, "params": params or {}, **options}
    )
    return await client.wait_for_result(job_id, timeout=WAIT)


async def test_success_with_result(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue, "params": {"x": [1, "two"]}})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.result == {
        "params": {"x": [1, "two"]},
        "attempt": 1,
        "queue": queue,
        "job_id": job_id,
        "pid": result.result["pid"],
    }
    assert result.attempt == 1
    assert result.finished_at is not None


async def test_sync_handler_runs_in_a_thread(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    result = await run_job(client, queue, "sync_echo", {"n": 1})
    assert result.status is JobStatus.COMPLETED
    assert result.result["params"] == {"n": 1}
    assert result.result["thread"].startswith("rrq-handler")


async def test_many_jobs_at_once(orchestrator: Orchestrator, client: RRQClient, queue: str) -> None:
    ids = [
        await client.enqueue("echo", {"queue_name": queue, "params": {"i": i}}) for i in range(20)
    ]
    results = await asyncio.gather(*(client.wait_for_result(i, timeout=WAIT) for i in ids))
    assert [r.result["params"]["i"] for r in results] == list(range(20))


async def test_retry_then_success(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    result = await run_job(client, queue, "fail_until", {"succeed_on": 2}, max_retries=3)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 2
    assert result.result == {"attempt": 2}
    assert result.last_error_type == "ValueError"
    assert "attempt 1 fails" in result.last_error


async def test_retry_job_with_defer(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    result = await run_job(
        client, queue, "retry_with_defer", {"dir": str(marker_dir), "defer": 1.0}, max_retries=3
    )
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 2
    first = float((marker_dir / "first_attempt").read_text())
    assert result.result["at"] - first >= 0.9  # the handler's own delay, not the 0.05 s backoff


async def test_dead_letter_after_max_retries(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    result = await run_job(client, queue, "always_fail", max_retries=2)
    assert result.status is JobStatus.FAILED
    assert result.attempt == 3
    assert result.last_error_type == "RuntimeError"
    assert "boom on attempt 3" in result.last_error
    assert await client.store.redis.zscore(keys.dlq_key(queue), result.job_id) is not None


async def test_fatal_error_fails_without_retry(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    result = await run_job(client, queue, "fatal", max_retries=3)
    assert result.status is JobStatus.FAILED
    assert result.attempt == 1
    assert "cannot ever work" in result.last_error


async def test_unserializable_result_fails(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    result = await run_job(client, queue, "not_serializable", max_retries=0)
    assert result.status is JobStatus.FAILED
    assert result.result is None


async def test_unknown_function_fails_fast(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    started = time.monotonic()
    result = await run_job(client, queue, "no_such_handler", job_timeout_seconds=60, max_retries=3)
    assert result.status is JobStatus.FAILED
    assert time.monotonic() - started < 10  # well under the 60 s job timeout
    assert result.last_error


async def test_job_timeout_cancels_and_dead_letters(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    result = await run_job(
        client, queue, "hang", {"dir": str(marker_dir)}, job_timeout_seconds=1, max_retries=1
    )
    assert result.status is JobStatus.FAILED
    assert result.attempt == 2
    assert result.last_error_type == "JobTimeout"
    assert (marker_dir / "started-1").exists()
    assert (marker_dir / "started-2").exists()


async def test_sync_handler_past_its_timeout_gets_its_process_replaced(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    result = await run_job(
        client, queue, "sync_hang", {"dir": str(marker_dir)}, job_timeout_seconds=1, max_retries=0
    )
    assert result.status is JobStatus.FAILED
    assert result.last_error_type == "JobTimeout"
    stuck_pid = int((marker_dir / "started-1").read_text())
    # After cancel_grace_seconds the orchestrator kills that runner and starts another.
    await asyncio.to_thread(orchestrator.wait_for_runners, 2)
    after = await run_job(client, queue, "echo")
    assert after.status is JobStatus.COMPLETED
    assert after.result["pid"] != stuck_pid


async def test_runner_killed_mid_job(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    job_id = await client.enqueue(
        "hang_once", {"queue_name": queue, "params": {"dir": str(marker_dir)}, "max_retries": 2}
    )
    pid = int(await async_wait_for_file(marker_dir / "first_run"))
    os.kill(pid, signal.SIGKILL)
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 2
    assert result.result["pid"] != pid  # a new runner process ran it


async def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text, encoding="utf-8")
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def test_orchestrator_killed_mid_job(
    orchestrators: OrchestratorFactory, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    first = orchestrators.start()
    job_id = await client.enqueue(
        "hang_once", {"queue_name": queue, "params": {"dir": str(marker_dir)}, "max_retries": 2}
    )
    runner_pid = int(await async_wait_for_file(marker_dir / "first_run"))
    first.kill()  # SIGKILL: no drain, the lease stays behind
    await wait_until(lambda: _gone(runner_pid), "the orphaned runner to exit")
    status = await client.get_job_status(job_id)
    assert status is not None
    assert status.status is JobStatus.ACTIVE

    orchestrators.start()
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 2
    assert result.last_error_type == "LeaseExpired"


async def test_sigterm_drains_a_running_job(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    job_id = await client.enqueue(
        "short_job", {"queue_name": queue, "params": {"dir": str(marker_dir), "seconds": 1}}
    )
    await async_wait_for_file(marker_dir / "started")
    orchestrator.signal(signal.SIGTERM)
    code = await asyncio.to_thread(orchestrator.wait, WAIT)
    assert code == 0
    assert orchestrator.log is not None
    assert "Traceback" not in orchestrator.log.text()  # the runner stopped cleanly too
    result = await client.get_job_status(job_id)
    assert result is not None
    assert result.status is JobStatus.COMPLETED
    assert result.result == {"done": True}


async def test_job_past_the_grace_is_released_and_runs_again(
    orchestrators: OrchestratorFactory, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    first = orchestrators.start()
    job_id = await client.enqueue(
        "hang_once", {"queue_name": queue, "params": {"dir": str(marker_dir)}, "max_retries": 0}
    )
    await async_wait_for_file(marker_dir / "first_run")
    first.signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, WAIT)  # after shutdown_grace_seconds = 3
    assert code == 0
    released = await client.get_job_status(job_id)
    assert released is not None
    assert released.status is JobStatus.PENDING
    assert released.attempt == 0  # the attempt was not charged

    orchestrators.start()
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 1  # max_retries = 0, yet it ran again


async def test_outcomes_of_concurrent_jobs(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    dirs = [marker_dir / str(i) for i in range(3)]
    for directory in dirs:
        directory.mkdir()
    ids = [
        await client.enqueue(
            "short_job", {"queue_name": queue, "params": {"dir": str(d), "seconds": 0.2}}
        )
        for d in dirs
    ]
    results = await asyncio.gather(*(client.wait_for_result(i, timeout=WAIT) for i in ids))
    assert all(r.status is JobStatus.COMPLETED for r in results)
