"""enqueue_with_unique_key: one job per key within the TTL, even under concurrency."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from conftest import python_env
from helpers import nothing_written, wait_until
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def job_keys(client: RRQClient, queue: str) -> list[bytes]:
    return [k async for k in client.store.redis.scan_iter(match=keys.job_key(queue, "*"))]


async def test_second_call_returns_the_first_id_and_writes_nothing(
    client: RRQClient, queue: str
) -> None:
    first = await client.enqueue_with_unique_key(
        "echo", "order-1", {"queue_name": queue, "params": {"n": 1}}
    )
    async with nothing_written(client.store.redis):
        second = await client.enqueue_with_unique_key(
            "echo", "order-1", {"queue_name": queue, "params": {"n": 2}}
        )
    assert second == first
    assert len(await job_keys(client, queue)) == 1
    status = await client.get_job_status(first)
    assert status is not None
    assert status.unique_key == "order-1"
    assert status.status is JobStatus.PENDING
    assert json.loads(
        await client.store.redis.hget(keys.job_key(queue, first), "params_json") or b""
    ) == {"n": 1}


async def test_default_ttl_is_six_hours_and_option_overrides_it(
    client: RRQClient, queue: str
) -> None:
    await client.enqueue_with_unique_key("f", "a", {"queue_name": queue})
    ttl = await client.store.redis.pttl(keys.unique_key(queue, "a"))
    assert 6 * 3600_000 - 60_000 < ttl <= 6 * 3600_000
    await client.enqueue_with_unique_key("f", "b", {"queue_name": queue, "unique_ttl_seconds": 90})
    ttl = await client.store.redis.pttl(keys.unique_key(queue, "b"))
    assert 80_000 < ttl <= 90_000


async def test_key_is_free_again_after_its_ttl(client: RRQClient, queue: str) -> None:
    options = {"queue_name": queue, "unique_ttl_seconds": 0.2}
    first = await client.enqueue_with_unique_key("f", "k", options)

    async def expired() -> bool:
        return not await client.store.redis.exists(keys.unique_key(queue, "k"))

    await wait_until(expired, "the unique key's expiry")
    second = await client.enqueue_with_unique_key("f", "k", options)
    assert second != first


async def test_keys_are_per_queue(client: RRQClient, queue: str) -> None:
    a = await client.enqueue_with_unique_key("f", "k", {"queue_name": queue})
    b = await client.enqueue_with_unique_key("f", "k", {"queue_name": queue + "-other"})
    assert a != b


async def test_returns_the_first_id_even_after_the_job_finished(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    first = await client.enqueue_with_unique_key(
        "echo", "done-1", {"queue_name": queue, "params": {"n": 1}}
    )
    result = await client.wait_for_result(first, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    again = await client.enqueue_with_unique_key(
        "echo", "done-1", {"queue_name": queue, "params": {"n": 2}}
    )
    assert again == first
    after = await client.get_job_status(first)
    assert after is not None
    assert after.status is JobStatus.COMPLETED
    assert after.attempt == 1
    assert after.result["params"] == {"n": 1}
    assert len(await job_keys(client, queue)) == 1


async def test_returns_the_first_id_after_its_record_expired(client: RRQClient, queue: str) -> None:
    first = await client.enqueue_with_unique_key("f", "gone", {"queue_name": queue})
    await client.store.redis.delete(keys.job_key(queue, first))  # as if its result expired
    assert await client.enqueue_with_unique_key("f", "gone", {"queue_name": queue}) == first
    assert await job_keys(client, queue) == []


async def test_many_concurrent_tasks_on_separate_connections_make_one_job(
    redis_dsn: str, queue: str
) -> None:
    clients = [RRQClient(config={"redis_dsn": redis_dsn}) for _ in range(30)]
    try:
        ids = await asyncio.gather(
            *(
                c.enqueue_with_unique_key("f", "race", {"queue_name": queue, "params": {"i": i}})
                for i, c in enumerate(clients)
            )
        )
        assert len(set(ids)) == 1
        assert len(await job_keys(clients[0], queue)) == 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))


PRODUCER = """
import asyncio, sys
from rrq.client import RRQClient

async def main(dsn, queue, tasks):
    clients = [RRQClient(config={"redis_dsn": dsn}) for _ in range(tasks)]
    # Every task waits for the others of this process to be connected first.
    await asyncio.gather(*(c.store.redis.ping() for c in clients))
    ids = await asyncio.gather(*(
        c.enqueue_with_unique_key("f", "race", {"queue_name": queue}) for c in clients
    ))
    print(" ".join(ids))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_concurrent_processes_make_exactly_one_job(
    client: RRQClient, redis_dsn: str, queue: str, tmp_path: Path
) -> None:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER, encoding="utf-8")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            redis_dsn,
            queue,
            "20",
            stdout=asyncio.subprocess.PIPE,
            env=python_env(),
        )
        for _ in range(5)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0] * 5
    ids = {job_id for out, _ in outputs for job_id in out.decode().split()}
    assert len(ids) == 1
    assert [k.decode() for k in await job_keys(client, queue)] == [keys.job_key(queue, ids.pop())]
