"""client.cancel: waiting jobs are cancelled at once, running ones through the runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from helpers import async_wait_for_file, wait_for_subscriber
from rrq import store as keys
from rrq.client import RRQClient
from rrq.exceptions import JobNotFoundError
from rrq.job import JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def test_pending_job_is_cancelled_at_once_and_never_runs(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue, "defer_by_seconds": 60})
    waiter = asyncio.create_task(client.wait_for_result(job_id, timeout=WAIT))
    await wait_for_subscriber(client.store.redis, keys.done_channel(queue, job_id))
    assert await client.cancel(job_id) is True
    result = await waiter
    assert result.status is JobStatus.CANCELLED
    assert result.attempt == 0
    assert result.started_at is None
    assert result.last_error_type == "Cancelled"
    assert await client.store.redis.zscore(keys.due_key(queue), job_id) is None
    # A cancelled job is kept for the default result TTL.
    ttl = await client.store.redis.pttl(keys.job_key(queue, job_id))
    assert 86_300_000 < ttl <= 86_400_000
    # It stays cancelled: a second cancel finds it finished.
    assert await client.cancel(job_id) is False


async def test_running_job_is_cancelled_in_the_runner(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    job_id = await client.enqueue(
        "hang_until_cancelled",
        {"queue_name": queue, "params": {"dir": str(marker_dir)}, "result_ttl_seconds": 60},
    )
    await async_wait_for_file(marker_dir / "started-1")
    waiter = asyncio.create_task(client.wait_for_result(job_id, timeout=WAIT))
    await wait_for_subscriber(client.store.redis, keys.done_channel(queue, job_id))
    assert await client.cancel(job_id) is True
    result = await waiter
    assert result.status is JobStatus.CANCELLED
    assert result.cancel_requested is True
    assert result.attempt == 1
    # The handler's task was cancelled (it wrote this in its CancelledError handler).
    assert await async_wait_for_file(marker_dir / "cancelled-1") == "1"
    ttl = await client.store.redis.pttl(keys.job_key(queue, job_id))
    assert 50_000 < ttl <= 60_000


async def test_finished_job_is_left_alone(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue})
    await client.wait_for_result(job_id, timeout=WAIT)
    assert await client.cancel(job_id) is False
    result = await client.get_job_status(job_id)
    assert result is not None
    assert result.status is JobStatus.COMPLETED
    assert result.cancel_requested is False


async def test_unknown_job_raises(client: RRQClient) -> None:
    with pytest.raises(JobNotFoundError):
        await client.cancel("no-such-job")


async def test_cancel_of_a_pending_job_needs_no_orchestrator(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue})
    assert await client.cancel(job_id) is True
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.CANCELLED
