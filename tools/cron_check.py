"""Cron exactly-once check: three orchestrators, a 1-second schedule, one crash every 10 s.

Run with `python tools/cron_check.py [--seconds 60]`. Prints ticks expected vs
observed, executions per tick and start delays, and exits non-zero when any
tick was missed, ran twice, or started before its time. A measurement for the
record (fault row F21 of docs/guarantees.md), not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

import redis.asyncio as aioredis

from rrq.testing import Orchestrator, RedisServer, find_rrq_binary

HANDLERS = """
import os

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

LOG = os.environ["CRON_CHECK_LOG"]


async def tick(request: ExecutionRequest) -> None:
    # One line per execution, appended atomically (O_APPEND, one write).
    with open(LOG, "a", encoding="utf-8") as out:
        out.write(request.job_id + "\\n")


registry = Registry()
registry.register("tick", tick)
settings = PythonRunnerSettings(registry=registry)
"""


def write_config(workdir: Path, dsn: str) -> Path:
    (workdir / "cron_handlers.py").write_text(textwrap.dedent(HANDLERS))
    config = workdir / "rrq.toml"
    config.write_text(
        textwrap.dedent(f"""\
        [rrq]
        redis_dsn = "{dsn}"
        lease_seconds = 3
        lease_renew_interval_seconds = 1
        recovery_interval_seconds = 0.5

        [rrq.runners.python]
        cmd = ["{sys.executable}", "-m", "rrq.runner_cli", "--settings", "cron_handlers:settings"]

        [[rrq.cron_jobs]]
        name = "tick"
        function_name = "tick"
        schedule = "*/1 * * * * *"
        """)
    )
    return config


async def job_records(dsn: str) -> dict[int, dict[str, str]]:
    r = aioredis.Redis.from_url(dsn, decode_responses=True)
    try:
        records = {}
        async for key in r.scan_iter(match="rrq:{default}:job:cron:tick:*"):
            tick = int(key.rsplit(":", 1)[1])
            fields = await r.hgetall(key)
            records[tick] = {str(k): str(v) for k, v in fields.items()}
        return records
    finally:
        await r.aclose()


async def wait_quiet(dsn: str) -> None:
    r = aioredis.Redis.from_url(dsn)
    try:
        # A measurement may poll; the test suite never does.
        while await r.zcard("rrq:{default}:active"):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--crash-every", type=int, default=10)
    args = parser.parse_args()

    workdir = Path(__file__).resolve().parent.parent / ".rrq" / "cron-check"
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "executions.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "CRON_CHECK_LOG": str(log)}
    binary = find_rrq_binary()
    with RedisServer(workdir / "redis") as redis_server:
        config = write_config(workdir, redis_server.dsn)
        fleet = [Orchestrator(binary, config, cwd=workdir, env=env).start() for _ in range(3)]
        for orchestrator in fleet:
            orchestrator.wait_for_runners(1)
        started = time.time()
        crashes = 0
        while time.time() - started < args.seconds:
            time.sleep(min(args.crash_every, max(0.0, args.seconds - (time.time() - started))))
            if time.time() - started >= args.seconds:
                break
            victim = crashes % len(fleet)
            fleet[victim].kill()  # SIGKILL, then a fresh one takes its place
            fleet[victim] = Orchestrator(binary, config, cwd=workdir, env=env).start()
            crashes += 1
        ended = time.time()
        for orchestrator in fleet:
            orchestrator.stop()
        asyncio.run(wait_quiet(redis_server.dsn))
        records = asyncio.run(job_records(redis_server.dsn))

    window = [t for t in records if started * 1000 + 2000 <= t <= ended * 1000 - 2000]
    expected = list(range(int(started) + 2, int(ended) - 1))
    expected_ms = [s * 1000 for s in expected]
    executions: dict[str, int] = {}
    for line in log.read_text().splitlines():
        executions[line] = executions.get(line, 0) + 1
    missing = [t for t in expected_ms if t not in records]
    ran = [executions.get(f"cron:tick:{t}", 0) for t in expected_ms]
    early = [t for t in window if int(records[t].get("started_at_ms", t)) < t]
    delays = [int(records[t]["started_at_ms"]) - t for t in window if "started_at_ms" in records[t]]
    report = {
        "seconds": round(ended - started, 1),
        "orchestrators": 3,
        "crashes": crashes,
        "ticks_expected": len(expected_ms),
        "ticks_observed": len([t for t in expected_ms if t in records]),
        "missing": len(missing),
        "executions_per_tick": {"min": min(ran, default=0), "max": max(ran, default=0)},
        "started_early": len(early),
        "start_delay_ms": {
            "p50": statistics.median(delays) if delays else None,
            "max": max(delays, default=None),
        },
    }
    print(json.dumps(report, indent=2))
    ok = not missing and not early and ran and min(ran) == 1 and max(ran) == 1
    print("cron check:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
