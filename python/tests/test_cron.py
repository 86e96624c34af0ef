"""Cron: three orchestrators, one job per tick, never before its tick."""

from __future__ import annotations

from pathlib import Path

from conftest import ConfigureOrchestrators
from helpers import wait_until
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobStatus

WAIT = 30.0
TICKS = 5


async def test_one_job_per_tick_across_three_orchestrators(
    configure_orchestrators: ConfigureOrchestrators,
    client: RRQClient,
    queue: str,
    marker_dir: Path,
) -> None:
    tail = f"""
[[rrq.cron_jobs]]
name = "{queue}"
function_name = "log_run"
schedule = "*/1 * * * * *"
queue_name = "{queue}"
params = {{ dir = "{marker_dir}" }}
"""
    # One config each: every orchestrator listens for its runner on its own port.
    started = [configure_orchestrators(tail=tail).start() for _ in range(3)]
    seconds, micros = await client.store.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    first_tick = (now_ms // 1000 + 2) * 1000
    ticks = [first_tick + 1000 * i for i in range(TICKS)]
    redis = client.store.redis

    for index, tick in enumerate(ticks):
        job_id = f"cron:{queue}:{tick}"

        async def exists(job_id: str = job_id) -> bool:
            return bool(await redis.exists(keys.job_key(queue, job_id)))

        await wait_until(exists, f"the job of tick {tick}", timeout=WAIT)
        result = await client.wait_for_result(job_id, timeout=WAIT)
        assert result.status is JobStatus.COMPLETED
        assert result.attempt == 1
        fields = await redis.hmget(keys.job_key(queue, job_id), "run_at_ms", "started_at_ms")
        assert int(fields[0] or 0) == tick
        assert int(fields[1] or 0) >= tick
        if index == 1:
            started[0].kill()  # one orchestrator dies midway

    runs = (marker_dir / "runs.log").read_text(encoding="utf-8").split("\n")
    ran = [line.split()[0] for line in runs if line]
    for tick in ticks:
        assert ran.count(f"cron:{queue}:{tick}") == 1
    # Exactly one job per tick: every job of the queue is a distinct tick's.
    jobs = [k.decode() async for k in redis.scan_iter(match=keys.job_key(queue, "*"))]
    tick_ids = [k.removeprefix(keys.job_key_prefix(queue)) for k in jobs]
    assert len(tick_ids) == len(set(tick_ids))
    assert all(t.startswith(f"cron:{queue}:") for t in tick_ids)
