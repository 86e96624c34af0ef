"""What a runner app declares: its handlers and optional overrides."""

from __future__ import annotations

from dataclasses import dataclass

from rrq.registry import Registry

__all__ = ["PythonRunnerSettings"]


@dataclass(frozen=True, slots=True)
class PythonRunnerSettings:
    """Settings for ``rrq-runner --settings module:attribute``.

    ``max_in_flight`` overrides ``$RRQ_RUNNER_MAX_IN_FLIGHT`` (which the
    orchestrator sets from rrq.toml); ``orchestrator_addr`` (``host:port``)
    overrides ``$RRQ_ORCHESTRATOR_ADDR``. ``shutdown_grace_seconds`` is how long
    running jobs may finish after SIGTERM before they are cancelled.
    """

    registry: Registry
    max_in_flight: int | None = None
    orchestrator_addr: str | None = None
    shutdown_grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.registry, Registry):
            raise TypeError(f"registry must be a rrq.registry.Registry, got {self.registry!r}")
        if self.max_in_flight is not None and (
            isinstance(self.max_in_flight, bool)
            or not isinstance(self.max_in_flight, int)
            or self.max_in_flight < 1
        ):
            raise ValueError(f"max_in_flight must be an integer >= 1, got {self.max_in_flight!r}")
        if self.shutdown_grace_seconds < 0:
            raise ValueError("shutdown_grace_seconds must not be negative")
