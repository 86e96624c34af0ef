"""Job status and the result record returned by the client."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["TERMINAL_STATUSES", "AttemptError", "JobResult", "JobStatus"]


class JobStatus(enum.StrEnum):
    """Where a job is in its lifecycle (``rrq.v1.JobStatus`` in job.proto).

    PENDING, ACTIVE and RETRYING are live; COMPLETED, FAILED and CANCELLED are
    terminal. ``str(status)`` is the lowercase name, e.g. ``"completed"``.
    """

    PENDING = "pending"
    ACTIVE = "active"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED, which never change again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class AttemptError:
    """The error of one failed attempt (an entry of the job's ``errors_json``).

    ``at`` is when the attempt's failure was recorded (Redis clock, aware UTC).
    """

    attempt: int
    error_type: str
    message: str
    traceback: str
    at: datetime


@dataclass(frozen=True, slots=True)
class JobResult:
    """A snapshot of one job record.

    ``result`` is the handler's decoded JSON return value (None until the job
    completed); ``last_error``/``last_error_type`` describe the most recent
    failed attempt (empty when none failed); ``errors`` holds every failed
    attempt's error, oldest first (the 100 most recent). ``unique_key``,
    ``rate_limit_key`` and ``debounce_key`` are the rule key the job was
    enqueued with (empty when none); ``cancel_requested`` is True once a cancel
    was asked for while an attempt ran. Times are timezone-aware UTC.
    """

    job_id: str
    status: JobStatus
    function_name: str
    queue_name: str
    attempt: int
    max_retries: int
    result: Any
    last_error: str
    last_error_type: str
    enqueued_at: datetime | None
    finished_at: datetime | None
    errors: list[AttemptError] = field(default_factory=list)
    unique_key: str = ""
    rate_limit_key: str = ""
    debounce_key: str = ""
    cancel_requested: bool = False
    run_at: datetime | None = None
    started_at: datetime | None = None

    def __str__(self) -> str:
        text = f"{self.status} (job {self.job_id}, {self.function_name} on {self.queue_name!r}"
        text += f", attempt {self.attempt})"
        if self.status is JobStatus.COMPLETED:
            text += f" result={self.result!r}"
        elif self.last_error:
            text += f" last_error={self.last_error_type}: {self.last_error}"
        return text
