"""``rrq-runner --settings module:attribute``: starts a Python runner process.

The orchestrator runs this command (``cmd`` in rrq.toml) with the address to
dial in ``RRQ_ORCHESTRATOR_ADDR``. Like uvicorn, the current directory is put
first on ``sys.path`` so the settings module of the app is importable.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rrq.runner import HANDLER_THREAD_PREFIX, Runner, RunnerConfigError
from rrq.runner_settings import PythonRunnerSettings

__all__ = ["load_settings", "main"]

EXIT_USAGE = 2


class SettingsError(Exception):
    """The --settings reference does not lead to a PythonRunnerSettings."""


def load_settings(reference: str) -> PythonRunnerSettings:
    """Imports ``module:attribute`` (or dotted ``module.attribute``)."""
    if ":" in reference:
        module_name, _, attribute = reference.partition(":")
    else:
        module_name, _, attribute = reference.rpartition(".")
    if not module_name or not attribute:
        raise SettingsError(
            f"--settings must look like 'package.module:attribute', got {reference!r}"
        )
    cwd = str(Path.cwd())
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise SettingsError(
                f"cannot import settings module {module_name!r} (from {cwd}): {exc}"
            ) from exc
        raise
    try:
        settings = getattr(module, attribute)
    except AttributeError:
        raise SettingsError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(settings, PythonRunnerSettings):
        raise SettingsError(
            f"{reference} is a {type(settings).__name__}, not a "
            "rrq.runner_settings.PythonRunnerSettings"
        )
    return settings


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        uvloop: Any = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rrq-runner``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="rrq-runner", description="Run RRQ job handlers for an orchestrator."
    )
    parser.add_argument(
        "--settings",
        required=True,
        metavar="MODULE:ATTR",
        help="the PythonRunnerSettings to serve, e.g. myapp.runner:settings",
    )
    parser.add_argument(
        "--connect",
        metavar="HOST:PORT|unix:PATH",
        help="orchestrator address (default: $RRQ_ORCHESTRATOR_ADDR)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RRQ_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    try:
        settings = load_settings(args.settings)
        runner = Runner(settings, addr=args.connect)
    except (SettingsError, RunnerConfigError) as exc:
        print(f"rrq-runner: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with asyncio.Runner(loop_factory=_event_loop_factory()) as loop_runner:
        code = loop_runner.run(runner.run())
    busy = [t for t in threading.enumerate() if t.name.startswith(HANDLER_THREAD_PREFIX)]
    if busy:
        # A sync handler is still running and cannot be interrupted; do not
        # wait for it at interpreter exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
