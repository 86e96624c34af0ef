"""enqueue_with_debounce: only the last call of a window runs, with the last params.

Timing is checked on the Redis-time fields of the record (enqueued_at_ms,
run_at_ms, started_at_ms) and Redis TIME read around the calls, never on
wall-clock sleeps.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import async_wait_for_file
from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def redis_ms(client: RRQClient) -> int:
    seconds, micros = await client.store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def record(client: RRQClient, queue: str, job_id: str) -> dict[str, str]:
    fields = await client.store.get_job(queue, job_id)
    assert fields is not None
    return {k.decode(): v.decode() for k, v in fields.items()}


async def test_only_the_last_call_runs_with_the_last_params(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    base = {"queue_name": queue, "debounce_key": "doc-1", "debounce_seconds": 0.5}
    ids = [
        await client.enqueue_with_debounce("echo", {**base, "params": {"i": i}}) for i in range(3)
    ]
    before_last = await redis_ms(client)
    ids.append(await client.enqueue_with_debounce("echo", {**base, "params": {"i": 3}}))
    after_last = await redis_ms(client)
    assert len(set(ids)) == 1
    job_id = ids[0]
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.attempt == 1
    assert result.result["params"] == {"i": 3}
    assert result.debounce_key == "doc-1"
    fields = await record(client, queue, job_id)
    run_at = int(fields["run_at_ms"])
    # Due debounce_seconds after the last call, and not started before that.
    assert before_last + 500 <= run_at <= after_last + 500
    assert int(fields["started_at_ms"]) >= run_at
    assert int(fields["enqueued_at_ms"]) <= before_last
    jobs = [k async for k in client.store.redis.scan_iter(match=keys.job_key(queue, "*"))]
    assert len(jobs) == 1


async def test_max_wait_caps_the_delay_from_the_first_call(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    base = {
        "queue_name": queue,
        "debounce_key": "doc-2",
        "debounce_seconds": 0.6,
        "debounce_max_wait_seconds": 0.6,
    }
    first = await client.enqueue_with_debounce("echo", {**base, "params": {"i": 0}})
    second = await client.enqueue_with_debounce("echo", {**base, "params": {"i": 1}})
    assert second == first
    fields = await record(client, queue, first)
    # The second call would move it to (its own time + 0.6 s); the cap keeps it at first + 0.6 s.
    assert int(fields["run_at_ms"]) == int(fields["enqueued_at_ms"]) + 600
    result = await client.wait_for_result(first, timeout=WAIT)
    assert result.result["params"] == {"i": 1}
    fields = await record(client, queue, first)
    assert int(fields["started_at_ms"]) >= int(fields["run_at_ms"])


async def test_a_started_job_is_never_changed_and_the_next_call_opens_a_new_window(
    orchestrator: Orchestrator, client: RRQClient, queue: str, marker_dir: Path
) -> None:
    base = {"queue_name": queue, "debounce_key": "doc-3", "debounce_seconds": 0.3}
    params = {"dir": str(marker_dir), "v": 1}
    first = await client.enqueue_with_debounce("hang", {**base, "params": params})
    await async_wait_for_file(marker_dir / "started-1")
    assert not await client.store.redis.exists(keys.debounce_key(queue, "doc-3"))
    second = await client.enqueue_with_debounce(
        "hang", {**base, "params": {"dir": str(marker_dir), "v": 2}}
    )
    assert second != first
    old = await record(client, queue, first)
    assert json.loads(old["params_json"]) == params
    assert old["status"] == "2"  # ACTIVE, untouched
    new = await record(client, queue, second)
    assert json.loads(new["params_json"])["v"] == 2
    assert int(new["run_at_ms"]) == int(new["enqueued_at_ms"]) + 300


async def test_separate_keys_are_separate_windows(client: RRQClient, queue: str) -> None:
    base = {"queue_name": queue, "debounce_seconds": 5}
    a = await client.enqueue_with_debounce("f", {**base, "debounce_key": "a"})
    b = await client.enqueue_with_debounce("f", {**base, "debounce_key": "b"})
    assert a != b
