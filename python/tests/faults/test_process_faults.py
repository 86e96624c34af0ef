"""F1, F3, F4, F5, F22: processes killed or stopped under load."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from rrq.client import RRQClient

from .conftest import Harness
from .oracle import Fault, Producer, TerminalMonitor, assert_pass, check


async def load(
    producer: Producer, prefix: str, n: int, lo: int, hi: int, seed: int = 1
) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        job = f"{prefix}-{i}"
        params = {"sleep_ms": rng.randint(lo, hi), "fail_first": rng.random() < 0.1}
        await producer.enqueue(job, {"params": params, "max_retries": 5})
        ids.append(job)
    return ids


def restarts_within(harness: Harness, affected: set[tuple[str, int]], since: float) -> float:
    """Longest delay from ``since`` to the next start of each affected job."""
    worst = 0.0
    events = harness.oracle.events()
    for job, attempt in affected:
        later = [e.t for e in events if e.kind == "start" and e.job == job and e.attempt > attempt]
        assert later, f"{job} never restarted"
        worst = max(worst, min(later) - since)
    return worst


def wait_restarted(harness: Harness, affected: set[tuple[str, int]], timeout: float) -> None:
    def done(events: list) -> bool:  # type: ignore[type-arg]
        restarted = {
            (e.job)
            for e in events
            if e.kind == "start" and any(e.job == j and e.attempt > a for j, a in affected)
        }
        return len(restarted) == len({j for j, _ in affected})

    harness.oracle.wait(done, "restart of the affected jobs", timeout)


def wait_dead(pids: list[int], timeout: float) -> dict[int, float]:
    """When each process was last seen alive (bounded poll of /proc: exits of
    non-children publish no event)."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(pids):
        for pid in pids:
            if pid in seen:
                continue
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in {"Z", "X", "gone"}:
                seen[pid] = time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"runner processes {pids} still alive after {timeout}s")
        time.sleep(0.01)
    return seen


async def reclaimed_within(
    client: RRQClient, affected: set[tuple[str, int]], since: float, timeout: float
) -> float:
    """Seconds from ``since`` until every affected attempt's lease was taken back (bounded poll)."""
    pending = dict(affected)
    worst = 0.0
    deadline = time.monotonic() + timeout
    while pending:
        for job, attempt in list(pending.items()):
            s = await client.get_job_status(job)
            if s is None or str(s.status) != "active" or s.attempt > attempt:
                worst = max(worst, time.time() - since)
                del pending[job]
        if time.monotonic() > deadline:
            raise TimeoutError(f"leases of {sorted(pending)} not reclaimed within {timeout}s")
        await asyncio.sleep(0.05)  # a bounded poll: recovery publishes no per-job event
    return worst


@pytest.mark.quick
async def test_f1_kill_runner_mid_job(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=2, max_in_flight=4))
    ids = await load(producer, "f1", 40, 300, 900)
    pids = harness.runner_pids(orch)
    await asyncio.to_thread(
        harness.oracle.wait,
        lambda _: any(
            sum(1 for e in harness.oracle.running().values() if e.pid == p) >= 3 for p in pids
        ),
        ">= 3 jobs running on one runner",
        20,
    )
    live = harness.oracle.running()
    victim = max(pids, key=lambda p: sum(1 for e in live.values() if e.pid == p))
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    affected = harness.oracle.in_flight_on([victim], killed_at)
    assert len(affected) >= 3
    await asyncio.to_thread(wait_restarted, harness, affected, 10)
    delay = restarts_within(harness, affected, killed_at)
    record = await check(
        "F1",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(killed_at, len(affected), affected)],
        dead_pids={victim: killed_at},
    )
    record_delay = round(delay, 3)
    print(f"F1 restart delay {record_delay}s")
    assert_pass(record, dup_budget=len(affected))
    assert delay <= 3.0, (
        f"affected jobs restarted after {delay:.2f}s (bound: heartbeat timeout + 1 s)"
    )
    assert record["acked"] == len(ids)


async def test_f3_kill_one_of_two_orchestrators(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    config = harness.write_config(pool_size=1, max_in_flight=4)
    a = harness.orchestrator(config, runners=1)
    a_pids = harness.runner_pids(a)
    await load(producer, "f3", 24, 1000, 2000)
    await asyncio.to_thread(harness.oracle.wait_running, 3, a_pids, 20)
    b = harness.orchestrator(config, runners=1)
    assert b.process is not None
    assert a.process is not None
    killed_at = time.time()
    a.process.kill()
    a.process.wait()
    dead = await asyncio.to_thread(wait_dead, a_pids, 10)
    await asyncio.sleep(0.3)  # let A's runners log what they had been sent
    affected = harness.oracle.in_flight_on(a_pids, killed_at)
    delay = await reclaimed_within(fault_client, affected, killed_at, 15)
    record = await check(
        "F3",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(killed_at, len(affected), affected)],
        quiet_timeout=40,
        dead_pids=dead,
    )
    print(f"F3 reclaim delay {delay:.3f}s over {len(affected)} jobs")
    assert_pass(record, dup_budget=len(affected))
    assert delay <= 9.0, f"B reclaimed A's jobs after {delay:.2f}s (R = 4.5 s, 2x slack)"


