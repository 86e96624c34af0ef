"""OpenTelemetry tracing: producer -> orchestrator -> runner.

Call :func:`enable` in the producer process and in the runner app (for
example at the top of ``myapp/runner.py``)::

    from rrq.integrations import otel
    otel.enable(service_name="my-service")

Each enqueue then runs in a PRODUCER span whose W3C context is stored with the
job; the orchestrator passes it on, and the runner runs each handler in a
CONSUMER span that continues it. Needs ``opentelemetry-api`` (``pip install
'rrq[otel]'``); with ``service_name`` and ``opentelemetry-sdk`` installed, a
tracer provider is set up when none is configured yet (exporting over OTLP
when ``opentelemetry-exporter-otlp`` is installed too).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from rrq import _tracing
from rrq.execution import ExecutionRequest

try:
    from opentelemetry import propagate, trace
except ImportError as exc:  # optional dependency
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

__all__ = ["disable", "enable"]


class _OtelTracer:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def _enqueue_span(self, function_name: str, queue_name: str) -> Iterator[Mapping[str, str]]:
        attributes = {"rrq.function_name": function_name, "rrq.queue_name": queue_name}
        with self._tracer.start_as_current_span(
            f"rrq.enqueue {function_name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield carrier

    def enqueue_span(
        self, function_name: str, queue_name: str
    ) -> AbstractContextManager[Mapping[str, str]]:
        return self._enqueue_span(function_name, queue_name)

    @contextmanager
    def _execution_span(self, request: ExecutionRequest) -> Iterator[object]:
        parent = propagate.extract(dict(request.context.trace_context))
        attributes: dict[str, str | int] = {
            "rrq.job_id": request.job_id,
            "rrq.function_name": request.function_name,
            "rrq.queue_name": request.queue_name,
            "rrq.attempt": request.attempt,
        }
        with self._tracer.start_as_current_span(
            f"rrq.job {request.function_name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span

    def execution_span(self, request: ExecutionRequest) -> AbstractContextManager[object]:
        return self._execution_span(request)


def _install_sdk_provider(service_name: str) -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the application configured OpenTelemetry itself
    try:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - optional
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        return  # API only: context still propagates, spans are not recorded
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError:
        pass
    else:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def enable(
    service_name: str | None = None, *, tracer_provider: trace.TracerProvider | None = None
) -> None:
    """Turns tracing on for this process (producer and runner alike)."""
    if _MISSING is not None:
        raise ImportError(
            "rrq.integrations.otel needs OpenTelemetry: pip install 'rrq[otel]' "
            "(opentelemetry-api, opentelemetry-sdk)"
        ) from _MISSING
    if tracer_provider is None and service_name:
        _install_sdk_provider(service_name)
    tracer = trace.get_tracer("rrq", tracer_provider=tracer_provider)
    _tracing.set_tracer(_OtelTracer(tracer))


def disable() -> None:
    """Turns tracing off again."""
    _tracing.set_tracer(None)
