"""Queues and routing through the real orchestrator with two Python runners."""

from __future__ import annotations

import uuid

from conftest import ConfigureOrchestrators, OrchestratorFactory, runner_table
from rrq.client import RRQClient
from rrq.job import JobStatus

WAIT = 30.0


def routed_config(configure: ConfigureOrchestrators, routed_queue: str) -> OrchestratorFactory:
    tail = runner_table("runnerB", "fixture_handlers_b:settings")
    tail += f'\n[rrq.runner_routes]\n"{routed_queue}" = "runnerB"\n'
    return configure(tail=tail)


async def test_routes_and_prefixes_pick_the_runner(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    routed = queue + "-b"
    factory = routed_config(configure_orchestrators, routed)
    factory.start(runners=2)

    default_job = await client.enqueue("whoami", {"queue_name": queue})
    routed_job = await client.enqueue("whoami", {"queue_name": routed})
    prefixed_job = await client.enqueue("runnerB#whoami", {"queue_name": queue})
    only_b = await client.enqueue("runnerB#only_b", {"params": {"x": 1}})  # default queue

    assert (await client.wait_for_result(default_job, timeout=WAIT)).result["module"] == "a"
    routed_result = await client.wait_for_result(routed_job, timeout=WAIT)
    assert routed_result.result["module"] == "b"
    assert routed_result.result["runner"] == "runnerB"
    prefixed = await client.wait_for_result(prefixed_job, timeout=WAIT)
    assert prefixed.status is JobStatus.COMPLETED
    assert prefixed.result["module"] == "b"
    b_result = await client.wait_for_result(only_b, timeout=WAIT)
    assert b_result.result == {"module": "b", "params": {"x": 1}}


async def test_a_handler_of_the_other_runner_is_unknown_without_a_route(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    factory = routed_config(configure_orchestrators, queue + "-b")
    factory.start(runners=2)
    job_id = await client.enqueue("only_b", {"queue_name": queue, "max_retries": 0})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.FAILED
    assert result.last_error_type == "UnknownFunction"
    assert "only_b" in result.last_error


async def test_a_new_queue_is_served_without_restart(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    factory = configure_orchestrators()
    factory.start()
    fresh = f"brand-new-{uuid.uuid4().hex[:8]}"
    job_id = await client.enqueue("echo", {"queue_name": fresh})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    assert result.result["queue"] == fresh


async def test_queue_flag_serves_only_that_queue(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    served, other = queue + "-served", queue + "-other"
    factory = configure_orchestrators()
    factory.start(extra_args=("--queue", served))
    ignored = await client.enqueue("echo", {"queue_name": other})
    job_id = await client.enqueue("echo", {"queue_name": served})
    result = await client.wait_for_result(job_id, timeout=WAIT)
    assert result.status is JobStatus.COMPLETED
    # The other job was due before the served one finished, and nobody took it.
    waiting = await client.get_job_status(ignored)
    assert waiting is not None
    assert waiting.status is JobStatus.PENDING
    assert waiting.attempt == 0