async def test_f5_zombie_orchestrator(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    """A is paused (SIGSTOP) for 2 leases while its runners keep working: B
    reclaims, and A on waking self-fences; none of its late settles lands."""
    config = harness.write_config(pool_size=1, max_in_flight=4)
    a = harness.orchestrator(config, runners=1)
    a_pids = harness.runner_pids(a)
    await load(producer, "f5", 16, 4000, 6000)
    await asyncio.to_thread(harness.oracle.wait_running, 4, a_pids, 20)
    b = harness.orchestrator(config, runners=1)
    assert a.process is not None
    assert b.process is not None
    stopped_at = time.time()
    a.signal(signal.SIGSTOP)
    affected = harness.oracle.in_flight_on(a_pids, stopped_at)
    await asyncio.sleep(2 * 3)  # the fault: paused for 2 leases (lease 3 s)
    a.signal(signal.SIGCONT)
    woke_at = time.time()
    record = await check(
        "F5",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(woke_at, len(affected), affected)],
        quiet_timeout=40,
    )
    # Every affected job ended under an attempt other than A's: A's writes lost.
    late = []
    for job, attempt in affected:
        status = await fault_client.get_job_status(job)
        assert status is not None
        if status.attempt <= attempt:
            late.append(job)
    overlaps = concurrent_spans(harness, affected)
    print(f"F5 affected {len(affected)}; A's settles that landed {len(late)}; overlaps {overlaps}")
    assert a.process.poll() is None, "A exited after the pause"
    assert not late, f"A settled {late} after its leases were taken"
    assert_pass(record, dup_budget=len(affected), concurrent_budget=len(affected))
    # Overlap only inside the pause: A's executions end when it wakes.
    for _, end in overlaps:
        assert end <= woke_at + 2.0, f"A's attempt ran until {end - woke_at:.2f}s after waking"


def concurrent_spans(harness: Harness, affected: set[tuple[str, int]]) -> list[tuple[str, float]]:
    """Affected attempts still running when a later attempt of the job started:
    (job, end of the old attempt)."""
    events = harness.oracle.events()
    out = []
    for job, attempt in affected:
        ends = [e.t for e in events if e.kind == "end" and e.job == job and e.attempt == attempt]
        later = [e.t for e in events if e.kind == "start" and e.job == job and e.attempt > attempt]
        if ends and later and min(later) < min(ends):
            out.append((job, min(ends)))
    return out


async def test_f4_kill_only_orchestrator_and_restart(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    config = harness.write_config(pool_size=2, max_in_flight=4)
    a = harness.orchestrator(config)
    a_pids = harness.runner_pids(a)
    await load(producer, "f4a", 30, 500, 1500)
    await asyncio.to_thread(harness.oracle.wait_running, 3, None, 20)
    assert a.process is not None
    killed_at = time.time()
    a.process.kill()
    a.process.wait()
    dead = await asyncio.to_thread(wait_dead, a_pids, 10)
    # The producer keeps enqueuing while no orchestrator runs (2 s of downtime).
    more = asyncio.create_task(load(producer, "f4b", 40, 20, 200, seed=2))
    await asyncio.sleep(2)  # the fault's duration, not a synchronization
    started = time.monotonic()
    harness.orchestrator(config, runners=None)
    ready_s = time.monotonic() - started
    affected = harness.oracle.in_flight_on(a_pids, killed_at)
    await more
    record = await check(
        "F4",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(killed_at + 2, len(affected), affected)],
        quiet_timeout=40,
        dead_pids=dead,
    )
    print(f"F4 ready after {ready_s:.3f}s")
    assert_pass(record, dup_budget=len(affected))
    assert ready_s <= 2.0


@pytest.mark.parametrize("kill_after_term", [False, True], ids=["drain", "kill-1s-after-term"])
async def test_f22_sigterm_drains(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    kill_after_term: bool,
) -> None:
    config = harness.write_config(pool_size=2, max_in_flight=4)
    a = harness.orchestrator(config)
    a_pids = harness.runner_pids(a)
    short = [f"f22s-{i}" for i in range(4)]
    long = [f"f22l-{i}" for i in range(4)]
    for job in short:
        await producer.enqueue(job, {"params": {"sleep_ms": 1000}, "max_retries": 3})
    for job in long:
        await producer.enqueue(job, {"params": {"sleep_ms": 8000}, "max_retries": 3})
    await asyncio.to_thread(harness.oracle.wait_running, 8, None, 20)
    assert a.process is not None
    termed = time.monotonic()
    termed_at = time.time()
    a.signal(signal.SIGTERM)
    if kill_after_term:
        await asyncio.sleep(1)  # the fault: SIGKILL 1 s into the drain
        a.process.kill()
    code = await asyncio.to_thread(a.wait, 10)
    exit_s = time.monotonic() - termed
    dead = await asyncio.to_thread(wait_dead, a_pids, 10)
    affected = harness.oracle.in_flight_on(a_pids, termed_at)
    harness.orchestrator(config, runners=None)  # B runs whatever A gave back
    record = await check(
        "F22" + ("-kill" if kill_after_term else ""),
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(termed_at, len(affected), affected)],
        quiet_timeout=40,
        dead_pids=dead,
    )
    assert_pass(record, dup_budget=len(affected))
    if kill_after_term:
        return
    print(f"F22 exit {code} after {exit_s:.3f}s")
    assert code == 0
    assert exit_s <= 3 + 2
    starts = [e for e in harness.oracle.events() if e.kind == "start"]
    for job in short:
        assert sum(1 for e in starts if e.job == job) == 1, f"{job} finished in grace but re-ran"
    for job in long:
        assert sum(1 for e in starts if e.job == job) == 2, (
            f"{job} released: runs exactly once more"
        )
        status = await fault_client.get_job_status(job)
        assert status is not None
        assert status.result["attempt"] == 1, "a released attempt must not be charged"
