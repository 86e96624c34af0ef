"""Handlers of F40 (``faults.flood_handlers:settings``): the oracle's ``work``
and ``flood``, which writes long lines to its stdout and stderr."""

from __future__ import annotations

import os
import time

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

from .oracle_handlers import _log, work


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def flood(request: ExecutionRequest) -> int:
    """Writes ``lines`` lines of ``line_bytes`` bytes to stdout and to stderr,
    alternating, then ``short_lines`` lines of 64 bytes to stderr (a sync
    handler: it runs in a thread and blocks on a full pipe)."""
    job, attempt, pid = request.job_id, request.attempt, os.getpid()
    _log(f"start {job} {attempt} {pid} {time.time():.6f}")
    line = b"f" * (int(request.params["line_bytes"]) - 1) + b"\n"
    lines = int(request.params["lines"])
    for i in range(lines):
        _write_all(1 if i % 2 == 0 else 2, line)
    short = b"s" * 63 + b"\n"
    short_lines = int(request.params.get("short_lines", 0))
    for start in range(0, short_lines, 1000):
        _write_all(2, short * min(1000, short_lines - start))
    _log(f"end {job} {attempt} {pid} {time.time():.6f} ok")
    return lines * len(line) + short_lines * len(short)


registry = Registry()
registry.register("work", work)
registry.register("flood", flood)
settings = PythonRunnerSettings(registry=registry)
