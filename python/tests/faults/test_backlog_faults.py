"""F20 (a backlog of jobs while no runner is attached) and F24 (mass due time, mass lease expiry).

The jobs are written through the real ``enqueue.lua`` (backlog_tools.bulk_enqueue):
Redis running the script is the limit, 30-40k jobs/s on this 2-core machine
when it is quiet and 15-23k/s when other builds share it. A 1,000,000-job F20
row takes 40-45 s here when quiet but 55-75 s on a shared box, so the row's
size is ``RRQ_F20_JOBS``: 500,000 by default (23-36 s measured), 1000000 in
the nightly tier. Likewise ``RRQ_F24_JOBS`` and ``RRQ_F24_SWEEP_JOBS``
(100,000 each).

"No Lua call > 50 ms" is read from SLOWLOG (logging from 10 ms on). Redis 7
logs a script's inner commands too, so a call stalled inside one of its point
commands (an HSET of one small hash taking 145 ms: the process was
descheduled, e.g. while an AOF-rewrite child and other builds share the two
cores) is told apart from a call that works too long: the row fails on a
script's time net of such stalls (``net_ms``) and reports the raw entries.

Each run prints one ``CHECKER {...}`` JSON line with its measurements.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from rrq.store import Store, active_key, due_key
from rrq.testing import Orchestrator, free_port

from .backlog_tools import (
    ExternalRunners,
    RssSampler,
    SideClient,
    SlowlogWatch,
    bulk_enqueue,
    count_ends,
    evalsha_stats,
    external_config,
    proc_cpu_s,
    proc_memory_mb,
    redis_time_ms,
    used_memory,
    wait_until,
)
from .conftest import Harness

F20_JOBS = int(os.environ.get("RRQ_F20_JOBS", "500000"))
F24_JOBS = int(os.environ.get("RRQ_F24_JOBS", "100000"))
F24_SWEEP_JOBS = int(os.environ.get("RRQ_F24_SWEEP_JOBS", "100000"))

SLOW_US = 50_000  # "no Lua call > 50 ms"
LOG_US = 10_000  # SLOWLOG keeps calls from 10 ms on; they are reported, not failed
SMALL_BACKLOG = 10_000  # claim cost is measured here and at the full size
CLAIM_PROBES = 100
DRAIN_JOBS = 20_000  # the drain is a figure, measured on this many jobs at most...
DRAIN_SECONDS = 8.0  # ...or for this long
GHOST_CLAIM = 100  # jobs per claim.lua call of the fake orchestrator in the sweep row
RUNNERS = 2
MAX_IN_FLIGHT = 32
# The bulk load's rate assumed when a due time must fall after it (the measured one is ~30k/s).
SLOW_LOAD_RATE = 20_000
# RRQ's job hash holds params_json (200 B here) next to 7 small fields; a value
# over hash-max-listpack-value (64 B by default) turns the whole hash into a
# hashtable (~740 B/hash), which dominates the bytes per job. Measured
# alternatives at 200 B params: params in their own string key ~680 B/job;
# hash-max-listpack-value 512 on the server ~650 B/job.
MAX_BYTES_PER_JOB = 1024


def _timeout(jobs: int) -> int:
    """pytest-timeout for a row of ``jobs``: room for the slowest load rate seen here."""
    return max(120, 60 + jobs // 5_000)


@pytest.fixture
def runners(harness: Harness) -> Iterator[ExternalRunners]:
    pool = ExternalRunners(harness.dir, free_port(), harness.oracle.path)
    try:
        yield pool
    finally:
        pool.kill()


@pytest.fixture
def drop_redis_files(tmp_path: Path) -> Iterator[None]:
    """Deletes the row's AOF (about 1 GB at 1M jobs) once its Redis has stopped."""
    yield
    shutil.rmtree(tmp_path / "redis" / "appendonlydir", ignore_errors=True)


@pytest.fixture
def sync_redis(harness: Harness) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(harness.redis.dsn, socket_timeout=30)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
async def store(harness: Harness) -> AsyncIterator[Store]:
    client = aioredis.Redis.from_url(harness.redis.dsn)
    store = Store(client)
    try:
        yield store
    finally:
        await store.aclose()
        await client.aclose()


def _orchestrator(harness: Harness, runners: ExternalRunners) -> tuple[Orchestrator, int]:
    config = external_config(
        harness.dir, harness.redis.dsn, runners.port, max_in_flight=MAX_IN_FLIGHT
    )
    orch = harness.orchestrator(config, runners=None)
    assert orch.process is not None
    return orch, orch.process.pid


