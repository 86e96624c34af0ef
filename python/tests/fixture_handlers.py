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


async def hang_until_cancelled(request: ExecutionRequest) -> None:
    """Writes ``started-<attempt>``, waits forever, and writes ``cancelled-<attempt>``
    when its task is cancelled (then lets the cancellation through)."""
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _write(request, f"cancelled-{request.attempt}", "1")
        raise


async def current_span(request: ExecutionRequest) -> dict[str, Any]:
    """The OpenTelemetry span the handler runs in (the runner did not call enable())."""
    from opentelemetry import trace  # noqa: PLC0415 - only this handler needs it

    context = trace.get_current_span().get_span_context()
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "valid": context.is_valid,
        "trace_context": dict(request.context.trace_context),
    }


async def whoami(request: ExecutionRequest) -> dict[str, Any]:
    return {"module": "a", "runner": os.environ.get("RRQ_RUNNER_NAME", ""), "pid": os.getpid()}


async def fail_unless_allowed(request: ExecutionRequest) -> dict[str, Any]:
    """Fails until the test creates ``<dir>/allow``."""
    if not (_dir(request) / "allow").exists():
        raise RuntimeError(f"not allowed on attempt {request.attempt}")
    return {"attempt": request.attempt}


async def log_run(request: ExecutionRequest) -> dict[str, Any]:
    """Appends ``<job id> <attempt>`` to ``<dir>/runs.log`` (one short append: atomic)."""
    with (_dir(request) / "runs.log").open("a", encoding="utf-8") as out:
        out.write(f"{request.job_id} {request.attempt}\n")
    return {"job_id": request.job_id}


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
    hang_until_cancelled,
    current_span,
    whoami,
    fail_unless_allowed,
    log_run,
):
    registry.register(_handler.__name__, _handler)

settings = PythonRunnerSettings(registry=registry)
