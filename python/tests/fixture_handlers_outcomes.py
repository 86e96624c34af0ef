"""Handlers whose outcomes are hard to encode, for test_outcome_encoding.

Jobs of one ``group`` wait for each other (``size`` of them) and then finish in
the same event-loop iteration, so the runner sends their outcomes in one batch.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from rrq.exceptions import RetryJob
from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

_groups: dict[str, tuple[list[str], asyncio.Event]] = {}


async def together(request: ExecutionRequest) -> dict[str, Any]:
    """Finishes with its group as ``params["mode"]`` says."""
    params = request.params
    arrived, all_here = _groups.setdefault(params["group"], ([], asyncio.Event()))
    arrived.append(request.job_id)
    if len(arrived) >= params["size"]:
        all_here.set()
    await all_here.wait()
    mode = params["mode"]
    if mode == "surrogate":
        # What os.fsdecode gives for a file name that is not UTF-8.
        name = b"report-\xff.csv".decode("utf-8", "surrogateescape")
        raise FileNotFoundError(f"cannot open {name}")
    if mode == "defer":
        raise RetryJob(defer_seconds=float(params["defer"]), message="later")
    if mode == "result_surrogate":
        return {"name": "\udcff"}
    if mode == "huge":
        raise ValueError("x" * params["bytes"])
    return {"pid": os.getpid()}


registry = Registry()
registry.register("together", together)
settings = PythonRunnerSettings(registry=registry)
