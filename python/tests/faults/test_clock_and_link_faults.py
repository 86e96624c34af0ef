"""F19, F21: skewed orchestrator clocks, and cron under orchestrator crashes."""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
from collections import Counter
from pathlib import Path

import pytest
import redis

from conftest import python_env
from rrq.client import RRQClient
from rrq.testing import Orchestrator, RedisServer

from .conftest import Harness
from .oracle import Producer, TerminalMonitor, assert_pass, check

CRON = "tick"


def redis_now_ms(r: redis.Redis) -> int:
    sec, usec = r.time()
    return int(sec) * 1000 + int(usec) // 1000


def with_cron(config: Path, *, unskew_runners: bool = False) -> Path:
    """Adds a 1-second cron entry (handler ``work``) to a harness config.

    ``unskew_runners`` drops faketime's ``LD_PRELOAD`` from the runners' env:
    the skew is the orchestrator's, and the oracle log needs the real clock.
    """
    text = config.read_text(encoding="utf-8")
    if unskew_runners:
        text += 'LD_PRELOAD = ""\n'  # the last table of config_text is the runners' env
    text += f"""
[[rrq.cron_jobs]]
name = "{CRON}"
function_name = "work"
schedule = "*/1 * * * * *"
params = {{ sleep_ms = 10 }}
"""
    config.write_text(text, encoding="utf-8")
    return config


def skewed_orchestrator(harness: Harness, config: Path, offset: str) -> Orchestrator:
    """An orchestrator whose wall clock is ``offset`` off (faketime; monotonic clock untouched)."""
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is not installed (Debian package `faketime`)")
    wrapper = harness.dir / f"rrq-skew{offset.replace('+', 'p').replace('-', 'm')}.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        "FAKETIME_DONT_FAKE_MONOTONIC=1 exec "
        f"{shlex.quote(faketime)} -f {shlex.quote(offset)} {shlex.quote(harness.binary)} "
        '"$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    orch = Orchestrator(
        str(wrapper),
        config,
        cwd=harness.dir,
        env=python_env({"RRQ_ORACLE_LOG": str(harness.oracle.path), "RUST_LOG": "info"}),
    )
    harness.orchestrators.append(orch)
    orch.start()
    orch.wait_for_runners(2)
    return orch


def job_hash(r: redis.Redis, key: str | bytes) -> dict[str, str]:
    raw: dict[bytes, bytes] = r.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


def cron_records(r: redis.Redis) -> dict[int, dict[str, str]]:
    records = {}
    for key in r.scan_iter(match=f"rrq:{{default}}:job:cron:{CRON}:*"):
        tick = int(key.decode().rsplit(":", 1)[1])
        records[tick] = job_hash(r, key)
    return records


def check_cron(
    harness: Harness, r: redis.Redis, first_ms: int, last_ms: int
) -> tuple[list[str], dict[str, object]]:
    """Every tick of [first_ms, last_ms] exists, ran exactly once, and not before its time."""
    records = cron_records(r)
    expected = list(range(first_ms, last_ms + 1, 1000))
    runs = Counter(
        e.job
        for e in harness.oracle.events()
        if e.kind == "start" and e.job.startswith(f"cron:{CRON}:")
    )
    missing = [t for t in expected if t not in records]
    ran = {t: runs.get(f"cron:{CRON}:{t}", 0) for t in expected}
    not_once = {t: n for t, n in ran.items() if n != 1}
    twice_anywhere = {j: n for j, n in runs.items() if n > 1}
    early = [
        t
        for t, rec in records.items()
        if int(rec.get("started_at_ms", "0") or 0) and int(rec["started_at_ms"]) < t
    ]
    off_tick = [t for t in records if t % 1000]
    # Due at the tick, or at the enqueue when that came after it (a start-up
    # catch-up; run_at_ms is then not stored: it equals enqueued_at_ms).
    bad_run_at = [
        (t, rec)
        for t, rec in records.items()
        if int(rec.get("run_at_ms", rec.get("enqueued_at_ms", "0")))
        != max(t, int(rec.get("enqueued_at_ms", "0")))
    ]
    late_enqueue = {
        t: int(rec["enqueued_at_ms"]) - t
        for t, rec in records.items()
        if int(rec.get("enqueued_at_ms", "0")) > t
    }
    delays = sorted(
        int(records[t]["started_at_ms"]) - t
        for t in expected
        if t in records and records[t].get("started_at_ms")
    )
    summary: dict[str, object] = {
        "ticks_expected": len(expected),
        "ticks_observed": len(expected) - len(missing),
        "missing": missing,
        "ran_not_once": not_once,
        "ran_twice_any": twice_anywhere,
        "started_early": early,
        "off_tick": off_tick,
        "run_at_ne_tick": bad_run_at,
        "start_delay_ms_max": delays[-1] if delays else None,
        "enqueued_after_tick_ms": late_enqueue,
    }
    print(f"CRON {summary}")
    ids = [f"cron:{CRON}:{t}" for t in records]
    return ids, summary


