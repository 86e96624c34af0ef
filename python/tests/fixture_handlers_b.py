"""The handlers of a second Python runner ("runnerB") in the routing tests.

``whoami`` exists in both fixture modules, so a result tells which runner ran
the job; ``only_b`` exists here alone.
"""

from __future__ import annotations

import os
from typing import Any

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings


async def whoami(request: ExecutionRequest) -> dict[str, Any]:
    return {"module": "b", "runner": os.environ.get("RRQ_RUNNER_NAME", ""), "pid": os.getpid()}


async def only_b(request: ExecutionRequest) -> dict[str, Any]:
    return {"module": "b", "params": request.params}


registry = Registry()
registry.register("whoami", whoami)
registry.register("only_b", only_b)

settings = PythonRunnerSettings(registry=registry)
