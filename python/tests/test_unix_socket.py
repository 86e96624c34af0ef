"""Spawned runners talk to the orchestrator over a private unix socket by default.

A runner with ``cmd`` and no ``tcp_socket`` gets a unix socket (mode 0600) in a
fresh directory (mode 0700): the ready line lists ``python=unix:/path``, the
spawned runner dials it, jobs run, and the directory is gone after shutdown.
"""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path

from conftest import SRC_DIR, TESTS_DIR, TIMINGS, find_orchestrator_binary, python_env
from rrq.client import RRQClient
from rrq.testing import Orchestrator


def unix_config(directory: Path, redis_dsn: str) -> Path:
    cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", "fixture_handlers:settings"]
    path = directory / "rrq.toml"
    path.write_text(
        f"""\
[rrq]
redis_dsn = "{redis_dsn}"
default_runner_name = "python"
{TIMINGS}
[rrq.runners.python]
cmd = [{", ".join(f'"{part}"' for part in cmd)}]
max_in_flight = 2
cwd = "{TESTS_DIR}"

[rrq.runners.python.env]
PYTHONPATH = "{SRC_DIR}:{TESTS_DIR}"
""",
        encoding="utf-8",
    )
    return path


def modes(socket: Path) -> tuple[int, int]:
    return socket.stat().st_mode, socket.parent.stat().st_mode


def exists(path: Path) -> bool:
    return path.exists()


async def test_spawned_runner_uses_a_private_unix_socket(
    redis_dsn: str, tmp_path: Path, queue: str
) -> None:
    config = unix_config(tmp_path, redis_dsn)
    orchestrator = Orchestrator(find_orchestrator_binary(), config, cwd=tmp_path, env=python_env())
    with orchestrator:
        assert orchestrator.log is not None
        ready = orchestrator.log.wait_for(Orchestrator.READY)
        match = re.search(r"listen=\[python=unix:([^\],]+)\]", ready)
        assert match, ready
        socket = Path(match.group(1))
        mode, dir_mode = modes(socket)
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(dir_mode) == 0o700
        orchestrator.wait_for_runners(1)
        async with RRQClient(config={"redis_dsn": redis_dsn}) as client:
            job_id = await client.enqueue("echo", {"queue_name": queue, "params": {"n": 7}})
            result = await client.wait_for_result(job_id, timeout=30)
            assert result.result["params"] == {"n": 7}, result
        orchestrator.stop()
    assert not exists(socket.parent)
