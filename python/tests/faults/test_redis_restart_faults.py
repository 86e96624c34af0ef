"""F6, F7, F8: Redis crashes or restarts under load; F8's start-up refusal of an ephemeral Redis."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import pytest
import redis

from rrq.client import RRQClient
from rrq.testing import RedisServer

from .conftest import Harness, config_text
from .oracle import Fault, HandlerLog, Producer, TerminalMonitor, assert_pass, check
from .test_redis_config import run_orchestrator

READY = "rrq orchestrator ready"
DATA_LOSS = "CRITICAL: Redis lost its data"


class SteadyLoad:
    """Enqueues a short job every ``every`` seconds until stopped; connection
    errors while Redis is down are logged by the producer as ``ack_unknown``."""

    def __init__(self, producer: Producer, prefix: str, every: float = 0.02) -> None:
        self.producer = producer
        self.prefix = prefix
        self.every = every
        self.stop = asyncio.Event()
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self.stop.is_set():
            job = f"{self.prefix}-{self.sent}"
            self.sent += 1
            await self.producer.enqueue(job, {"params": {"sleep_ms": 100}, "max_retries": 5})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.every)  # the load's pacing

    def __enter__(self) -> SteadyLoad:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def first_completion_after(oracle: HandlerLog, t: float, timeout: float) -> float:
    """Seconds from ``t`` to the first handler end after it (waits for one)."""
    oracle.wait(
        lambda events: any(e.kind == "end" and e.t >= t for e in events),
        "a completion after the restart",
        timeout,
    )
    return min(e.t for e in oracle.events() if e.kind == "end" and e.t >= t) - t


async def restart_under_load(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    fault_redis: RedisServer,
    row: str,
    *,
    graceful: bool,
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=2, max_in_flight=4))
    pids = harness.runner_pids(orch)
    with SteadyLoad(producer, row.lower()) as load:
        await asyncio.to_thread(harness.oracle.wait_running, 4, pids, 20)
        crashed_at = time.time()
        if graceful:
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(fault_redis.dsn).shutdown()
            assert fault_redis.process is not None
            await asyncio.to_thread(fault_redis.process.wait, 20)
        else:
            fault_redis.stop()  # SIGKILL
        affected = harness.oracle.in_flight_on(pids, crashed_at)
        await asyncio.sleep(1)  # the fault: Redis stays down 1 s
        await asyncio.to_thread(fault_redis.start)
        ready_at = time.time()
        resumed = await asyncio.to_thread(first_completion_after, harness.oracle, ready_at, 15)
        await asyncio.sleep(2)  # keep the load on for a while after the restart
        await load.finish()
    record = await check(
        row,
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(ready_at, len(affected), affected)],
        quiet_timeout=40,
    )
    log = orch.log.text() if orch.log else ""
    print(f"{row}: {load.sent} enqueues, first completion {resumed:.3f}s after Redis was ready")
    assert orch.process is not None
    assert orch.process.poll() is None, "the orchestrator exited"
    assert log.count(READY) == 1, "the orchestrator restarted"
    assert resumed <= 5.0, f"processing resumed {resumed:.2f}s after Redis was ready"
    assert_pass(record, dup_budget=len(affected))
    assert record["acked"] > 0


@pytest.mark.parametrize(
    ("row", "graceful"), [("F6", False), ("F7", True)], ids=["f6-sigkill", "f7-shutdown"]
)
async def test_f6_f7_redis_restart_with_aof(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    fault_redis: RedisServer,
    row: str,
    graceful: bool,
) -> None:
    """F6: SIGKILL Redis under load; F7: SHUTDOWN it. Restarted on its AOF after 1 s."""
    await restart_under_load(
        harness, producer, fault_client, monitor, fault_redis, row, graceful=graceful
    )


async def test_f8_redis_restarted_empty_is_noticed(harness: Harness, tmp_path: Path) -> None:
    """Without persistence the data is gone; RRQ notices within 5 s and serves on."""
    with RedisServer(tmp_path / "ephemeral", tcp=True, aof=False) as ephemeral:
        config = harness.write_config(ephemeral.dsn, allow_ephemeral_redis=True)
        orch = harness.orchestrator(config)
        async with RRQClient(config={"redis_dsn": ephemeral.dsn}) as client:
            before = await client.enqueue("work", {"params": {"sleep_ms": 1}})
            assert await client.wait_for_result(before, timeout=10) is not None
            ephemeral.stop()  # SIGKILL: everything in it is gone
            await asyncio.to_thread(ephemeral.start)
            ready_at = time.monotonic()
            assert orch.log is not None
            await asyncio.to_thread(orch.log.wait_for, DATA_LOSS, 1, 10)
            detected = time.monotonic() - ready_at
            # The metric: the orchestrator's heartbeat record counts the loss.
            r = redis.Redis.from_url(ephemeral.dsn, decode_responses=True)
            losses = await asyncio.to_thread(wait_for_loss_count, r, 10)
            # The client's pooled connection died with Redis; the producer's
            # contract (F11) is to retry with the same job_id.
            producer = Producer(client, tmp_path / "producer.log")
            verdict = await producer.enqueue_retrying("f8-after", {"params": {"sleep_ms": 1}})
            assert verdict in {"ack_ok", "ack_dup"}, verdict
            result = await client.wait_for_result("f8-after", timeout=10)
        check_out = await asyncio.to_thread(
            subprocess.run,
            [harness.binary, "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    print(f"F8 data loss detected {detected:.3f}s after Redis was ready; losses={losses}")
    assert detected <= 5.0
    assert losses == 1
    assert result is not None, "a job enqueued after the loss did not complete"
    assert "REDIS_DATA_LOSSES=1" in check_out.stdout, check_out.stdout + check_out.stderr
    assert orch.process is not None
    assert orch.process.poll() is None
    assert (orch.log.text() if orch.log else "").count(READY) == 1, "crash loop"


def wait_for_loss_count(r: redis.Redis, timeout: float) -> int:
    """The ``redis_data_losses`` field of the (only) orchestrator heartbeat, once non-zero."""
    deadline = time.monotonic() + timeout
    while True:
        for key in r.scan_iter("rrq:orchestrator:*"):
            value = r.hget(key, "redis_data_losses")
            if value and int(value) > 0:
                return int(value)
        if time.monotonic() > deadline:
            raise TimeoutError("no heartbeat reported the data loss")
        time.sleep(0.1)  # bounded poll: the heartbeat is rewritten every 2 s


@pytest.mark.quick
def test_f8_ephemeral_redis_is_refused(harness: Harness, tmp_path: Path) -> None:
    with RedisServer(tmp_path / "none", tcp=True, aof=False) as ephemeral:
        refused = run_orchestrator(harness, harness.write_config(ephemeral.dsn))
        print(f"F8 refusal: exit {refused.returncode}: {refused.stderr.strip().splitlines()[-1]}")
        assert refused.returncode == 2
        assert "allow_ephemeral_redis" in refused.stderr
        assert "appendonly yes" in refused.stderr

        allowed = tmp_path / "allowed.toml"
        allowed.write_text(config_text(ephemeral.dsn, allow_ephemeral_redis=True), "utf-8")
        started = run_orchestrator(harness, allowed)
        assert started.returncode == 0, started.stderr
        assert "allow_ephemeral_redis = true" in started.stderr

    snapshots = ("--save", "3600 1")
    with RedisServer(tmp_path / "rdb", tcp=True, aof=False, extra_args=snapshots) as rdb:
        warned = run_orchestrator(harness, harness.write_config(rdb.dsn))
        assert warned.returncode == 0, warned.stderr
        assert "snapshots only" in warned.stderr