def assert_cron(summary: dict[str, object], at_least: int) -> None:
    assert summary["ticks_expected"] >= at_least, summary  # type: ignore[operator]
    for key in ("missing", "ran_not_once", "ran_twice_any", "started_early", "off_tick"):
        assert not summary[key], summary
    assert not summary["run_at_ne_tick"], summary


async def wait_redis_ms(r: redis.Redis, target_ms: int) -> None:
    """Sleeps until Redis TIME reaches ``target_ms`` (a timer, not a poll: the wait is the row)."""
    ahead_ms = target_ms - redis_now_ms(r)
    if ahead_ms > 0:
        await asyncio.sleep(ahead_ms / 1000 + 0.005)  # Redis TIME is this host's clock


async def test_f19_clock_skew_two_orchestrators(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    r = redis.Redis.from_url(fault_redis.dsn)
    ahead = skewed_orchestrator(
        harness, with_cron(harness.write_config(), unskew_runners=True), "+30s"
    )
    behind = skewed_orchestrator(
        harness, with_cron(harness.write_config(), unskew_runners=True), "-30s"
    )
    # The skew took: each orchestrator's heartbeat carries its own wall clock.
    first_tick = (redis_now_ms(r) // 1000 + 2) * 1000
    rng = random.Random(19)
    deferred: dict[str, int] = {}
    for i in range(120):
        job = f"f19-{i}"
        params = {"sleep_ms": rng.randint(20, 200), "fail_first": rng.random() < 0.1}
        options: dict[str, object] = {"params": params, "max_retries": 3}
        if i % 3 == 0:
            options["defer_by_seconds"] = rng.uniform(1, 5)
            params["fail_first"] = False
        assert await producer.enqueue(job, options) == "ack_ok"
        if "defer_by_seconds" in options:
            deferred[job] = int(r.hget(f"rrq:{{default}}:job:{job}", "run_at_ms") or 0)
        await asyncio.sleep(0.03)  # pacing: enqueues spread over ~4 s
    # About 8 cron ticks after the first one.
    last_tick = first_tick + 8000
    await wait_redis_ms(r, last_tick + 1500)
    await asyncio.to_thread(
        harness.oracle.wait,
        lambda evs: any(e.kind == "end" and e.job == f"cron:{CRON}:{last_tick}" for e in evs),
        f"cron tick {last_tick}",
        10,
    )
    cron_ids, summary = check_cron(harness, r, first_tick, last_tick)
    record = await check(
        "F19", fault_client, producer, harness.oracle, monitor, extra_jobs=cron_ids
    )
    starts: dict[str, float] = {}
    for e in harness.oracle.events():
        if e.kind == "start":
            starts.setdefault(e.job, e.t)
    early, late = [], []
    for job, run_at in deferred.items():
        rec = job_hash(r, f"rrq:{{default}}:job:{job}")
        started = int(rec["started_at_ms"])
        early.append(run_at - min(started, int(starts[job] * 1000)))
        late.append(started - run_at)
    print(
        f"F19 deferred {len(deferred)}: earliness max {max(early)} ms (>0 is early), "
        f"lateness max {max(late)} ms"
    )
    for orch in (ahead, behind):
        assert orch.process is not None
        assert orch.process.poll() is None
    assert all(e <= 0 for e in early), early
    assert max(late) <= 2000, late  # poll interval + 1 s, 2x slack on a shared box
    assert_cron(summary, 8)
    assert_pass(record, dup_budget=0)
    assert record["acked"] == 120


async def test_f21_cron_three_orchestrators_with_crashes(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    fault_redis: RedisServer,
    monitor: TerminalMonitor,
) -> None:
    r = redis.Redis.from_url(fault_redis.dsn)
    config = with_cron(harness.write_config(pool_size=1))
    fleet = [harness.orchestrator(config, runners=1) for _ in range(3)]
    first_tick = (redis_now_ms(r) // 1000 + 1) * 1000
    last_tick = first_tick + 15000
    crashes = 0
    kill_at = first_tick + 4500  # mid-second: no 10 ms tick job is running then
    while kill_at < last_tick:
        await wait_redis_ms(r, kill_at)
        victim = crashes % len(fleet)
        fleet[victim].kill()
        crashes += 1
        replacement = harness.orchestrator(config, runners=None)
        await asyncio.to_thread(replacement.wait_for_runners, 1)
        fleet[victim] = replacement
        kill_at += 5000
    await wait_redis_ms(r, last_tick + 1500)
    await asyncio.to_thread(
        harness.oracle.wait,
        lambda evs: any(e.kind == "end" and e.job == f"cron:{CRON}:{last_tick}" for e in evs),
        f"cron tick {last_tick}",
        10,
    )
    cron_ids, summary = check_cron(harness, r, first_tick, last_tick)
    record = await check(
        "F21", fault_client, producer, harness.oracle, monitor, extra_jobs=cron_ids
    )
    print(f"F21 crashes {crashes}")
    assert crashes >= 2
    assert_cron(summary, 15)
    assert_pass(record, dup_budget=0)
