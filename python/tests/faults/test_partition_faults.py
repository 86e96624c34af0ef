"""F10, F12: network partitions, orchestrator↔Redis and runner↔orchestrator (proxy ``blackhole``).

The proxy holds bytes across a partition and delivers them in order when it
heals, as TCP does for a partition shorter than its retransmission timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest

from rrq.client import RRQClient
from rrq.testing import Orchestrator, RedisServer

from .backlog_tools import ExternalRunners
from .conftest import TIMINGS, Harness, free_port
from .oracle import Fault, Producer, TerminalMonitor, assert_pass, check
from .proxy import FaultProxy
from .test_process_faults import load

SELF_FENCE = "leases could not be renewed before they expired"


@pytest.fixture
def proxies(fault_redis: RedisServer) -> Iterator[list[FaultProxy]]:
    """Two proxies to the row's Redis, one per orchestrator."""
    with ExitStack() as stack:
        yield [stack.enter_context(FaultProxy("127.0.0.1", fault_redis.port)) for _ in range(2)]


def via(proxy: FaultProxy) -> str:
    return f"redis://127.0.0.1:{proxy.port}/0"


def alive(*orchestrators: Orchestrator) -> bool:
    return all(o.process is not None and o.process.poll() is None for o in orchestrators)


def log_of(orch: Orchestrator) -> str:
    return orch.log.text() if orch.log else ""


async def partition(proxies: list[FaultProxy], seconds: float) -> tuple[float, float]:
    """Blackholes ``proxies`` for ``seconds``; returns (start, heal) wall times."""
    cut = time.time()
    for p in proxies:
        p.set_mode("blackhole")
    await asyncio.sleep(seconds)  # the fault's duration, not a synchronization
    for p in proxies:
        p.set_mode("pass")
    return cut, time.time()


async def cut_one_orchestrator(
    harness: Harness,
    producer: Producer,
    proxies: list[FaultProxy],
    prefix: str,
    sleep_ms: tuple[int, int],
    seconds: float,
) -> tuple[Orchestrator, Orchestrator, list[str], set[tuple[str, int]], float]:
    """A (through proxies[0]) runs 4 jobs at a time, B joins directly, then A's
    Redis link is cut for ``seconds``. Returns A, B, the job ids, A's attempts
    at the cut and the heal time."""
    a = harness.orchestrator(
        harness.write_config(via(proxies[0]), pool_size=1, max_in_flight=4), runners=1
    )
    a_pids = harness.runner_pids(a)
    ids = await load(producer, prefix, 16, *sleep_ms)
    await asyncio.to_thread(harness.oracle.wait_running, 4, a_pids, 20)
    # B's lease recovery takes A's jobs once their leases lapse in Redis.
    b = harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=4), runners=1)
    cut, heal = await partition(proxies[:1], seconds)
    return a, b, ids, harness.oracle.in_flight_on(a_pids, cut), heal


async def test_f10a_partition_one_orchestrator(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    proxies: list[FaultProxy],
) -> None:
    """A is cut off for 10 s (lease 3 s): it self-fences, B reclaims, A's late writes are fenced."""
    a, b, ids, affected, heal = await cut_one_orchestrator(
        harness, producer, proxies, "f10a", (5000, 8000), 10
    )
    record = await check(
        "F10a",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(heal, len(affected), affected)],
        quiet_timeout=60,
    )
    assert alive(a, b), "an orchestrator exited during the partition"
    assert SELF_FENCE in log_of(a), "A never self-fenced"
    assert_pass(record, dup_budget=len(affected), concurrent_budget=len(affected))
    assert record["acked"] == len(ids)


async def test_f10b_partition_every_orchestrator(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    proxies: list[FaultProxy],
) -> None:
    """Both orchestrators are cut off for 10 s while the producer keeps enqueuing."""
    orchs = [
        harness.orchestrator(harness.write_config(via(p), pool_size=1, max_in_flight=4), runners=1)
        for p in proxies
    ]
    pids = [pid for o in orchs for pid in harness.runner_pids(o)]
    before = await load(producer, "f10b-before", 16, 1500, 2500)
    await asyncio.to_thread(harness.oracle.wait_running, 4, pids, 20)
    during = asyncio.create_task(load(producer, "f10b-during", 30, 20, 200, seed=2))
    cut, heal = await partition(proxies, 10)
    affected = harness.oracle.in_flight_on(pids, cut)
    await during
    record = await check(
        "F10b",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(heal, len(affected), affected)],
        quiet_timeout=60,
    )
    assert alive(*orchs), "an orchestrator exited during the partition"
    assert_pass(record, dup_budget=len(affected), concurrent_budget=len(affected))
    assert record["acked"] == len(before) + 30
    resumed = record["recovery_s"]["first_completion"]
    assert resumed is not None, "nothing completed after the heal"
    assert resumed <= 5.0, f"processing resumed {resumed}s after heal"


