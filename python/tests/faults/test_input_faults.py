"""F15, F16, F17, F18: hostile or invalid input gets a typed error, never a crash or a loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from rrq.client import RRQClient
from rrq.exceptions import (
    DuplicateJobError,
    InvalidParamsError,
    PayloadTooLargeError,
)
from rrq.job import JobStatus
from rrq.store import EnqueueArgs, due_key, job_key, wake_channel
from rrq.testing import RedisServer

from .conftest import Harness
from .oracle import Producer, TerminalMonitor, assert_pass, check

LIMIT = 1_048_576  # max_payload_bytes, the default
QUEUE = "default"


async def wait_status(
    client: RRQClient, job_id: str, statuses: set[JobStatus], timeout: float
) -> Any:
    """Bounded poll of the job record (a terminal transition also publishes, but
    a test that subscribes late would miss it)."""
    deadline = time.monotonic() + timeout
    while True:
        status = await client.get_job_status(job_id)
        if status is not None and status.status in statuses:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} not in {statuses} within {timeout}s: {status}")
        await asyncio.sleep(0.02)


def raw_args(client: RRQClient, job_id: str, params_json: str) -> EnqueueArgs:
    """Valid enqueue arguments with ``params_json`` swapped in (bypasses client checks)."""
    args = client._build_args("", "work", {"job_id": job_id})
    return dataclasses.replace(args, params_json=params_json)


@pytest.mark.quick
async def test_f15_payload_limits(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    r = redis.Redis.from_url(fault_redis.dsn)
    before = r.dbsize()
    huge = {"blob": "x" * (10 * 1024 * 1024)}
    with pytest.raises(PayloadTooLargeError) as info:
        await fault_client.enqueue("work", {"params": huge, "job_id": "f15-huge"})
    assert info.value.limit == LIMIT
    assert info.value.size is not None
    assert "params" in str(info.value)
    # The script checks the limit too (a client that skipped its own check).
    with pytest.raises(PayloadTooLargeError):
        await fault_client.store.enqueue(
            raw_args(fault_client, "f15-huge-raw", json.dumps(huge)), register_queue=False
        )
    assert r.dbsize() == before, "a rejected enqueue wrote a key"
    assert await fault_client.get_job_status("f15-huge") is None

    harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=4), runners=1)
    # A params JSON of exactly the limit works end to end.
    shell = len(json.dumps({"sleep_ms": 0, "pad": ""}, separators=(",", ":")))
    at_limit = {"sleep_ms": 0, "pad": "x" * (LIMIT - shell)}
    assert len(json.dumps(at_limit, separators=(",", ":")).encode()) == LIMIT
    assert await producer.enqueue("f15-at-limit", {"params": at_limit}) == "ack_ok"
    # A result over the limit fails the attempt; with no retries left it dead-letters.
    big_result = {"result_bytes": LIMIT + 1}
    assert await producer.enqueue("f15-big-result", {"params": big_result, "max_retries": 0}) == (
        "ack_ok"
    )
    done = await wait_status(fault_client, "f15-at-limit", {JobStatus.COMPLETED}, 20)
    assert done.result["attempt"] == 1
    failed = await wait_status(fault_client, "f15-big-result", {JobStatus.FAILED}, 20)
    print(f"F15 big result: {failed.last_error_type}: {failed.last_error[:120]}")
    assert failed.last_error_type == "ResultTooLarge", failed
    assert failed.attempt == 1
    record = await check("F15", fault_client, producer, harness.oracle, monitor)
    assert_pass(record, dup_budget=0)
    assert record["acked"] == 2


def _deep(depth: int) -> dict[str, Any]:
    inner: list[Any] = []
    outer = inner
    for _ in range(depth):
        nxt: list[Any] = []
        inner.append(nxt)
        inner = nxt
    return {"deep": outer}


HOSTILE_PARAMS: dict[str, Any] = {
    "invalid-json": {"x": object()},
    "nan": {"x": float("nan")},
    "infinity": {"x": float("inf")},
    "top-level-scalar": 5,
    "top-level-list": [1, 2],
    "json-text": '{"x": 1}',
    "depth-10000": _deep(10_000),
    "lone-surrogate": {"x": "\ud800"},
}


@pytest.mark.quick
async def test_f16_hostile_params_rejected_by_client(
    fault_client: RRQClient, fault_redis: RedisServer
) -> None:
    r = redis.Redis.from_url(fault_redis.dsn)
    before = r.dbsize()
    for name, params in HOSTILE_PARAMS.items():
        with pytest.raises(InvalidParamsError) as info:
            await fault_client.enqueue("work", {"params": params, "job_id": f"f16-{name}"})
        print(f"F16 client {name}: {info.value}")
        assert "params" in str(info.value), f"{name}: the error does not name the field"
    # The script is the second line of defence: raw params_json that is not an object.
    for name, text in {
        "invalid-json": '{"x":',
        "scalar": "5",
        "string": '"x"',
        "list": "[1,2]",
        "empty": "",
        "nan": '{"x":NaN}',
        "infinity": '{"x":[1,{"y":-Infinity}]}',
    }.items():
        with pytest.raises(InvalidParamsError) as info:
            await fault_client.store.enqueue(
                raw_args(fault_client, f"f16-raw-{name}", text), register_queue=False
            )
        print(f"F16 script {name}: {info.value}")
    # Reported, not asserted: JSON the script may accept (duplicate keys are
    # valid JSON, and every decoder keeps the last value).
    for name, text in {
        "depth-10000": '{"a":' * 10_000 + "1" + "}" * 10_000,
        "duplicate-keys": '{"a":1,"a":2}',
    }.items():
        try:
            await fault_client.store.enqueue(
                raw_args(fault_client, f"f16-raw-{name}", text), register_queue=False
            )
        except InvalidParamsError as exc:
            print(f"F16 script {name}: {exc}")
        else:
            print(f"F16 script {name}: ACCEPTED by enqueue.lua")
            r.delete(job_key(QUEUE, f"f16-raw-{name}"))
            r.zrem(due_key(QUEUE), f"f16-raw-{name}")
    assert r.dbsize() == before, "a rejected enqueue wrote a key"


PLANTED = {
    "f16-planted-list": "[1,2,3]",
    "f16-planted-scalar": "42",
    "f16-planted-string": '"hello"',
    "f16-planted-invalid": '{"sleep_ms": ',
    "f16-planted-nan": '{"x": NaN}',
    "f16-planted-deep": "[" * 10_000 + "]" * 10_000,
}


@pytest.mark.quick
async def test_f16_planted_job_is_dead_lettered(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=4), runners=1)
    assert orch.process is not None
    pid = orch.process.pid
    r = redis.Redis.from_url(fault_redis.dsn)
    # A normal job first, so the queue is registered and served.
    assert await producer.enqueue("f16-ok", {"params": {"sleep_ms": 0}}) == "ack_ok"
    await wait_status(fault_client, "f16-ok", {JobStatus.COMPLETED}, 20)
    now_s, now_us = r.time()
    now_ms = now_s * 1000 + now_us // 1000
    planted_at = time.monotonic()
    for job, params_json in PLANTED.items():
        # The record as docs/redis-schema.md lists it (the fields enqueue.lua writes).
        r.hset(
            job_key(QUEUE, job),
            mapping={
                "id": job,
                "function_name": "work",
                "queue_name": QUEUE,
                "params_json": params_json,
                "status": 1,  # PENDING
                "attempt": 0,
                "max_retries": 3,
                "enqueued_at_ms": now_ms,
                "run_at_ms": now_ms,
            },
        )
        r.zadd(due_key(QUEUE), {job: now_ms})
    r.publish(wake_channel(QUEUE), now_ms)
    for job in PLANTED:
        status = await wait_status(fault_client, job, {JobStatus.FAILED}, 5)
        print(f"F16 planted {job}: {status.last_error_type}: {status.last_error[:100]}")
        assert status.attempt == 1, f"{job} retried: {status}"
        assert "params" in status.last_error_type.lower() or "params" in status.last_error
        assert r.zscore(f"rrq:{{{QUEUE}}}:dlq", job) is not None, f"{job} not in the DLQ"
    took = time.monotonic() - planted_at
    print(f"F16 planted jobs dead-lettered within {took:.3f}s")
    assert took <= 0.5 + 1.0, "planted jobs not dead-lettered within one sweep (+1 s)"
    assert orch.process.poll() is None
    assert orch.process.pid == pid
    log = orch.log.text() if orch.log else ""
    assert "panicked" not in log
    record = await check(
        "F16", fault_client, producer, harness.oracle, monitor, extra_jobs=list(PLANTED)
    )
    assert_pass(record, dup_budget=0)


@pytest.mark.quick
async def test_f17_unknown_function_dead_letters(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=4), runners=1)
    enqueued = time.monotonic()
    assert await producer.enqueue("f17-unknown", {"max_retries": 5}, fn="no_such_fn") == "ack_ok"
    assert await producer.enqueue("f17-ok", {"params": {"sleep_ms": 0}}) == "ack_ok"
    status = await wait_status(fault_client, "f17-unknown", {JobStatus.FAILED}, 5)
    took = time.monotonic() - enqueued
    print(f"F17 dead-lettered after {took:.3f}s: {status.last_error}")
    assert took <= 1.0, f"unknown function dead-lettered after {took:.2f}s"
    assert status.attempt == 1
    assert "no_such_fn" in status.last_error
    await wait_status(fault_client, "f17-ok", {JobStatus.COMPLETED}, 10)
    await asyncio.sleep(1)  # a window in which a retry loop would show up in the log
    log = orch.log.text() if orch.log else ""
    mentions = [line for line in log.splitlines() if "f17-unknown" in line and "WARN" in line]
    assert len(mentions) == 1, mentions
    status = await fault_client.get_job_status("f17-unknown")
    assert status is not None
    assert status.attempt == 1
    record = await check("F17", fault_client, producer, harness.oracle, monitor)
    assert_pass(record, dup_budget=0)


async def _race(dsn: str, log: Any, job: str, phase: str, hold: Path, n: int = 100) -> list[object]:
    """``n`` producers on their own connections enqueue ``job`` at once; its
    attempt runs until the file ``hold`` exists."""
    clients = [RRQClient(config={"redis_dsn": dsn}) for _ in range(n)]
    try:
        # Connect first, so the enqueues race rather than the connects.
        await asyncio.gather(*(c.store.redis.ping() for c in clients))
        gate = asyncio.Event()

        async def one(i: int, client: RRQClient) -> object:
            who: object = "A" if i % 2 else i
            params = {"sleep_ms": 1, "hold_until_file": str(hold), "who": who}
            await gate.wait()
            try:
                await client.enqueue("work", {"params": params, "job_id": job})
            except DuplicateJobError as exc:
                verdict: object = exc
            except Exception as exc:
                verdict = exc
            else:
                verdict = params
            tag = "ack_ok" if isinstance(verdict, dict) else "ack_dup"
            with log.open("a") as out:
                out.write(f"{job} {tag} {time.time():.6f}\n")
            return verdict

        tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(clients)]
        await asyncio.sleep(0)
        gate.set()
        return list(await asyncio.gather(*tasks))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_f18_duplicate_job_id(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    r = redis.Redis.from_url(fault_redis.dsn)
    job = "f18-same"

    def stored() -> dict[str, Any]:
        raw = r.hget(job_key(QUEUE, job), "params_json")
        assert raw is not None
        return json.loads(raw)  # type: ignore[no-any-return]

    # Pending: no orchestrator yet.
    hold = harness.dir / "f18-release"  # the job's attempt runs until this exists
    verdicts = await _race(fault_redis.dsn, producer.log, job, "pending", hold)
    winners = [v for v in verdicts if isinstance(v, dict)]
    losers = [v for v in verdicts if isinstance(v, DuplicateJobError)]
    assert len(winners) == 1, verdicts
    assert len(losers) == 99, [v for v in verdicts if not isinstance(v, dict | DuplicateJobError)]
    assert all(e.status == JobStatus.PENDING for e in losers)
    assert stored() == winners[0], "stored params are not the winner's"
    winner = winners[0]

    harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=4), runners=1)
    await asyncio.to_thread(harness.oracle.wait_running, 1, None, 20)
    for phase, status in (("running", JobStatus.ACTIVE), ("finished", JobStatus.COMPLETED)):
        if phase == "finished":
            hold.touch()
            await wait_status(fault_client, job, {JobStatus.COMPLETED}, 20)
        verdicts = await _race(fault_redis.dsn, producer.log, job, phase, hold)
        odd = [v for v in verdicts if not isinstance(v, DuplicateJobError)]
        assert not odd, f"{phase}: {odd[:3]}"
        seen = {e.status for e in verdicts if isinstance(e, DuplicateJobError)}
        print(f"F18 {phase}: 100 losers, status {seen}")
        assert seen == {status}, f"{phase}: {seen}"
        assert stored() == winner, f"{phase}: stored params changed"

    starts = [e for e in harness.oracle.events() if e.kind == "start" and e.job == job]
    assert len(starts) == 1, starts
    record = await check("F18", fault_client, producer, harness.oracle, monitor)
    assert_pass(record, dup_budget=0)
    assert record["acked"] == 1
