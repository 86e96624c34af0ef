"""Handlers the orchestrator's Python runners serve in the integration tests.

Imported by ``rrq-runner --settings fixture_handlers:settings`` with this
directory as the working directory. Handlers that the tests synchronise with
write files into ``params["dir"]`` (a per-test directory).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from rrq.exceptions import FatalJobError, RetryJob
from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings


def _dir(request: ExecutionRequest) -> Path:
    return Path(request.params["dir"])


def _write(request: ExecutionRequest, name: str, text: str) -> None:
    path = _dir(request) / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: readers never see a partial file


async def echo(request: ExecutionRequest) -> dict[str, Any]:
    return {
        "params": request.params,
        "attempt": request.attempt,
        "queue": request.queue_name,
        "job_id": request.job_id,
        "pid": os.getpid(),
    }


def sync_echo(request: ExecutionRequest) -> dict[str, Any]:
    return {"params": request.params, "thread": threading.current_thread().name}


async def fail_until(request: ExecutionRequest) -> dict[str, Any]:
    if request.attempt < request.params["succeed_on"]:
        raise ValueError(f"attempt {request.attempt} fails")
    return {"attempt": request.attempt}


async def retry_with_defer(request: ExecutionRequest) -> dict[str, Any]:
    if request.attempt == 1:
        _write(request, "first_attempt", str(time.time()))
        raise RetryJob(defer_seconds=request.params["defer"], message="not yet")
    return {"attempt": request.attempt, "at": time.time()}


async def always_fail(request: ExecutionRequest) -> None:
    raise RuntimeError(f"boom on attempt {request.attempt}")


async def fatal(request: ExecutionRequest) -> None:
    raise FatalJobError("cannot ever work")


async def hang(request: ExecutionRequest) -> None:
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    await asyncio.Event().wait()


def sync_hang(request: ExecutionRequest) -> None:
    """A plain function that never returns: a thread cannot be interrupted."""
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    threading.Event().wait()


async def hang_once(request: ExecutionRequest) -> dict[str, Any]:
    """Hangs the first time it runs (writing its pid), returns the next time."""
    first = _dir(request) / "first_run"
    if not first.exists():
        _write(request, "first_run", str(os.getpid()))
        await asyncio.Event().wait()
    return {"attempt": request.attempt, "pid": os.getpid()}


async def short_job(request: ExecutionRequest) -> dict[str, Any]:
    _write(request, "started", str(os.getpid()))
    await asyncio.sleep(request.params.get("seconds", 0.5))  # the job's own work
    return {"done": True}


async def trace_context(request: ExecutionRequest) -> dict[str, str]:
    return dict(request.context.trace_context)


async def not_serializable(request: ExecutionRequest) -> object:
    return {"value": {1, 2, 3}}


registry = Registry()
for _handler in (
    echo,
    sync_echo,
    fail_until,
    retry_with_defer,
    always_fail,
    fatal,
    hang,
    hang_once,
    sync_hang,
    short_job,
    not_serializable,
    trace_context,
):
    registry.register(_handler.__name__, _handler)

settings = PythonRunnerSettings(registry=registry)