def _report(record: dict[str, Any]) -> None:
    print("CHECKER " + json.dumps(record, sort_keys=True))


def _slow(watch: SlowlogWatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """SLOWLOG entries of 50 ms or more: (all of them, the failures).

    A failure is a script call (EVALSHA/EVAL) whose time net of its stalled
    point commands (SlowlogWatch.stalled_us) is 50 ms or more. Every entry is
    reported, with its raw and net time.
    """
    slow = [watch.describe(e) for e in watch.over(SLOW_US)]
    return slow, [e for e in slow if e.get("net_ms", 0) >= SLOW_US / 1000]


async def _claim_probe(
    store: Store, watch: SlowlogWatch, queue: str, n: int = CLAIM_PROBES
) -> tuple[float, float]:
    """Median claim.lua time of ``n`` one-job claims: (client round trip ms, server us).

    The probe is a fake orchestrator with an hour-long lease: its jobs stay
    ACTIVE out of the way of the drain.
    """
    times = []
    with watch.everything("claim") as server:
        for _ in range(n):
            t0 = time.perf_counter()
            reply = await store.claim(queue, owner="probe", lease_ms=3_600_000, max_jobs=1)
            times.append(time.perf_counter() - t0)
            assert len(reply) == 3, "the probe found no due job"
    assert server, "SLOWLOG logged no claim call"
    return round(statistics.median(times) * 1000, 3), statistics.median(server)


def _wait_drained(r: redis.Redis, queue: str, oracle_ends: int, harness: Harness) -> None:
    wait_until(
        lambda: (
            count_ends(harness.oracle.path) >= oracle_ends
            and r.zcard(due_key(queue)) == 0
            and r.zcard(active_key(queue)) == 0
        ),
        "the warm-up drain",
        30,
    )


@pytest.mark.timeout(_timeout(F20_JOBS))
@pytest.mark.usefixtures("drop_redis_files")
async def test_f20_backlog_without_runners(
    harness: Harness, runners: ExternalRunners, sync_redis: redis.Redis, store: Store
) -> None:
    """F20: a backlog of 200 B jobs built while no runner is attached, then runners attach.

    Redis memory per job, the same orchestrator's RSS with the queue empty,
    with the backlog and while it claims from it, SLOWLOG, claim.lua's cost at
    10k and at the full backlog, and the drain rate (a figure). The restart
    with a 1M backlog (LOADING) is S2's, in the nightly tier.
    """
    began = time.monotonic()
    r, dsn, queue = sync_redis, harness.redis.dsn, "f20"
    orch, pid = _orchestrator(harness, runners)
    watch = SlowlogWatch(r, LOG_US)

    # The empty-queue baseline: runners attached, a few jobs run, the queue empty.
    runners.start(RUNNERS)
    await asyncio.to_thread(orch.wait_for_runners, RUNNERS)
    warm = 500
    await asyncio.to_thread(bulk_enqueue, dsn, queue, warm, prefix="warm")
    await asyncio.to_thread(_wait_drained, r, queue, warm, harness)
    rss_empty = proc_memory_mb(pid)
    runners.stop()
    assert orch.log is not None
    await asyncio.to_thread(orch.log.wait_for, "runner disconnected", RUNNERS, 15)
    mem_before = used_memory(r)

    # The backlog, written while no runner is attached; claim cost at 10k and at full size.
    cpu0, forks0 = proc_cpu_s(pid), int(r.info("stats")["total_forks"])
    small = min(SMALL_BACKLOG, F20_JOBS)
    load1 = await asyncio.to_thread(bulk_enqueue, dsn, queue, small, prefix="f20")
    claim_small = await _claim_probe(store, watch, queue)
    load2 = await asyncio.to_thread(
        bulk_enqueue, dsn, queue, F20_JOBS - small, prefix="f20", start=small
    )
    mem_after = used_memory(r)
    claim_big = await _claim_probe(store, watch, queue)
    build_s = load1.seconds + load2.seconds
    orch_cpu_s = proc_cpu_s(pid) - cpu0
    forks = int(r.info("stats")["total_forks"]) - forks0
    rss_backlog = proc_memory_mb(pid)
    assert r.zcard(due_key(queue)) == F20_JOBS - 2 * CLAIM_PROBES

    # Attach runners and drain for a bounded number of jobs or time.
    ends0 = count_ends(harness.oracle.path)
    with RssSampler(pid) as sampler:
        runners.start(RUNNERS)
        await asyncio.to_thread(orch.wait_for_runners, 2 * RUNNERS)
        t0 = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            lambda: (
                count_ends(harness.oracle.path) - ends0 >= DRAIN_JOBS
                or time.monotonic() - t0 >= DRAIN_SECONDS
            ),
            "the bounded drain",
            DRAIN_SECONDS + 30,
        )
        drained = count_ends(harness.oracle.path) - ends0
        drain_s = time.monotonic() - t0
    rss_claiming = sampler.peak
    hwm = proc_memory_mb(pid)["VmHWM"]
    slow, slow_scripts = _slow(watch)
    elapsed = time.monotonic() - began

    bytes_per_job = round((mem_after - mem_before) / F20_JOBS, 1)
    record = {
        "row": "F20",
        "jobs": F20_JOBS,
        "build_s": round(build_s, 2),
        "enqueue_per_s": round(F20_JOBS / build_s),
        "redis_used_memory_mb": round(mem_after / 2**20, 1),
        "redis_forks_during_build": forks,
        "orch_cpu_s_during_build": round(orch_cpu_s, 2),
        "redis_bytes_per_job": bytes_per_job,
        "orch_rss_empty_mb": rss_empty["VmRSS"],
        "orch_rss_backlog_mb": rss_backlog["VmRSS"],
        "orch_rss_claiming_mb": rss_claiming,
        "orch_hwm_mb": hwm,
        "slowlog_over_50ms": len(slow_scripts),
        "slowlog_entries_over_50ms": len(slow),
        "slowlog": slow[:10],
        "slowlog_over_10ms": watch.summary(),
        "latency_ms": watch.latency(),
        "claim_ms_10k": claim_small[0],
        "claim_ms_big": claim_big[0],
        "claim_server_us_10k": claim_small[1],
        "claim_server_us_big": claim_big[1],
        "drain_jobs": drained,
        "drain_jobs_per_s": round(drained / drain_s),
        "elapsed_s": round(elapsed, 1),
    }
    _report(record)

    assert not slow_scripts, f"a script worked > 50 ms: {slow}"
    assert drained > 0, "the attached runners ran nothing from the backlog"
    # Orchestrator memory does not depend on the backlog.
    base = rss_empty["VmRSS"]
    assert max(rss_backlog["VmRSS"], rss_claiming, hwm) <= 100, record
    assert rss_backlog["VmRSS"] <= base * 1.1, record
    assert rss_claiming <= base * 1.1, record
    # Claim cost O(log N): a backlog 50-100x larger may cost at most 3x (log is ~1.5x).
    assert claim_big[1] <= 3 * claim_small[1] + 20, record
    assert bytes_per_job <= MAX_BYTES_PER_JOB, record


