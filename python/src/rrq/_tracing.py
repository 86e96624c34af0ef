"""The hook through which an optional tracing integration sees jobs.

The client and the runner call the installed :class:`Tracer` (none by
default); :mod:`rrq.integrations.otel` installs one backed by OpenTelemetry.
The trace context travels as W3C ``traceparent``/``tracestate`` text in the
job record (``trace_parent``/``trace_state``) and in each ExecutionRequest.

The runner continues a job's trace even when nobody called ``otel.enable()``
in its process, as long as ``opentelemetry-api`` is importable
(:func:`execution_tracer`); without it, handlers run untraced.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from rrq.execution import ExecutionRequest

__all__ = ["EnqueueSpan", "Tracer", "execution_tracer", "get_tracer", "set_tracer"]


class EnqueueSpan(Protocol):
    """The span around one enqueue, as the client sees it."""

    @property
    def carrier(self) -> Mapping[str, str]:
        """The W3C carrier (``traceparent``, ``tracestate``) to store with the job."""
        ...

    def set_job_id(self, job_id: str) -> None:
        """Records the id of the job the enqueue wrote (or found)."""
        ...


class Tracer(Protocol):
    """What a tracing integration provides."""

    def enqueue_span(
        self, function_name: str, queue_name: str, job_id: str
    ) -> AbstractContextManager[EnqueueSpan]:
        """Wraps an enqueue; the yielded span's carrier is stored with the job."""
        ...

    def execution_span(self, request: ExecutionRequest) -> AbstractContextManager[object]:
        """Wraps one handler execution, continuing ``request.context.trace_context``."""
        ...


_tracer: Tracer | None = None
_automatic: Tracer | None = None
_automatic_resolved = False


def set_tracer(tracer: Tracer | None) -> None:
    """Installs (or, with None, removes) the process-wide tracer."""
    global _tracer  # noqa: PLW0603 - one process-wide hook, like logging's
    _tracer = tracer


def get_tracer() -> Tracer | None:
    """The installed tracer, or None when tracing is off."""
    return _tracer


def execution_tracer() -> Tracer | None:
    """The tracer the runner wraps handlers in.

    The installed one, else an OpenTelemetry tracer on the global provider when
    ``opentelemetry-api`` is importable (so a handler always runs in the job's
    trace), else None.
    """
    global _automatic, _automatic_resolved  # noqa: PLW0603 - resolved once per process
    if _tracer is not None:
        return _tracer
    if not _automatic_resolved:
        _automatic_resolved = True
        from rrq.integrations import otel  # noqa: PLC0415 - optional, and imports this module

        _automatic = otel.automatic_tracer()
    return _automatic
