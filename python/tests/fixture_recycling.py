"""Handlers of the runner-hygiene tests (``fixture_recycling:settings``):
each reports the pid of the runner process that ran it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings

# What ``leak`` keeps alive: a leaking handler's memory stays with the process.
_leaked: list[bytes] = []

# A child that ignores SIGTERM and sleeps, writing its pid first.
_STUBBORN = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "time.sleep(3600)\n"
)


async def whoami(request: ExecutionRequest) -> dict[str, Any]:
    return {"pid": os.getpid(), "attempt": request.attempt}


async def leak(request: ExecutionRequest) -> dict[str, Any]:
    """Keeps ``mib`` MiB of written (resident) memory for the life of the process."""
    _leaked.append(b"x" * (int(request.params["mib"]) << 20))
    return {"pid": os.getpid(), "attempt": request.attempt}


def start_child(request: ExecutionRequest) -> dict[str, Any]:
    """Starts a child that ignores SIGTERM (``setsid`` true: in a session of its
    own); it writes its pid to ``pid_file`` once running. Sync: it runs in a
    thread, where waiting for the child blocks nothing."""
    pid_file = Path(request.params["pid_file"])
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUBBORN, str(pid_file)],
        start_new_session=bool(request.params.get("setsid")),
        stdin=subprocess.DEVNULL,
    )
    while not pid_file.exists() or not pid_file.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"the child exited with {proc.returncode}")
        time.sleep(0.01)  # bounded poll: the child's start has no event here
    return {"pid": os.getpid(), "child": proc.pid, "signal": int(signal.SIGTERM)}


registry = Registry()
for _handler in (whoami, leak, start_child):
    registry.register(_handler.__name__, _handler)
settings = PythonRunnerSettings(registry=registry)