@pytest.mark.quick
async def test_f10c_partition_shorter_than_the_lease(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    proxies: list[FaultProxy],
) -> None:
    """A 2 s partition (< lease - renew interval) costs nothing: no reclaim, no re-run."""
    a, b, ids, _, heal = await cut_one_orchestrator(
        harness, producer, proxies, "f10c", (3000, 4000), 2
    )
    record = await check(
        "F10c",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(heal, 0)],
        quiet_timeout=60,
    )
    assert alive(a, b)
    assert SELF_FENCE not in log_of(a)
    assert "lease lost" not in log_of(a)
    assert_pass(record, dup_budget=0)
    assert record["acked"] == len(ids)


@pytest.fixture
def runner_link(harness: Harness) -> Iterator[tuple[ExternalRunners, FaultProxy]]:
    """Runners dialing the orchestrator's runner port, and a proxy in front of
    that port (both alive until the row ends)."""
    runners = ExternalRunners(harness.dir, free_port(), harness.oracle.path)
    try:
        with FaultProxy("127.0.0.1", runners.port) as proxy:
            yield runners, proxy
    finally:
        runners.kill()


def log_time(line: str) -> float:
    """Wall time of an orchestrator log line (it starts with an RFC 3339 UTC stamp)."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


async def cut_runner(
    harness: Harness,
    producer: Producer,
    runner_link: tuple[ExternalRunners, FaultProxy],
    prefix: str,
    seconds: float,
) -> tuple[Orchestrator, set[tuple[str, int]], float, list[float]]:
    """One orchestrator, two external runners, R1 dialing through a proxy that
    is blackholed for ``seconds`` while R1 runs jobs. Returns the orchestrator,
    R1's attempts at the cut, the heal time and when runners were declared lost."""
    runners, proxy = runner_link
    config = harness.write_config(
        max_in_flight=4, tcp_socket=f"127.0.0.1:{runners.port}", spawn=False
    )
    orch = harness.orchestrator(config, runners=None)
    [r1] = runners.start(1, addr=f"127.0.0.1:{proxy.port}", max_in_flight=4)
    orch.wait_for_runners(1)
    await load(producer, prefix, 16, 3000, 5000)
    await asyncio.to_thread(harness.oracle.wait_running, 4, [r1], 20)
    runners.start(1, max_in_flight=4)
    orch.wait_for_runners(2)
    cut = time.time()
    proxy.set_mode("blackhole")
    affected = harness.oracle.in_flight_on([r1], cut)
    await asyncio.sleep(seconds)  # the fault's duration, not a synchronization
    proxy.set_mode("pass")
    heal = time.time()
    lost = [
        log_time(line) - cut
        for line in log_of(orch).splitlines()
        if "runner disconnected" in line and log_time(line) >= cut
    ]
    return orch, affected, heal, lost


async def test_f12a_runner_partition_longer_than_heartbeat_timeout(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    runner_link: tuple[ExternalRunners, FaultProxy],
) -> None:
    """R1 is cut off for 10 s: declared lost on silence; jobs rerun, late results dropped."""
    orch, affected, heal, lost = await cut_runner(harness, producer, runner_link, "f12a", 10)
    record = await check(
        "F12a",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(heal, len(affected), affected)],
        quiet_timeout=60,
    )
    timeout = TIMINGS["runner_heartbeat_timeout_seconds"]
    assert lost, "the cut-off runner was never declared lost"
    print(f"F12a runner declared lost {lost[0]:.3f}s after the cut")
    assert lost[0] <= timeout + 1.0, f"declared lost {lost[0]:.2f}s after the cut"
    assert "no heartbeat" in log_of(orch)
    assert alive(orch)
    assert_pass(record, dup_budget=len(affected), concurrent_budget=len(affected))


@pytest.mark.quick
async def test_f12b_runner_partition_shorter_than_heartbeat_timeout(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    runner_link: tuple[ExternalRunners, FaultProxy],
) -> None:
    """A 1 s cut (heartbeat timeout 2 s) changes nothing."""
    orch, _, heal, lost = await cut_runner(harness, producer, runner_link, "f12b", 1)
    record = await check(
        "F12b", fault_client, producer, harness.oracle, monitor, faults=[Fault(heal, 0)]
    )
    assert not lost, f"a runner was declared lost {lost}s after a 1 s cut"
    assert alive(orch)
    assert_pass(record, dup_budget=0)
