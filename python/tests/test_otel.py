"""rrq.integrations.otel: the README snippet, and the trace context stored with a job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rrq import store as keys
from rrq.client import RRQClient
from rrq.testing import Orchestrator


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    from rrq.integrations import otel  # noqa: PLC0415

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    otel.enable(tracer_provider=provider)
    try:
        yield memory
    finally:
        otel.disable()


def test_readme_snippet() -> None:
    from rrq.integrations import otel  # noqa: PLC0415

    otel.enable(service_name="my-service")
    otel.disable()


async def test_enqueue_stores_the_producer_span_context(
    exporter: InMemorySpanExporter, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue})
    (span,) = exporter.get_finished_spans()
    assert span.name == "rrq.enqueue f"
    stored = await client.store.redis.hget(keys.job_key(queue, job_id), "trace_parent")
    assert isinstance(stored, bytes)
    version, trace_id, span_id, _flags = stored.decode().split("-")
    context = span.get_span_context()
    assert context is not None
    assert (version, trace_id, span_id) == (
        "00",
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )


async def test_trace_context_reaches_the_runner(
    exporter: InMemorySpanExporter, orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    job_id = await client.enqueue("trace_context", {"queue_name": queue})
    result = await client.wait_for_result(job_id, timeout=30)
    (span,) = exporter.get_finished_spans()
    context = span.get_span_context()
    assert context is not None
    assert result.result["traceparent"].split("-")[1] == f"{context.trace_id:032x}"
