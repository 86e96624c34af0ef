"""The hook through which an optional tracing integration sees jobs.

The client and the runner call the installed :class:`Tracer` (none by
default); :mod:`rrq.integrations.otel` installs one backed by OpenTelemetry.
The trace context travels as W3C ``traceparent``/``tracestate`` text in the
job record (``trace_parent``/``trace_state``) and in each ExecutionRequest.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Protocol

from rrq.execution import ExecutionRequest

__all__ = ["Tracer", "get_tracer", "set_tracer"]


class Tracer(Protocol):
    """What a tracing integration provides."""

    def enqueue_span(
        self, function_name: str, queue_name: str
    ) -> AbstractContextManager[Mapping[str, str]]:
        """Wraps an enqueue; yields the W3C carrier (``traceparent``, ``tracestate``) to store."""
        ...

    def execution_span(self, request: ExecutionRequest) -> AbstractContextManager[object]:
        """Wraps one handler execution, continuing ``request.context.trace_context``."""
        ...


_tracer: Tracer | None = None


def set_tracer(tracer: Tracer | None) -> None:
    """Installs (or, with None, removes) the process-wide tracer."""
    global _tracer  # noqa: PLW0603 - one process-wide hook, like logging's
    _tracer = tracer


def get_tracer() -> Tracer | None:
    """The installed tracer, or None when tracing is off."""
    return _tracer
