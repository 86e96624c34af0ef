"""RRQClient.enqueue_many against a real Redis (no orchestrator)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from rrq import store as keys
from rrq.client import ENQUEUE_MANY_CHUNK, RRQClient
from rrq.exceptions import InvalidOptionError, InvalidParamsError, PayloadTooLargeError


@pytest.fixture
async def raw(redis_dsn: str) -> Any:
    connection = aioredis.Redis.from_url(redis_dsn)
    try:
        yield connection
    finally:
        await connection.aclose()


async def test_enqueue_many_writes_every_job_like_enqueue(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    count = ENQUEUE_MANY_CHUNK * 2 + 7  # three pipelines, the last one partial
    params = [{"n": i} for i in range(count)]

    ids = await client.enqueue_many("work", params, {"queue_name": queue, "max_retries": 1})

    assert len(ids) == count
    assert len(set(ids)) == count
    assert all(len(job_id) == 26 for job_id in ids)  # ULIDs
    assert await raw.zcard(keys.due_key(queue)) == count
    assert queue.encode() in await raw.smembers(keys.QUEUES_KEY)
    pipe = raw.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job_key(queue, job_id), "function_name", "params_json", "status")
    rows = await pipe.execute()
    for i, (function, params_json, status) in enumerate(rows):
        assert function == b"work"
        assert json.loads(params_json) == {"n": i}  # ids come back in params order
        assert status == b"1"  # JOB_STATUS_PENDING
    single = await client.enqueue("work", {"queue_name": queue, "max_retries": 1})
    single_fields = set(await raw.hkeys(keys.job_key(queue, single)))
    assert set(await raw.hkeys(keys.job_key(queue, ids[0]))) == single_fields
    status = await client.get_job_status(ids[-1])
    assert status is not None


async def test_enqueue_many_of_nothing_writes_nothing(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    assert await client.enqueue_many("work", [], {"queue_name": queue}) == []
    assert await raw.zcard(keys.due_key(queue)) == 0


@pytest.mark.parametrize(
    ("params_list", "options", "error"),
    [
        ([{"ok": 1}, {"bad": float("nan")}], {}, InvalidParamsError),
        ([{"ok": 1}, ["not", "a", "dict"]], {}, InvalidParamsError),
        ([{"ok": 1}, {"big": "x" * 2000}], {}, PayloadTooLargeError),
        ([{"ok": 1}], {"job_id": "fixed"}, InvalidOptionError),
        ([{"ok": 1}], {"params": {}}, InvalidOptionError),
        ([{"ok": 1}], {"max_retries": -1}, InvalidOptionError),
        ([{"ok": 1}], {"unique_ttl_seconds": 5}, InvalidOptionError),
        ({"not": "a list"}, {}, InvalidParamsError),
    ],
)
async def test_enqueue_many_validates_everything_before_writing(
    redis_dsn: str,
    raw: aioredis.Redis,
    queue: str,
    params_list: Any,
    options: dict[str, Any],
    error: type[Exception],
) -> None:
    async with RRQClient(config={"redis_dsn": redis_dsn, "max_payload_bytes": 1000}) as client:
        with pytest.raises(error):
            await client.enqueue_many("work", params_list, {"queue_name": queue, **options})
    assert await raw.zcard(keys.due_key(queue)) == 0


@pytest.mark.parametrize(
    ("bad_at", "bad", "error"),
    [
        (0, ["not", "a", "dict"], InvalidParamsError),
        (3, {"bad": float("nan")}, InvalidParamsError),
        (701, {"big": "x" * 2000}, PayloadTooLargeError),
    ],
)
async def test_enqueue_many_names_the_bad_entry(
    redis_dsn: str,
    raw: aioredis.Redis,
    queue: str,
    bad_at: int,
    bad: object,
    error: type[Exception],
) -> None:
    params_list: list[Any] = [{"n": n} for n in range(800)]
    params_list[bad_at] = bad
    async with RRQClient(config={"redis_dsn": redis_dsn, "max_payload_bytes": 1000}) as client:
        with pytest.raises(error, match=rf"^params_list\[{bad_at}\]: params "):
            await client.enqueue_many("work", params_list, {"queue_name": queue})
    assert await raw.zcard(keys.due_key(queue)) == 0


async def test_enqueue_many_reloads_a_flushed_script(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    await client.enqueue_many("work", [{}], {"queue_name": queue})
    await raw.script_flush()
    ids = await client.enqueue_many("work", [{}, {}], {"queue_name": queue})
    assert len(ids) == 2
    assert await raw.zcard(keys.due_key(queue)) == 3
