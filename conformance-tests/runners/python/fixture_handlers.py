"""The standard conformance handlers (conformance-tests/README.md), for the Python runner.

Started by the orchestrator as ``python -m rrq.runner_cli --settings
fixture_handlers:settings`` with this folder as the working directory.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from rrq.exceptions import RetryJob
from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

LANGUAGE = "python"


class FixtureError(Exception):
    """The error type the failing handlers raise (recorded as ``FixtureError``)."""


def _write(request: ExecutionRequest, name: str, text: str) -> None:
    """Writes ``<params.dir>/<name>`` atomically (temp file, then rename)."""
    path = Path(request.params["dir"]) / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


async def echo(request: ExecutionRequest) -> dict[str, Any]:
    return request.params


async def whoami(request: ExecutionRequest) -> dict[str, Any]:
    return {"language": LANGUAGE, "pid": os.getpid()}


async def sleep(request: ExecutionRequest) -> dict[str, Any]:
    seconds = request.params["seconds"]
    await asyncio.sleep(seconds)  # cancellable: the runner cancels this task
    return {"slept": seconds}


async def fail_then_succeed(request: ExecutionRequest) -> dict[str, Any]:
    if request.attempt <= request.params["failures"]:
        raise FixtureError(f"attempt {request.attempt} fails")
    return {"attempt": request.attempt}


async def always_fail(request: ExecutionRequest) -> None:
    raise FixtureError("always fails")


async def fail_with_bytes(request: ExecutionRequest) -> None:
    raise FixtureError("x" * int(request.params["bytes"]))


async def retry_with_delay(request: ExecutionRequest) -> dict[str, Any]:
    if request.attempt == 1:
        raise RetryJob(defer_seconds=request.params["delay_seconds"], message="retry later")
    return {"attempt": request.attempt}


def hang_ignore_cancel(request: ExecutionRequest) -> None:
    """A plain function: the runner runs it in a thread, which cannot be interrupted."""
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    threading.Event().wait()


async def crash(request: ExecutionRequest) -> dict[str, Any]:
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    if request.attempt <= request.params.get("crash_attempts", 1):
        os._exit(137)  # no cleanup, as a crash
    return {"attempt": request.attempt}


async def large_result(request: ExecutionRequest) -> dict[str, Any]:
    return {"data": "x" * request.params["bytes"]}


async def non_serializable(request: ExecutionRequest) -> object:
    return {1, 2, 3}  # a set: not JSON


def _trace_id_of(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else ""


async def trace_id(request: ExecutionRequest) -> dict[str, str]:
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency
    except ImportError:
        pass
    else:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return {"trace_id": f"{context.trace_id:032x}"}
    return {"trace_id": _trace_id_of(request.context.trace_context.get("traceparent", ""))}


async def report_cancel(request: ExecutionRequest) -> None:
    _write(request, f"started-{request.attempt}", str(os.getpid()))
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        _write(request, f"cancelled-{request.attempt}", "1")
        raise


registry = Registry()
for _handler in (
    echo,
    whoami,
    sleep,
    fail_then_succeed,
    always_fail,
    fail_with_bytes,
    retry_with_delay,
    hang_ignore_cancel,
    crash,
    large_result,
    non_serializable,
    trace_id,
    report_cancel,
):
    registry.register(_handler.__name__, _handler)

settings = PythonRunnerSettings(registry=registry)
