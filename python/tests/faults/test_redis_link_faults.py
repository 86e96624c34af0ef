"""F9, F11: faults between a component and Redis (script cache flushed, replies lost)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
import redis

from rrq.client import RRQClient
from rrq.testing import RedisServer

from .conftest import Harness
from .oracle import Producer, TerminalMonitor, assert_pass, check
from .proxy import FaultProxy


async def test_f9_script_flush_under_load(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=2, max_in_flight=4))
    r = redis.Redis.from_url(fault_redis.dsn)
    rng = random.Random(9)
    stop = asyncio.Event()
    flushes = 0

    async def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            await asyncio.sleep(2)  # the fault's schedule: SCRIPT FLUSH every 2 s
            await asyncio.to_thread(r.script_flush)
            flushes += 1

    flushing = asyncio.create_task(flusher())
    verdicts = []
    started = time.monotonic()
    for batch in range(12):  # about 9 s of enqueues, spread over the flushes
        for i in range(25):
            params = {"sleep_ms": rng.randint(20, 200), "fail_first": rng.random() < 0.1}
            options = {"params": params, "max_retries": 3}
            if rng.random() < 0.1:
                options["defer_by_seconds"] = rng.uniform(0, 2)
            verdicts.append(await producer.enqueue(f"f9-{batch}-{i}", options))
        await asyncio.sleep(0.75)  # pacing: load arrives while the cache is flushed
    await asyncio.to_thread(harness.oracle.wait, lambda _: flushes >= 4, "4 flushes", 10)
    stop.set()
    await flushing
    record = await check("F9", fault_client, producer, harness.oracle, monitor)
    took = time.monotonic() - started
    errors = [v for v in verdicts if v != "ack_ok"]
    log = orch.log.text() if orch.log else ""
    error_lines = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    stats = r.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    print(
        f"F9 {flushes} flushes in {took:.1f}s; evalsha calls {evalsha.get('calls')} "
        f"NOSCRIPT-failed {evalsha.get('failed_calls')}; "
        f"script load {stats.get('cmdstat_script|load', {}).get('calls')}"
    )
    # At most one extra round trip (a NOSCRIPT reply) per script and client
    # (orchestrator, producer) after each flush.
    scripts = len(list((Path(__file__).parents[2] / "src" / "rrq" / "lua").glob("*.lua")))
    assert int(evalsha.get("failed_calls", 0)) <= (flushes + 1) * scripts * 2
    assert not errors, f"the producer saw {len(errors)} errors"
    assert not error_lines, error_lines[:5]
    assert_pass(record, dup_budget=0)
    assert record["acked"] == 300


@pytest.mark.quick
async def test_f11_reply_lost_after_enqueue(
    harness: Harness, fault_redis: RedisServer, tmp_path: Path, monitor: TerminalMonitor
) -> None:
    harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=8), runners=1)
    with FaultProxy("127.0.0.1", fault_redis.port) as proxy:
        dsn = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            RRQClient(config={"redis_dsn": dsn}) as client,
            RRQClient(config={"redis_dsn": fault_redis.dsn}) as direct,
        ):
            producer = Producer(client, tmp_path / "producer.log")
            armed = []
            for i in range(40):
                job = f"f11-{i:02d}"
                if i % 2 == 0:
                    # Reset the connection once this job's enqueue request passed.
                    proxy.reset_after_request(marker=f"f11-{i:02d}".encode(), count=1)
                    armed.append(job)
                verdict = await producer.enqueue_retrying(job, {"params": {"sleep_ms": 10}})
                assert verdict in {"ack_ok", "ack_dup"}, (job, verdict)
                assert proxy.armed == 0, f"{job}: the reset did not fire"
            resets = proxy.resets
            acks = producer.acks()
            committed = [j for j in armed if acks[j][-2:] == ["ack_unknown", "ack_dup"]]
            retried_new = [j for j in armed if acks[j][-2:] == ["ack_unknown", "ack_ok"]]
            print(
                f"F11 resets {resets}: committed before the reset {len(committed)}, "
                f"written by the retry {len(retried_new)}"
            )
            assert resets == 20
            assert len(committed) + len(retried_new) == 20, {j: acks[j] for j in armed}
            record = await check("F11", direct, producer, harness.oracle, monitor)
    assert_pass(record, dup_budget=0)
    assert record["recovered"] == len(committed)
    assert record["acked"] + record["recovered"] == 40
    starts = [e for e in harness.oracle.events() if e.kind == "start"]
    per_job = {j: sum(1 for e in starts if e.job == j) for j in acks}
    assert all(n == 1 for n in per_job.values()), per_job
