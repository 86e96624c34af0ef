"""Issue 13 items 4 and 5: one outcome that is hard to encode (lone surrogates,
an out-of-range retry delay, megabytes of error text) ends its own job with a
recorded error and never costs the other jobs of its batch their outcome."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conftest import ConfigureOrchestrators, runner_table
from rrq.client import RRQClient
from rrq.job import JobResult, JobStatus
from rrq.testing import Orchestrator

WAIT = 30.0
# The job timeout bounds how long a lost outcome takes to show (as a JobTimeout).
TIMEOUT_S = 10


def _start(configure: ConfigureOrchestrators, queue: str, extra: str = "") -> Orchestrator:
    tail = runner_table("outcomes", "fixture_handlers_outcomes:settings")
    factory = configure(extra=f'runner_routes = {{ "{queue}" = "outcomes" }}\n{extra}', tail=tail)
    return factory.start(runners=2)


async def _run_together(
    client: RRQClient, queue: str, modes: list[dict[str, Any]]
) -> list[JobResult]:
    group = uuid.uuid4().hex
    ids = [
        await client.enqueue(
            "together",
            {
                "queue_name": queue,
                "params": {"group": group, "size": len(modes), **mode},
                "max_retries": 0,
                "job_timeout_seconds": TIMEOUT_S,
            },
        )
        for mode in modes
    ]
    return [await client.wait_for_result(i, timeout=WAIT) for i in ids]


def _runner_connections(orchestrator: Orchestrator) -> int:
    assert orchestrator.log is not None
    return orchestrator.log.text().count("runner connected name=outcomes")


@pytest.mark.parametrize(
    ("mode", "error_type", "needle"),
    [
        (
            {"mode": "surrogate"},
            "FileNotFoundError",
            "characters could not be encoded and were replaced]",
        ),
        ({"mode": "defer", "defer": 1e300}, "InvalidRetryDelay", "got 1e+300"),
        ({"mode": "defer", "defer": "inf"}, "InvalidRetryDelay", "got inf"),
        ({"mode": "defer", "defer": "nan"}, "InvalidRetryDelay", "got nan"),
        ({"mode": "result_surrogate"}, "ResultNotSerializable", "cannot be encoded as UTF-8"),
    ],
    ids=["surrogate", "defer-1e300", "defer-inf", "defer-nan", "result-surrogate"],
)
async def test_a_poisoned_outcome_does_not_cost_its_batch(
    configure_orchestrators: ConfigureOrchestrators,
    client: RRQClient,
    queue: str,
    mode: dict[str, Any],
    error_type: str,
    needle: str,
) -> None:
    orchestrator = _start(configure_orchestrators, queue)
    ok, poisoned = await _run_together(client, queue, [{"mode": "ok"}, mode])
    assert ok.status is JobStatus.COMPLETED, ok.last_error
    assert ok.attempt == 1  # ran once
    assert ok.errors == []  # never timed out
    assert poisoned.status is JobStatus.FAILED
    assert poisoned.attempt == 1
    assert poisoned.last_error_type == error_type, poisoned.last_error
    assert needle in poisoned.last_error
    if mode["mode"] == "surrogate":
        assert "report-\ufffd.csv" in poisoned.last_error
    # The runner kept its stream: a later job runs in the same process.
    (later,) = await _run_together(client, queue, [{"mode": "ok"}])
    assert later.result["pid"] == ok.result["pid"]
    assert _runner_connections(orchestrator) == 1


async def test_megabytes_of_error_text_are_cut_and_marked(
    configure_orchestrators: ConfigureOrchestrators, client: RRQClient, queue: str
) -> None:
    # The runner cuts to HelloAck.max_error_bytes (the larger cap, 16 KiB);
    # the orchestrator cuts the message again to its own 1 KiB cap.
    _start(configure_orchestrators, queue, "max_error_message_bytes = 1024\n")
    ok, huge = await _run_together(
        client, queue, [{"mode": "ok"}, {"mode": "huge", "bytes": 5 * 1024 * 1024}]
    )
    assert ok.status is JobStatus.COMPLETED
    assert huge.status is JobStatus.FAILED
    assert huge.last_error_type == "ValueError"
    assert huge.last_error.startswith("xxxx")
    assert "[truncated by rrq: " in huge.last_error
    assert len(huge.last_error.encode()) <= 1024 + 96
    (error,) = huge.errors
    assert error.message == huge.last_error
    assert len(error.traceback.encode()) <= 16_384 + 96
    assert error.traceback.startswith("[truncated by rrq: ")
    assert error.traceback.rstrip().endswith("xxxx")  # the tail: the line that raised
