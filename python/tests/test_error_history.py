"""JobResult.errors: every failed attempt's error, oldest first; result retention."""

from __future__ import annotations

from datetime import UTC

from rrq import store as keys
from rrq.client import RRQClient
from rrq.job import AttemptError, JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0


async def test_every_attempt_error_is_kept_oldest_first(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("always_fail", {"queue_name": queue, "max_retries": 2})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.FAILED
    assert [e.attempt for e in result.errors] == [1, 2, 3]
    for number, error in enumerate(result.errors, start=1):
        assert isinstance(error, AttemptError)
        assert error.error_type == "RuntimeError"
        assert error.message == f"boom on attempt {number}"
        assert "Traceback" in error.traceback
        assert "always_fail" in error.traceback
        assert error.at.tzinfo is UTC
    assert [e.at for e in result.errors] == sorted(e.at for e in result.errors)
    assert result.finished_at is not None
    assert result.errors[-1].at <= result.finished_at
    assert result.last_error == result.errors[-1].message


async def test_errors_of_a_job_that_finally_completed(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue(
        "fail_until", {"queue_name": queue, "params": {"succeed_on": 3}, "max_retries": 3}
    )
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert [(e.attempt, e.error_type) for e in result.errors] == [
        (1, "ValueError"),
        (2, "ValueError"),
    ]
    assert result.cancel_requested is False


async def test_a_job_without_failures_has_no_errors(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue, "result_ttl_seconds": 120})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.errors == []
    # Kept for result_ttl_seconds.
    ttl = await client.store.redis.pttl(keys.job_key(queue, job_id))
    assert 100_000 < ttl <= 120_000


async def test_default_result_ttl_applies_without_the_option(
    orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("echo", {"queue_name": queue})
    await client.wait_for_result(job_id, timeout=WAIT)
    ttl = await client.store.redis.pttl(keys.job_key(queue, job_id))
    assert 86_300_000 < ttl <= 86_400_000
