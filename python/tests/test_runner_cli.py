"""Registry, settings and the rrq-runner command line (no orchestrator)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_env
from rrq import _wire
from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_cli import SettingsError, load_settings
from rrq.runner_settings import PythonRunnerSettings
from rrq.v1 import runner_pb2


async def handler(request: ExecutionRequest) -> None:
    return None


def test_registry_rules() -> None:
    registry = Registry()
    registry.register("a", handler)
    registry.register("b", lambda request: 1)
    assert registry.names() == ["a", "b"]
    assert registry.get("a") is handler
    assert registry.get("zzz") is None
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", handler)
    with pytest.raises(TypeError, match="callable"):
        registry.register("c", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        registry.register("", handler)


def test_settings_validation() -> None:
    with pytest.raises(TypeError):
        PythonRunnerSettings(registry={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_in_flight"):
        PythonRunnerSettings(registry=Registry(), max_in_flight=0)
    assert PythonRunnerSettings(registry=Registry(), max_in_flight=3).max_in_flight == 3


def write_app(root: Path) -> None:
    app = root / "myapp_cli"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "runner.py").write_text(
        "from rrq.registry import Registry\n"
        "from rrq.runner_settings import PythonRunnerSettings\n"
        "settings = PythonRunnerSettings(registry=Registry())\n"
        "not_settings = 42\n"
    )


def test_load_settings_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_app(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    colon = load_settings("myapp_cli.runner:settings")
    dotted = load_settings("myapp_cli.runner.settings")
    assert colon is dotted
    with pytest.raises(SettingsError, match="not a"):
        load_settings("myapp_cli.runner:not_settings")
    with pytest.raises(SettingsError, match="no attribute"):
        load_settings("myapp_cli.runner:missing")
    with pytest.raises(SettingsError, match="cannot import"):
        load_settings("nowhere_at_all.runner:settings")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("myapp_cli.runner:missing", "no attribute"),
        ("myapp_cli.runner:not_settings", "not a"),
        ("nowhere_at_all:settings", "cannot import"),
        ("justaname", "must look like"),
    ],
)
def test_cli_exits_2_with_a_clear_message(tmp_path: Path, reference: str, message: str) -> None:
    write_app(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "rrq.runner_cli", "--settings", reference],
        cwd=tmp_path,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_cli_without_address_exits_2(tmp_path: Path) -> None:
    write_app(tmp_path)
    env = python_env()
    env.pop("RRQ_ORCHESTRATOR_ADDR", None)
    done = subprocess.run(
        [sys.executable, "-m", "rrq.runner_cli", "--settings", "myapp_cli.runner:settings"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "RRQ_ORCHESTRATOR_ADDR" in done.stderr


def test_cli_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rrq.runner_cli", "--help"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "--settings" in done.stdout
    assert "--connect" in done.stdout


def test_queued_outcome_batches_leave_as_one_message() -> None:
    """The runner's writer merges outcome batches queued behind each other,
    keeping every other message (and the close) in order."""

    def outcomes(*ids: str) -> runner_pb2.RunnerMessage:
        batch = runner_pb2.OutcomeBatch(
            outcomes=[runner_pb2.Outcome(job_id=i, attempt=1) for i in ids]
        )
        return runner_pb2.RunnerMessage(outcomes=batch)

    queued: asyncio.Queue[runner_pb2.RunnerMessage | None] = asyncio.Queue()
    heartbeat = runner_pb2.RunnerMessage(heartbeat=runner_pb2.Heartbeat(in_flight=2))
    for m in (outcomes("b"), heartbeat, outcomes("c"), outcomes("d"), None, outcomes("e")):
        queued.put_nowait(m)
    out = _wire.coalesce(outcomes("a"), queued)
    kinds = [m.WhichOneof("kind") if m is not None else None for m in out]
    assert kinds == ["outcomes", "heartbeat", "outcomes", None]
    first, _, third, _ = out
    assert first is not None
    assert third is not None
    assert [o.job_id for o in first.outcomes.outcomes] == ["a", "b"]
    assert [o.job_id for o in third.outcomes.outcomes] == ["c", "d"]
    assert queued.qsize() == 1  # what follows the close stays queued
