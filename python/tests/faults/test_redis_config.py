"""F23b/c: an orchestrator refuses to start against a Redis that may evict keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import python_env
from rrq.testing import RedisServer

from .conftest import Harness, config_text


def run_orchestrator(harness: Harness, config: Path) -> subprocess.CompletedProcess[str]:
    """``rrq worker run --burst`` in the environment the harness gives its
    orchestrators (with the external runners' token that the config names)."""
    return subprocess.run(
        [harness.binary, "worker", "run", "--config", str(config), "--burst"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=harness.dir,
        check=False,
        env=python_env(),
    )


@pytest.mark.quick
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_f23_evicting_redis_is_refused(harness: Harness, tmp_path: Path, policy: str) -> None:
    with RedisServer(tmp_path / policy, tcp=True, aof=True, maxmemory_policy=policy) as redis:
        refused = run_orchestrator(harness, harness.write_config(redis.dsn))
        print(f"F23 {policy}: exit {refused.returncode}: {refused.stderr.strip().splitlines()[-1]}")
        assert refused.returncode == 2
        assert policy in refused.stderr
        assert "allow_evicting_redis" in refused.stderr

        allowed = tmp_path / f"{policy}-allowed.toml"
        allowed.write_text(config_text(redis.dsn, allow_evicting_redis=True), encoding="utf-8")
        started = run_orchestrator(harness, allowed)
        assert started.returncode == 0, started.stderr
        assert "WARN" in started.stderr
        assert "allow_evicting_redis" in started.stderr


@pytest.mark.quick
def test_f23_unreadable_policy_warns(harness: Harness, tmp_path: Path) -> None:
    with RedisServer(
        tmp_path / "noconfig", tcp=True, aof=True, extra_args=("--rename-command", "CONFIG", "")
    ) as redis:
        result = run_orchestrator(harness, harness.write_config(redis.dsn))
        assert result.returncode == 0, result.stderr
        assert "cannot read Redis maxmemory-policy" in result.stderr
