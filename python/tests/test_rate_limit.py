"""enqueue_with_rate_limit: the first call in a window is accepted, later ones write nothing."""

from __future__ import annotations

from helpers import nothing_written, wait_until
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def test_first_call_accepted_later_ones_rejected_without_writes(
    client: RRQClient, queue: str
) -> None:
    options = {"queue_name": queue, "rate_limit_key": "user-1", "rate_limit_seconds": 60}
    first = await client.enqueue_with_rate_limit("f", options)
    assert first is not None
    status = await client.get_job_status(first)
    assert status is not None
    assert status.rate_limit_key == "user-1"
    redis = client.store.redis
    async with nothing_written(redis):
        for _ in range(3):
            assert await client.enqueue_with_rate_limit("f", options) is None
    ttl = await redis.pttl(keys.rate_limit_key(queue, "user-1"))
    assert 50_000 < ttl <= 60_000


async def test_keys_are_independent(client: RRQClient, queue: str) -> None:
    base = {"queue_name": queue, "rate_limit_seconds": 60}
    assert await client.enqueue_with_rate_limit("f", {**base, "rate_limit_key": "a"})
    assert await client.enqueue_with_rate_limit("f", {**base, "rate_limit_key": "b"})
    assert await client.enqueue_with_rate_limit("f", {**base, "rate_limit_key": "a"}) is None


async def test_next_window_accepts_again(client: RRQClient, queue: str) -> None:
    options = {"queue_name": queue, "rate_limit_key": "k", "rate_limit_seconds": 0.2}
    first = await client.enqueue_with_rate_limit("f", options)

    async def window_closed() -> bool:
        return not await client.store.redis.exists(keys.rate_limit_key(queue, "k"))

    await wait_until(window_closed, "the end of the rate-limit window")
    second = await client.enqueue_with_rate_limit("f", options)
    assert second is not None
    assert second != first


async def test_accepted_job_runs(orchestrator: Orchestrator, client: RRQClient, queue: str) -> None:
    options = {
        "queue_name": queue,
        "params": {"x": 1},
        "rate_limit_key": "run",
        "rate_limit_seconds": 60,
    }
    job_id = await client.enqueue_with_rate_limit("echo", options)
    assert job_id is not None
    assert await client.enqueue_with_rate_limit("echo", options) is None
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.result["params"] == {"x": 1}
    # Finishing the job does not reopen the window.
    assert await client.enqueue_with_rate_limit("echo", options) is None
