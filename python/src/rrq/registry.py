"""Handler registry: which function runs for which job name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rrq.execution import ExecutionRequest

__all__ = ["Handler", "Registry"]

# A handler takes the request and returns a JSON-serializable value, either
# directly (sync handlers run in a worker thread) or as a coroutine.
Handler = Callable[[ExecutionRequest], Awaitable[Any] | Any]


class Registry:
    """Maps job function names to handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Registers ``handler`` for jobs named ``name``.

        Raises ValueError when the name is empty or already registered, and
        TypeError when ``handler`` is not callable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"handler name must be a non-empty string, got {name!r}")
        if "#" in name:
            raise ValueError(f"handler name must not contain '#' (runner prefix), got {name!r}")
        if not callable(handler):
            raise TypeError(f"handler for {name!r} must be callable, got {handler!r}")
        if name in self._handlers:
            raise ValueError(f"a handler named {name!r} is already registered")
        self._handlers[name] = handler

    def get(self, name: str) -> Handler | None:
        """The handler registered for ``name``, or None."""
        return self._handlers.get(name)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)