@pytest.mark.timeout(_timeout(F24_JOBS))
@pytest.mark.usefixtures("drop_redis_files")
async def test_f24_mass_due_time(
    harness: Harness, runners: ExternalRunners, sync_redis: redis.Redis
) -> None:
    """F24: every job falls due at the same instant, with runners attached and waiting."""
    began = time.monotonic()
    r, dsn, queue = sync_redis, harness.redis.dsn, "f24"
    orch, _ = _orchestrator(harness, runners)
    watch = SlowlogWatch(r, LOG_US)

    # One absolute due time in Redis's clock (run_at_ms: the script takes the
    # later of it and TIME + defer), after the load and the runners' start.
    margin_ms = int(F24_JOBS / SLOW_LOAD_RATE * 1000) + 2500
    due_at = redis_time_ms(r) + margin_ms
    load = await asyncio.to_thread(
        bulk_enqueue, dsn, queue, F24_JOBS, prefix="f24", run_at_ms=due_at
    )
    assert r.zcount(due_key(queue), due_at, due_at) == F24_JOBS
    runners.start(RUNNERS)
    await asyncio.to_thread(orch.wait_for_runners, RUNNERS)
    early_ms = due_at - redis_time_ms(r)

    with SideClient(dsn, "f24-side") as side:
        await asyncio.to_thread(
            wait_until, lambda: redis_time_ms(r) >= due_at, "the due time", margin_ms / 1000 + 5
        )
        t0 = time.monotonic()
        await asyncio.to_thread(
            wait_until,
            lambda: (
                count_ends(harness.oracle.path, "f24-") >= DRAIN_JOBS
                or time.monotonic() - t0 >= DRAIN_SECONDS
            ),
            "the bounded drain",
            DRAIN_SECONDS + 30,
        )
        window_s = time.monotonic() - t0
        ran = count_ends(harness.oracle.path, "f24-")
    starts = [
        e.t for e in harness.oracle.events() if e.kind == "start" and e.job.startswith("f24-")
    ]
    side_report = side.report()
    slow, slow_scripts = _slow(watch)
    elapsed = time.monotonic() - began
    record = {
        "row": "F24",
        "variant": "mass_due",
        "jobs": F24_JOBS,
        "build_s": round(load.seconds, 2),
        "runners_ready_before_due_ms": early_ms,
        "slowlog_over_50ms": len(slow_scripts),
        "slowlog_entries_over_50ms": len(slow),
        "slowlog": slow[:10],
        "slowlog_over_10ms": watch.summary(),
        "latency_ms": watch.latency(),
        "side_ping_ms": side_report["ping"],
        "side_enqueue_ms": side_report["enqueue"],
        "ran_in_window": ran,
        "window_jobs_per_s": round(ran / window_s),
        "first_start_after_due_ms": round(min(starts) * 1000 - due_at, 1),
        "elapsed_s": round(elapsed, 1),
    }
    _report(record)

    assert min(starts) * 1000 >= due_at - 50, "a job started before its due time"
    assert not slow_scripts, f"a script worked > 50 ms: {slow}"
    assert ran > 0
    assert side_report["ping"]["p99"] < 100, record
    assert side_report["enqueue"]["p99"] < 100, record


