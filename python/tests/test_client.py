"""The producer client against a real Redis (no orchestrator)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import nothing_written, wait_for_subscriber
from rrq import store as keys
from rrq.client import RRQClient, ulid
from rrq.exceptions import (
    DuplicateJobError,
    InvalidOptionError,
    InvalidParamsError,
    JobNotFoundError,
    PayloadTooLargeError,
)
from rrq.job import JobResult, JobStatus


@pytest.fixture
async def raw(redis_dsn: str) -> Any:
    connection = aioredis.Redis.from_url(redis_dsn)
    try:
        yield connection
    finally:
        await connection.aclose()


async def job_hash(raw: aioredis.Redis, queue: str, job_id: str) -> dict[str, str]:
    fields: dict[bytes, bytes] = await raw.hgetall(keys.job_key(queue, job_id))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in fields.items()}


async def test_enqueue_writes_the_record_per_the_schema(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    job_id = await client.enqueue(
        "send_email", {"params": {"to": "a@b.c", "n": 1}, "queue_name": queue}
    )

    assert len(job_id) == 26  # a ULID
    record = await job_hash(raw, queue, job_id)
    assert "id" not in record  # the id and the queue are in the key
    assert "queue_name" not in record
    assert record["function_name"] == "send_email"
    assert json.loads(record["params_json"]) == {"to": "a@b.c", "n": 1}
    assert record["status"] == "1"  # JOB_STATUS_PENDING
    assert "attempt" not in record  # 0 is not stored
    assert record["max_retries"] == "3"  # default_max_retries
    assert "job_timeout_ms" not in record  # orchestrator default applies
    assert "result_ttl_ms" not in record
    assert "run_at_ms" not in record  # due at once: run_at is enqueued_at
    assert await raw.zscore(keys.due_key(queue), job_id) == float(record["enqueued_at_ms"])
    status = await client.get_job_status(job_id)
    assert status is not None
    assert status.attempt == 0
    assert status.run_at == status.enqueued_at
    assert await raw.sismember(keys.QUEUES_KEY, queue)


async def test_enqueue_options_are_stored_in_ms(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    job_id = await client.enqueue(
        "f",
        {
            "queue_name": queue,
            "job_id": "explicit-1",
            "max_retries": 0,
            "job_timeout_seconds": 1.5,
            "result_ttl_seconds": 60,
        },
    )
    assert job_id == "explicit-1"
    record = await job_hash(raw, queue, job_id)
    assert record["max_retries"] == "0"
    assert record["job_timeout_ms"] == "1500"
    assert record["result_ttl_ms"] == "60000"
    assert record["params_json"] == "{}"


async def test_default_queue_comes_from_config(
    redis_dsn: str, raw: aioredis.Redis, queue: str
) -> None:
    async with RRQClient(
        config={"rrq": {"redis_dsn": redis_dsn, "default_queue_name": queue}}
    ) as c:
        job_id = await c.enqueue("f")
    assert await raw.exists(keys.job_key(queue, job_id))


@pytest.mark.parametrize(
    ("function_name", "options", "error", "mentions"),
    [
        ("f", {"params": {}, "retries": 3}, InvalidOptionError, "retries"),
        ("f", {"paramz": {}}, InvalidOptionError, "paramz"),
        ("", {}, InvalidOptionError, "function_name"),
        (42, {}, InvalidOptionError, "function_name"),
        ("f", {"params": {"s": {1, 2}}}, InvalidParamsError, "set"),
        ("f", {"params": {"x": math.nan}}, InvalidParamsError, "nan"),
        ("f", {"params": {"x": math.inf}}, InvalidParamsError, "inf"),
        ("f", {"params": [1, 2]}, InvalidParamsError, "dict"),
        ("f", {"params": "text"}, InvalidParamsError, "dict"),
        ("f", {"max_retries": -1}, InvalidOptionError, "max_retries"),
        ("f", {"max_retries": 1.5}, InvalidOptionError, "max_retries"),
        ("f", {"max_retries": True}, InvalidOptionError, "max_retries"),
        ("f", {"job_timeout_seconds": -1}, InvalidOptionError, "job_timeout_seconds"),
        ("f", {"job_timeout_seconds": math.nan}, InvalidOptionError, "job_timeout_seconds"),
        ("f", {"job_timeout_seconds": 0}, InvalidOptionError, "job_timeout_seconds"),
        ("f", {"result_ttl_seconds": math.inf}, InvalidOptionError, "result_ttl_seconds"),
        ("f", {"defer_by_seconds": -0.5}, InvalidOptionError, "defer_by_seconds"),
        ("f", {"defer_by_seconds": "5"}, InvalidOptionError, "defer_by_seconds"),
        ("f", {"defer_until": "tomorrow"}, InvalidOptionError, "defer_until"),
        ("f", {"queue_name": ""}, InvalidOptionError, "queue_name"),
        ("f", {"queue_name": "a{b}"}, InvalidOptionError, "queue_name"),
        ("f", {"job_id": ""}, InvalidOptionError, "job_id"),
    ],
)
async def test_invalid_enqueue_raises_and_writes_nothing(
    client: RRQClient,
    raw: aioredis.Redis,
    function_name: Any,
    options: dict[str, Any],
    error: type[Exception],
    mentions: str,
) -> None:
    async with nothing_written(raw):
        with pytest.raises(error) as caught:
            await client.enqueue(function_name, options)
    assert mentions.lower() in str(caught.value).lower()


async def test_oversized_params_raise_with_sizes(
    redis_dsn: str, raw: aioredis.Redis, queue: str
) -> None:
    async with RRQClient(config={"redis_dsn": redis_dsn, "max_payload_bytes": 100}) as c:
        async with nothing_written(raw):
            with pytest.raises(PayloadTooLargeError) as caught:
                await c.enqueue("f", {"queue_name": queue, "params": {"blob": "x" * 200}})
        assert caught.value.limit == 100
        assert caught.value.size is not None
        assert caught.value.size > 200
        assert "100" in str(caught.value)
        # At the limit it is accepted.
        await c.enqueue("f", {"queue_name": queue, "params": {"blob": "x" * 50}})


async def test_duplicate_job_id_in_same_queue(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    await client.enqueue("f", {"queue_name": queue, "job_id": "dup-1"})
    with pytest.raises(DuplicateJobError) as caught:
        await client.enqueue("g", {"queue_name": queue, "job_id": "dup-1"})
    assert caught.value.job_id == "dup-1"
    assert caught.value.status is JobStatus.PENDING
    assert (await job_hash(raw, queue, "dup-1"))["function_name"] == "f"
    assert await raw.zcard(keys.due_key(queue)) == 1


async def test_duplicate_job_id_across_queues(
    redis_dsn: str, raw: aioredis.Redis, queue: str
) -> None:
    job_id = f"dup-{uuid.uuid4().hex}"
    async with RRQClient(config={"redis_dsn": redis_dsn}) as first:
        await first.enqueue("f", {"queue_name": queue, "job_id": job_id})
    other = queue + "-other"
    async with RRQClient(config={"redis_dsn": redis_dsn}) as second:
        with pytest.raises(DuplicateJobError) as caught:
            await second.enqueue("f", {"queue_name": other, "job_id": job_id})
    assert caught.value.queue_name == queue
    assert caught.value.status is JobStatus.PENDING
    found = [key async for key in raw.scan_iter(match=f"rrq:*:job:{job_id}")]
    assert found == [keys.job_key(queue, job_id).encode()]


async def test_defer_by_seconds_scores_relative_to_redis_time(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue, "defer_by_seconds": 5})
    record = await job_hash(raw, queue, job_id)
    assert int(record["run_at_ms"]) - int(record["enqueued_at_ms"]) == 5000
    assert await raw.zscore(keys.due_key(queue), job_id) == float(record["run_at_ms"])


async def test_defer_until_scores_the_absolute_time(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    job_id = await client.enqueue("f", {"queue_name": queue, "defer_until": when})
    expected = int(when.timestamp() * 1000)
    assert await raw.zscore(keys.due_key(queue), job_id) == float(expected)

    # A naive datetime is taken as UTC; an aware one in another zone is converted.
    naive = await client.enqueue(
        "f", {"queue_name": queue, "defer_until": when.replace(tzinfo=None)}
    )
    assert await raw.zscore(keys.due_key(queue), naive) == float(expected)
    other_zone = when.astimezone(timezone_plus_5())
    zoned = await client.enqueue("f", {"queue_name": queue, "defer_until": other_zone})
    assert await raw.zscore(keys.due_key(queue), zoned) == float(expected)

    # A time in the past means "now".
    past = await client.enqueue(
        "f", {"queue_name": queue, "defer_until": datetime(2024, 1, 1, tzinfo=UTC)}
    )
    record = await job_hash(raw, queue, past)
    assert "run_at_ms" not in record  # due at once: run_at is enqueued_at


def timezone_plus_5() -> Any:
    from datetime import timezone  # noqa: PLC0415

    return timezone(timedelta(hours=5))


async def test_both_defer_options_are_rejected(client: RRQClient) -> None:
    with pytest.raises(InvalidOptionError, match="defer"):
        await client.enqueue("f", {"defer_by_seconds": 1, "defer_until": datetime.now(UTC)})


async def test_get_job_status(redis_dsn: str, client: RRQClient, queue: str) -> None:
    assert await client.get_job_status("no-such-job") is None
    job_id = await client.enqueue("f", {"queue_name": queue, "params": {"a": 1}})
    status = await client.get_job_status(job_id)
    assert isinstance(status, JobResult)
    assert status.status is JobStatus.PENDING
    assert status.function_name == "f"
    assert status.queue_name == queue
    assert status.attempt == 0
    assert status.result is None
    assert status.enqueued_at is not None
    assert status.enqueued_at.tzinfo is not None
    assert status.finished_at is None
    assert f"{status.status}" == "pending"
    assert "pending" in f"Status: {status}"
    # A client that did not enqueue it finds it through rrq:queues.
    async with RRQClient(config={"redis_dsn": redis_dsn}) as other:
        found = await other.get_job_status(job_id)
    assert found == status


async def settle_complete(client: RRQClient, queue: str, job_id: str, result: str) -> None:
    claimed = await client.store.claim(queue, owner="test-owner", lease_ms=30_000)
    assert [job[0].decode() for job in claimed[2:]] == [job_id]
    attempt = int(claimed[2][1])
    reply = await client.store.settle(
        queue, job_id, attempt=attempt, owner="test-owner", action="complete", payload=result
    )
    assert int(reply[0]) == 1


async def test_wait_for_result_wakes_on_settle(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue})
    waiter = asyncio.create_task(client.wait_for_result(job_id, timeout=10))
    await wait_for_subscriber(raw, keys.done_channel(queue, job_id))
    assert not waiter.done()

    await settle_complete(client, queue, job_id, '{"ok":true}')

    result = await waiter
    assert result.status is JobStatus.COMPLETED
    assert result.result == {"ok": True}
    assert result.attempt == 1
    assert result.finished_at is not None


async def test_wait_for_result_returns_at_once_when_terminal(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue})
    await settle_complete(client, queue, job_id, "[1,2]")
    result = await client.wait_for_result(job_id, timeout=5)
    assert result.result == [1, 2]


async def test_waits_reuse_their_connection_and_survive_its_loss(
    client: RRQClient, raw: aioredis.Redis, queue: str
) -> None:
    async def wait_once() -> tuple[JobResult, set[int]]:
        """One wait; the ids of the connections subscribed while it waited."""
        job_id = await client.enqueue("f", {"queue_name": queue})
        waiter = asyncio.create_task(client.wait_for_result(job_id, timeout=10))
        await wait_for_subscriber(raw, keys.done_channel(queue, job_id))
        subscribed = {int(c["id"]) for c in await raw.client_list(_type="pubsub")}
        await settle_complete(client, queue, job_id, "1")
        return await waiter, subscribed

    first, first_ids = await wait_once()
    second, second_ids = await wait_once()
    assert (first.result, second.result) == (1, 1)
    assert second_ids == first_ids  # the second wait reused the first one's connection
    # That connection dies (as when Redis restarts): the next wait opens another.
    for client_id in first_ids:
        await raw.client_kill_filter(_id=str(client_id))
    third, third_ids = await wait_once()
    assert third.result == 1
    assert not third_ids & first_ids


async def test_wait_for_result_times_out(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue})
    with pytest.raises(TimeoutError):
        await client.wait_for_result(job_id, timeout=0.2)


async def test_wait_for_result_unknown_job(client: RRQClient) -> None:
    with pytest.raises(JobNotFoundError):
        await client.wait_for_result("never-enqueued", timeout=5)


async def test_client_is_lazy_and_reusable_after_close(redis_dsn: str, queue: str) -> None:
    c = RRQClient(config={"redis_dsn": "redis://127.0.0.1:1/0"})  # nothing listens there
    await c.close()  # never connected: nothing to do
    c = RRQClient(config={"redis_dsn": redis_dsn})
    await c.enqueue("f", {"queue_name": queue})
    await c.close()
    await c.enqueue("f", {"queue_name": queue})  # reconnects
    await c.close()


def test_ulid_layout() -> None:
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    before = time.time_ns() // 1_000_000
    ids = [ulid() for _ in range(100)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 100
    assert all(len(text) == 26 and set(text) <= set(crockford) for text in ids)
    for text in ids:
        ms = 0
        for char in text[:10]:
            ms = ms * 32 + crockford.index(char)
        assert before <= ms <= after
