"""The handler the fault rows' runners serve (``faults.oracle_handlers:settings``).

Every execution appends ``start <job_id> <attempt> <pid> <t>`` to the oracle
log named by ``$RRQ_ORACLE_LOG`` before its work and ``end <job_id> <attempt>
<pid> <t> <how>`` after it (``ok``, ``fail`` for a designed failure,
``cancelled``), one ``write`` per line on an ``O_APPEND`` descriptor: a runner
killed with SIGKILL keeps every line already written (the page cache has it).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

_fd: int | None = None


def _log(line: str) -> None:
    global _fd  # noqa: PLW0603 - one descriptor per runner process
    if _fd is None:
        _fd = os.open(os.environ["RRQ_ORACLE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, (line + "\n").encode())


async def _wait_for_file(path: str) -> None:
    # The test creates the file when the attempt may end; a file is the one
    # signal both processes share without a channel of their own.
    while not await asyncio.to_thread(Path(path).exists):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # bounded poll: asyncio has no file-created event


async def work(request: ExecutionRequest) -> dict[str, Any]:
    """Sleeps ``sleep_ms``, waits for ``hold_until_file`` to exist (when given);
    fails attempt 1 if ``fail_first``; returns ``result_bytes`` chars."""
    params = request.params
    job, attempt, pid = request.job_id, request.attempt, os.getpid()
    _log(f"start {job} {attempt} {pid} {time.time():.6f}")
    how = "cancelled"
    try:
        await asyncio.sleep(params.get("sleep_ms", 0) / 1000)
        if "hold_until_file" in params:
            await _wait_for_file(params["hold_until_file"])
        if params.get("fail_first") and attempt == 1:
            how = "fail"
            raise RuntimeError("designed failure on attempt 1")
        how = "ok"
        return {"job": job, "attempt": attempt, "blob": "x" * int(params.get("result_bytes", 0))}
    finally:
        _log(f"end {job} {attempt} {pid} {time.time():.6f} {how}")


async def poison(request: ExecutionRequest) -> None:
    """F2: kills its own runner process on every attempt (a designed failure)."""
    job, attempt, pid = request.job_id, request.attempt, os.getpid()
    _log(f"start {job} {attempt} {pid} {time.time():.6f}")
    _log(f"end {job} {attempt} {pid} {time.time():.6f} fail")
    os._exit(137)


def spin(request: ExecutionRequest) -> None:
    """F13: a sync handler (so it runs in a thread) that never returns and cannot be cancelled."""
    job, attempt, pid = request.job_id, request.attempt, os.getpid()
    _log(f"start {job} {attempt} {pid} {time.time():.6f}")
    while True:
        pass


registry = Registry()
registry.register("work", work)
registry.register("poison", poison)
registry.register("spin", spin)
settings = PythonRunnerSettings(registry=registry)