@pytest.mark.timeout(_timeout(F24_SWEEP_JOBS))
@pytest.mark.usefixtures("drop_redis_files")
async def test_f24_sweep_of_expired_leases(
    harness: Harness, runners: ExternalRunners, sync_redis: redis.Redis, store: Store
) -> None:
    """F24: a mass of leases is found expired at once; recovery sweeps it in bounded batches.

    A fake orchestrator ("ghost") claims every job through claim.lua with a
    1 ms lease it never renews, before the real orchestrator starts; then the
    orchestrator (no runner attached, so it only sweeps) finds them all expired.
    """
    began = time.monotonic()
    r, dsn, queue, n = sync_redis, harness.redis.dsn, "f24s", F24_SWEEP_JOBS
    watch = SlowlogWatch(r, LOG_US)
    load = await asyncio.to_thread(bulk_enqueue, dsn, queue, n, prefix="f24s")
    claimed = 0
    t_claim = time.monotonic()
    while claimed < n:
        reply = await store.claim(queue, owner="ghost", lease_ms=1, max_jobs=GHOST_CLAIM)
        assert len(reply) > 2, "the ghost found no due job"
        claimed += len(reply) - 2
    claim_s = time.monotonic() - t_claim
    assert r.zcard(active_key(queue)) == n

    r.config_resetstat()
    with SideClient(dsn, "f24s-side") as side:
        t0 = time.monotonic()
        orch, _ = _orchestrator(harness, runners)
        ready_s = time.monotonic() - t0
        await asyncio.to_thread(
            wait_until,
            lambda: r.zcard(active_key(queue)) == 0 and r.zcard(due_key(queue)) == n,
            "the sweep of every expired lease",
            30 + n / 5_000,
        )
        sweep_s = time.monotonic() - t0
    # Only the orchestrator ran EVALSHA meanwhile (the side client uses EVAL), nearly
    # all of it recover_expired: the sweep's calls.
    sweep_calls = evalsha_stats(r)
    side_report = side.report()
    slow, slow_scripts = _slow(watch)
    assert orch.log is not None
    sweep_logged = orch.log.count("recovered expired leases")
    elapsed = time.monotonic() - began
    record = {
        "row": "F24",
        "variant": "sweep",
        "jobs": n,
        "build_s": round(load.seconds, 2),
        "ghost_claim_s": round(claim_s, 2),
        "orch_ready_s": round(ready_s, 2),
        "sweep_s": round(sweep_s, 2),
        "sweep_jobs_per_s": round(n / sweep_s),
        "sweep_calls_logged": sweep_logged,
        "sweep_evalsha_ms": sweep_calls,
        "slowlog_over_50ms": len(slow_scripts),
        "slowlog_entries_over_50ms": len(slow),
        "slowlog": slow[:10],
        "slowlog_over_10ms": watch.summary(),
        "latency_ms": watch.latency(),
        "side_ping_ms": side_report["ping"],
        "side_enqueue_ms": side_report["enqueue"],
        "elapsed_s": round(elapsed, 1),
    }
    _report(record)

    assert not slow_scripts, f"a script worked > 50 ms: {slow}"
    assert side_report["ping"]["p99"] < 100, record
    assert side_report["enqueue"]["p99"] < 100, record
