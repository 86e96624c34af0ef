"""Every exception RRQ raises, plus the two a handler raises to steer its job."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DuplicateJobError",
    "FatalJobError",
    "InvalidArgumentError",
    "InvalidOptionError",
    "InvalidParamsError",
    "JobNotFoundError",
    "PayloadTooLargeError",
    "RRQError",
    "RetryJob",
]


class RRQError(Exception):
    """Base class of every RRQ exception."""


class ConfigError(RRQError):
    """The configuration (rrq.toml, a mapping or the environment) is invalid."""


class InvalidOptionError(RRQError, ValueError):
    """An enqueue option is unknown or has an invalid value; nothing was written.

    ``option`` names the offending option (or argument) when there is one.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InvalidParamsError(RRQError, ValueError):
    """The job params are not a JSON object (``RRQ_INVALID_PARAMS``); nothing was written."""


class PayloadTooLargeError(RRQError, ValueError):
    """The params JSON is larger than ``max_payload_bytes`` (``RRQ_PAYLOAD_TOO_LARGE``)."""

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class InvalidArgumentError(RRQError, ValueError):
    """A script argument was rejected by Redis (``RRQ_INVALID_ARGUMENT``)."""


class DuplicateJobError(RRQError):
    """A job with this id already exists; nothing was written.

    ``status`` is the existing job's status (a :class:`rrq.job.JobStatus`), and
    ``queue_name`` the queue it was found in.
    """

    def __init__(self, job_id: str, status: object, queue_name: str) -> None:
        super().__init__(f"job {job_id!r} already exists in queue {queue_name!r} ({status})")
        self.job_id = job_id
        self.status = status
        self.queue_name = queue_name


class JobNotFoundError(RRQError, LookupError):
    """No job with this id exists (never enqueued, or its record expired)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class RetryJob(RRQError):  # noqa: N818 - the product's name for "retry me"
    """Raised by a handler to ask for another attempt.

    ``defer_seconds`` sets the delay before it; when None the orchestrator's
    backoff applies. The retry still counts against ``max_retries``. A
    negative delay means "now"; NaN, an infinity or more than 3,650 days
    (315,360,000 s) fails the attempt as ``InvalidRetryDelay`` instead.
    """

    def __init__(self, defer_seconds: float | None = None, message: str = "") -> None:
        super().__init__(message or "retry requested")
        self.defer_seconds = defer_seconds
        self.message = message


class FatalJobError(RRQError):
    """Raised by a handler to fail its job at once, without retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
