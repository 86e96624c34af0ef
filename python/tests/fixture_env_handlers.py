"""A handler that returns its runner's environment (tests/test_secrets.py)."""

from __future__ import annotations

import os

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings


def environ(request: ExecutionRequest) -> dict[str, str]:
    return dict(os.environ)


registry = Registry()
registry.register("environ", environ)
settings = PythonRunnerSettings(registry=registry)
