"""A job id the producer chooses names at most one job across every queue.

enqueue.lua checks the id registry (``<prefix>:ids``: id -> record key) and
writes the job in one script, so two producers racing one id into two queues
cannot both win; the orchestrator forgets entries whose record expired.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers import wait_until
from rrq.client import RRQClient
from rrq.exceptions import DuplicateJobError
from rrq.job import JobStatus
from rrq.store import DEFAULT_KEYS, job_key
from rrq.testing import Orchestrator


async def test_one_id_raced_into_two_queues_makes_one_job(redis_dsn: str, queue: str) -> None:
    clients = [RRQClient(config={"redis_dsn": redis_dsn}) for _ in range(2)]
    try:
        await asyncio.gather(*(c.store.redis.ping() for c in clients))
        for n in range(50):
            job_id = f"race-{queue}-{n}"
            queues = [f"{queue}-a", f"{queue}-b"]
            results = await asyncio.gather(
                *(
                    c.enqueue("echo", {"job_id": job_id, "queue_name": q})
                    for c, q in zip(clients, queues, strict=True)
                ),
                return_exceptions=True,
            )
            winners = [r for r in results if r == job_id]
            losers = [r for r in results if isinstance(r, DuplicateJobError)]
            assert len(winners) == 1, results
            assert len(losers) == 1, results
            won = queues[results.index(job_id)]
            assert losers[0].queue_name == won
            assert losers[0].status == JobStatus.PENDING
            exists = [await clients[0].store.redis.exists(job_key(q, job_id)) for q in queues]
            assert sorted(exists) == [0, 1]
    finally:
        for c in clients:
            await c.close()


async def test_an_id_is_free_again_once_its_record_is_gone(client: RRQClient, queue: str) -> None:
    job_id = f"reuse-{queue}"
    await client.enqueue(
        "echo", {"job_id": job_id, "queue_name": f"{queue}-a", "result_ttl_seconds": 0.05}
    )
    with pytest.raises(DuplicateJobError) as taken:
        await client.enqueue("echo", {"job_id": job_id, "queue_name": f"{queue}-b"})
    assert taken.value.queue_name == f"{queue}-a"
    assert await client.cancel(job_id)  # CANCELLED, kept for its 50 ms result TTL
    redis = client.store.redis

    async def expired() -> bool:
        return not await redis.exists(job_key(f"{queue}-a", job_id))

    await wait_until(expired, "the cancelled record's expiry")
    assert await client.enqueue("echo", {"job_id": job_id, "queue_name": f"{queue}-b"}) == job_id
    held = await redis.hget(DEFAULT_KEYS.ids, job_id)
    assert held == job_key(f"{queue}-b", job_id).encode()


async def test_status_of_a_chosen_id_is_found_through_the_registry(
    redis_dsn: str, client: RRQClient, queue: str
) -> None:
    await client.enqueue("echo", {"job_id": f"find-{queue}", "queue_name": f"{queue}-x"})
    async with RRQClient(config={"redis_dsn": redis_dsn}) as fresh:  # no cached queue
        status = await fresh.get_job_status(f"find-{queue}")
        assert status is not None
        assert status.queue_name == f"{queue}-x"


async def test_the_orchestrator_forgets_ids_whose_record_expired(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = f"forget-{queue}"
    await client.enqueue(
        "echo",
        {"job_id": job_id, "queue_name": queue, "result_ttl_seconds": 0.05},
    )
    redis = client.store.redis
    assert await redis.hexists(DEFAULT_KEYS.ids, job_id)
    result = await client.wait_for_result(job_id, timeout=30)
    assert result.status == JobStatus.COMPLETED

    async def forgotten() -> bool:
        return not await redis.hexists(DEFAULT_KEYS.ids, job_id)

    await wait_until(forgotten, "the registry entry's removal")
    assert not await redis.exists(job_key(queue, job_id))


async def test_generated_ids_are_not_registered(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue})
    assert not await client.store.redis.hexists(DEFAULT_KEYS.ids, job_id)
