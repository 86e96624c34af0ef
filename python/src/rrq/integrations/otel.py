"""OpenTelemetry tracing: producer -> orchestrator -> runner.

Call :func:`enable` in the producer process::

    from rrq.integrations import otel
    otel.enable(service_name="my-service")

Every enqueue (``enqueue``, ``enqueue_with_unique_key``,
``enqueue_with_rate_limit``, ``enqueue_with_debounce``) then runs in a PRODUCER
span ``send <queue>`` whose W3C context is stored with the job; the
orchestrator continues it (``wait``/``dispatch``/``process <queue>`` spans when
it exports OTLP) and passes it on, and the Python runner runs each handler in a
CONSUMER span ``process <function_name>`` whose parent is that context, so
``opentelemetry.trace.get_current_span()`` inside a handler belongs to the
producer's trace. The runner does this whenever ``opentelemetry-api`` is
importable, without ``enable()``; call ``enable()`` in the runner app too to
record and export its spans. Needs ``opentelemetry-api`` (``pip install
'rrq[otel]'``); with ``service_name`` and ``opentelemetry-sdk`` installed, a
tracer provider is set up when none is configured yet (exporting over OTLP
when ``opentelemetry-exporter-otlp`` is installed too).
"""

from __future__ import annotations

import contextlib
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

__all__ = ["MESSAGING_SYSTEM", "automatic_tracer", "disable", "enable"]

MESSAGING_SYSTEM = "rrq"


class _EnqueueSpan:
    def __init__(self, span: trace.Span, carrier: Mapping[str, str]) -> None:
        self._span = span
        self._carrier = carrier

    @property
    def carrier(self) -> Mapping[str, str]:
        return self._carrier

    def set_job_id(self, job_id: str) -> None:
        self._span.set_attribute("messaging.message.id", job_id)


class _OtelTracer:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextmanager
    def _enqueue_span(
        self, function_name: str, queue_name: str, job_id: str
    ) -> Iterator[_tracing.EnqueueSpan]:
        attributes = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue_name,
            "messaging.message.id": job_id,
            "rrq.job.function_name": function_name,
        }
        with self._tracer.start_as_current_span(
            f"send {queue_name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # the context of this PRODUCER span
            yield _EnqueueSpan(span, carrier)

    def enqueue_span(
        self, function_name: str, queue_name: str, job_id: str
    ) -> AbstractContextManager[_tracing.EnqueueSpan]:
        return self._enqueue_span(function_name, queue_name, job_id)

    @contextmanager
    def _execution_span(self, request: ExecutionRequest) -> Iterator[object]:
        parent = propagate.extract(dict(request.context.trace_context))
        attributes: dict[str, str | int] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": request.queue_name,
            "messaging.message.id": request.job_id,
            "rrq.job.function_name": request.function_name,
            "rrq.job.attempt": request.attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {request.function_name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span

    def execution_span(self, request: ExecutionRequest) -> AbstractContextManager[object]:
        if not request.context.trace_context and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        ):
            # No SDK and no producer context: the span would be an invalid,
            # non-recording one, and making it costs a quarter of a no-op job.
            return contextlib.nullcontext()
        return self._execution_span(request)


def automatic_tracer() -> _tracing.Tracer | None:
    """The runner's tracer when ``enable()`` was not called: the global provider's.

    None when OpenTelemetry is not installed.
    """
    if _MISSING is not None:
        return None
    return _OtelTracer(trace.get_tracer("rrq"))


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
