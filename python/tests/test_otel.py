"""rrq.integrations.otel: the README snippet, and the trace context stored with a job."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from conftest import OrchestratorFactory, python_env
from rrq import _tracing
from rrq import store as keys
from rrq.client import RRQClient
from rrq.execution import ExecutionContext, ExecutionRequest
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
    assert span.name == f"send {queue}"
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


SEND_ATTRIBUTES = {
    "messaging.system": "rrq",
    "messaging.operation.type": "send",
    "messaging.operation.name": "send",
}


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


async def test_every_enqueue_method_makes_a_producer_span_and_stores_its_context(
    exporter: InMemorySpanExporter, client: RRQClient, queue: str
) -> None:
    o = {"queue_name": queue}
    ids = [
        await client.enqueue("f", o),
        await client.enqueue_with_unique_key("f", "u", o),
        await client.enqueue_with_rate_limit(
            "f", {**o, "rate_limit_key": "r", "rate_limit_seconds": 60}
        ),
        await client.enqueue_with_debounce("f", {**o, "debounce_key": "d", "debounce_seconds": 60}),
    ]
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    for job_id, span in zip(ids, spans, strict=True):
        assert job_id is not None
        assert span.name == f"send {queue}"
        assert span.kind is SpanKind.PRODUCER
        attributes = dict(span.attributes or {})
        assert {k: attributes[k] for k in SEND_ATTRIBUTES} == SEND_ATTRIBUTES
        assert attributes["messaging.destination.name"] == queue
        assert attributes["messaging.message.id"] == job_id
        stored = await client.store.redis.hget(keys.job_key(queue, job_id), "trace_parent")
        assert isinstance(stored, bytes)
        assert stored.decode().split("-")[:3] == traceparent_of(span).split("-")[:3]


async def test_the_span_of_a_deduplicated_enqueue_names_the_existing_job(
    exporter: InMemorySpanExporter, client: RRQClient, queue: str
) -> None:
    first = await client.enqueue_with_unique_key("f", "u", {"queue_name": queue})
    again = await client.enqueue_with_unique_key("f", "u", {"queue_name": queue})
    assert again == first
    spans = exporter.get_finished_spans()
    assert [dict(s.attributes or {})["messaging.message.id"] for s in spans] == [first, first]


async def test_the_handler_runs_in_a_span_of_the_producer_trace(
    exporter: InMemorySpanExporter, orchestrator: Orchestrator, client: RRQClient, queue: str
) -> None:
    tracer = trace.get_tracer("test", tracer_provider=exporter_provider(exporter))
    with tracer.start_as_current_span("request"):
        job_id = await client.enqueue("current_span", {"queue_name": queue})
    result = await client.wait_for_result(job_id, timeout=30)
    send = next(s for s in exporter.get_finished_spans() if s.name == f"send {queue}")
    context = send.get_span_context()
    assert context is not None
    assert result.result["valid"] is True
    assert result.result["trace_id"] == f"{context.trace_id:032x}"


def exporter_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_runner_span_attributes() -> None:
    from rrq.integrations import otel  # noqa: PLC0415

    memory = InMemorySpanExporter()
    otel.enable(tracer_provider=exporter_provider(memory))
    try:
        tracer = _tracing.execution_tracer()
        assert tracer is not None
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        request = ExecutionRequest(
            job_id="j1",
            function_name="handler",
            params={},
            context=ExecutionContext(
                attempt=2,
                queue_name="q",
                enqueued_at=datetime.now(UTC),
                deadline=datetime.now(UTC),
                max_retries=3,
                trace_context={"traceparent": parent},
            ),
        )
        with tracer.execution_span(request):
            inner = trace.get_current_span().get_span_context()
            assert f"{inner.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    finally:
        otel.disable()
    (span,) = memory.get_finished_spans()
    assert span.name == "process handler"
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "rrq"
    assert attributes["messaging.destination.name"] == "q"
    assert attributes["messaging.message.id"] == "j1"
    assert attributes["rrq.job.attempt"] == 2


BLOCKED_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # import opentelemetry now raises ImportError
from rrq import _tracing
from rrq.integrations import otel
from rrq.runner import Runner
assert _tracing.execution_tracer() is None
try:
    otel.enable(service_name="x")
except ImportError as exc:
    print("enable:", exc)
print("ok")
"""


def test_the_runner_works_without_opentelemetry() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED_OTEL],
        check=True,
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=60,
    ).stdout
    assert "rrq[otel]" in out
    assert out.strip().endswith("ok")


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (name, trace id hex)
        self.changed = threading.Condition()

    def Export(  # noqa: N802 - the gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.changed:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((span.name, span.trace_id.hex()))
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, wanted: set[tuple[str, str]], timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: wanted <= set(self.spans), timeout=timeout):
                raise TimeoutError(f"spans {wanted - set(self.spans)} not exported: {self.spans}")


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    servicer = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(grace=None)


async def test_the_orchestrator_exports_its_spans_in_the_producer_trace(
    exporter: InMemorySpanExporter,
    collector: tuple[_Collector, int],
    orchestrators: OrchestratorFactory,
    client: RRQClient,
    queue: str,
) -> None:
    servicer, port = collector
    orchestrators.start(env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    job_id = await client.enqueue("current_span", {"queue_name": queue})
    result = await client.wait_for_result(job_id, timeout=30)
    (send,) = [s for s in exporter.get_finished_spans() if s.name == f"send {queue}"]
    context = send.get_span_context()
    assert context is not None
    trace_id = f"{context.trace_id:032x}"
    assert result.result["trace_id"] == trace_id
    wanted = {(f"{op} {queue}", trace_id) for op in ("wait", "dispatch", "process")}
    await asyncio.to_thread(servicer.wait_for, wanted, 30.0)
