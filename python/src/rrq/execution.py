"""What a handler receives: :class:`ExecutionRequest` (re-exported by :mod:`rrq.runner`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["ExecutionContext", "ExecutionRequest"]


@dataclass(frozen=True, slots=True)
class ExecutionContext:
    """Facts about the attempt being run.

    ``attempt`` starts at 1. ``deadline`` is when the orchestrator cancels the
    attempt (Redis clock). ``trace_context`` holds ``traceparent`` and
    ``tracestate`` when the producer traced the job.
    """

    attempt: int
    queue_name: str
    enqueued_at: datetime
    deadline: datetime
    max_retries: int
    trace_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecutionRequest:
    """One attempt of one job, as passed to a handler."""

    job_id: str
    function_name: str
    params: dict[str, Any]
    context: ExecutionContext

    @property
    def attempt(self) -> int:
        """Attempt number, starting at 1."""
        return self.context.attempt

    @property
    def queue_name(self) -> str:
        """Queue the job came from."""
        return self.context.queue_name
