"""The dead-letter queue from Python (dlq_list/inspect/requeue/purge) and the `rrq dlq` CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import OrchestratorFactory, find_orchestrator_binary, python_env
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def dead_job(client: RRQClient, queue: str, marker_dir: Path, max_retries: int = 1) -> str:
    job_id = await client.enqueue(
        "fail_unless_allowed",
        {"queue_name": queue, "params": {"dir": str(marker_dir)}, "max_retries": max_retries},
    )
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.FAILED
    return job_id


async def fake_dead_jobs(client: RRQClient, queue: str, count: int) -> list[str]:
    """Dead-lettered records written directly (as settle.lua leaves them)."""
    redis = client.store.redis
    await redis.sadd(keys.QUEUES_KEY, queue)
    ids = [f"{queue}-dead-{i:04d}" for i in range(count)]
    pipe = redis.pipeline(transaction=False)
    for i, job_id in enumerate(ids):
        pipe.hset(
            keys.job_key(queue, job_id),
            mapping={
                "id": job_id,
                "function_name": "echo",
                "queue_name": queue,
                "params_json": "{}",
                "status": 5,
                "attempt": 4,
                "max_retries": 3,
                "enqueued_at_ms": 1,
                "finished_at_ms": 2,
            },
        )
        pipe.zadd(keys.dlq_key(queue), {job_id: 1000 + i})
    await pipe.execute()
    return ids


async def test_list_inspect_requeue_with_a_fresh_budget(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    job_id = await dead_job(client, queue, marker_dir)
    listed = await client.dlq_list(queue)
    assert [r.job_id for r in listed] == [job_id]
    assert [e.attempt for e in listed[0].errors] == [1, 2]
    assert job_id in [r.job_id for r in await client.dlq_list()]
    inspected = await client.dlq_inspect(job_id)
    assert inspected is not None
    assert inspected.status is JobStatus.FAILED
    assert inspected.attempt == 2

    (marker_dir / "allow").write_text("1", encoding="utf-8")
    assert await client.dlq_requeue([job_id]) == 1
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.queue_name == queue  # its original queue
    assert result.attempt == 1  # attempt was reset to 0: a fresh retry budget
    assert result.result == {"attempt": 1}
    assert [e.attempt for e in result.errors] == [1, 2]  # the history is kept
    assert await client.dlq_list(queue) == []
    assert await client.dlq_inspect(job_id) is None


async def test_requeued_job_gets_its_whole_retry_budget_again(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    job_id = await dead_job(client, queue, marker_dir, max_retries=1)
    assert await client.dlq_requeue(queue_name=queue) == 1
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.FAILED
    assert result.attempt == 2  # two more attempts ran, not one
    assert [e.attempt for e in result.errors] == [1, 2, 1, 2]


async def test_inspect_of_a_job_that_is_not_dead(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue})
    assert await client.dlq_inspect(job_id) is None
    assert await client.dlq_inspect("no-such-job") is None


async def test_list_skips_and_prunes_expired_entries(client: RRQClient, queue: str) -> None:
    ids = await fake_dead_jobs(client, queue, 3)
    redis = client.store.redis
    await redis.delete(keys.job_key(queue, ids[1]))  # its record expired
    listed = await client.dlq_list(queue, limit=10)
    assert [r.job_id for r in listed] == [ids[0], ids[2]]  # oldest first
    assert await redis.zscore(keys.dlq_key(queue), ids[1]) is None
    assert [r.job_id for r in await client.dlq_list(queue, limit=1)] == [ids[0]]


async def test_list_of_every_queue_merges_by_time_of_death(client: RRQClient, queue: str) -> None:
    a = await fake_dead_jobs(client, queue + "-a", 2)
    b = await fake_dead_jobs(client, queue + "-b", 2)
    mine = [
        (r.queue_name, r.job_id)
        for r in await client.dlq_list(limit=100_000)
        if r.queue_name in (queue + "-a", queue + "-b")
    ]
    assert sorted(mine) == sorted([(queue + "-a", i) for i in a] + [(queue + "-b", i) for i in b])


async def test_requeue_and_purge_work_in_batches(client: RRQClient, queue: str) -> None:
    ids = await fake_dead_jobs(client, queue, 250)
    assert await client.dlq_requeue(queue_name=queue) == 250
    redis = client.store.redis
    assert await redis.zcard(keys.dlq_key(queue)) == 0
    assert await redis.zcard(keys.due_key(queue)) == 250
    fields = await redis.hmget(keys.job_key(queue, ids[-1]), "status", "attempt")
    assert fields == [b"1", None]  # PENDING, attempt 0 (not stored)

    other = queue + "-purge"
    purge_ids = await fake_dead_jobs(client, other, 230)
    assert await client.dlq_purge([purge_ids[0], purge_ids[1]]) == 2
    assert not await redis.exists(keys.job_key(other, purge_ids[0]))
    assert await client.dlq_purge(queue_name=other) == 228
    assert await redis.zcard(keys.dlq_key(other)) == 0
    assert not await redis.exists(keys.job_key(other, purge_ids[-1]))


async def test_requeue_of_every_queue(client: RRQClient, queue: str) -> None:
    await client.store.redis.flushdb()  # other tests' dead jobs must not be counted
    await fake_dead_jobs(client, queue + "-1", 3)
    await fake_dead_jobs(client, queue + "-2", 2)
    assert await client.dlq_requeue() == 5
    assert await client.dlq_list() == []


async def run_cli(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        find_orchestrator_binary(),
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=python_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=WAIT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_list_and_requeue(
    orchestrators: OrchestratorFactory, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    orchestrators.start()
    job_id = await dead_job(client, queue, marker_dir)
    code, out = await run_cli(orchestrators.config, "dlq", "list", "--queue", queue)
    assert code == 0, out
    assert job_id in out
    assert "fail_unless_allowed" in out

    (marker_dir / "allow").write_text("1", encoding="utf-8")
    code, out = await run_cli(orchestrators.config, "dlq", "requeue", "--queue", queue, "--all")
    assert code == 0, out
    assert "1" in out
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 1
    code, out = await run_cli(orchestrators.config, "dlq", "list", "--queue", queue)
    assert code == 0, out
    assert job_id not in out
