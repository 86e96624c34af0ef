"""Harness of the fault rows: a private AOF Redis, real orchestrators and runners, the oracle.

Every test here gets the ``faults`` marker. The default ``pytest`` run of
python/ keeps only the rows also marked ``quick`` (a few seconds each);
``pytest tests/faults`` or ``pytest -m faults`` runs them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conftest import (
    EXTERNAL_TOKEN_ENV,
    SRC_DIR,
    TESTS_DIR,
    find_orchestrator_binary,
    python_env,
)
from rrq.client import RRQClient
from rrq.testing import Orchestrator, RedisServer, free_port

from .oracle import HandlerLog, Producer, TerminalMonitor

FAULTS_DIR = Path(__file__).resolve().parent

ORACLE_SETTINGS = "faults.oracle_handlers:settings"

# The timings of docs/guarantees.md, "How it is proved": shrunk for tests.
TIMINGS = {
    "lease_seconds": 3,
    "lease_renew_interval_seconds": 1,
    "recovery_interval_seconds": 0.5,
    "runner_heartbeat_interval_seconds": 0.5,
    "runner_heartbeat_timeout_seconds": 2,
    "cancel_grace_seconds": 1,
    "shutdown_grace_seconds": 3,
    "retry_backoff_initial_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    targeted = bool(config.option.markexpr) or any(
        Path(arg.split("::")[0]).resolve().is_relative_to(FAULTS_DIR) for arg in config.args
    )
    keep, drop = [], []
    for item in items:
        if not Path(str(item.path)).is_relative_to(FAULTS_DIR):
            keep.append(item)
            continue
        item.add_marker(pytest.mark.faults)
        if targeted or item.get_closest_marker("quick") is not None:
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def config_text(
    redis_dsn: str,
    *,
    pool_size: int = 2,
    max_in_flight: int = 4,
    tcp_socket: str = "127.0.0.1:0",
    spawn: bool = True,
    **overrides: object,
) -> str:
    """``spawn=False`` declares external runners only (they dial ``tcp_socket``).

    Either way external runners (and the rows' hand-driven streams) may
    connect with the tests' external token (``token_env``)."""
    settings = {**TIMINGS, **overrides}
    lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
    cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", ORACLE_SETTINGS]
    spawned = f"""\
cmd = [{", ".join(f'"{part}"' for part in cmd)}]
pool_size = {pool_size}
cwd = "{TESTS_DIR}"

[rrq.runners.python.env]
PYTHONPATH = "{os.pathsep.join([str(SRC_DIR), str(TESTS_DIR)])}"
"""
    return f"""\
[rrq]
redis_dsn = "{redis_dsn}"
default_runner_name = "python"
{chr(10).join(lines)}

[rrq.runners.python]
type = "socket"
tcp_socket = "{tcp_socket}"
max_in_flight = {max_in_flight}
token_env = "{EXTERNAL_TOKEN_ENV}"
""" + (spawned if spawn else "")


class Harness:
    """One row's world: Redis, orchestrators, oracle logs; everything killed at the end."""

    def __init__(self, directory: Path, redis_server: RedisServer) -> None:
        self.dir = directory
        self.redis = redis_server
        self.binary = find_orchestrator_binary()
        self.oracle = HandlerLog(directory / "handler.log")
        self.orchestrators: list[Orchestrator] = []
        self._configs = 0

    def write_config(self, redis_dsn: str | None = None, **settings: object) -> Path:
        self._configs += 1
        path = self.dir / f"rrq-{self._configs}.toml"
        path.write_text(config_text(redis_dsn or self.redis.dsn, **settings), encoding="utf-8")  # type: ignore[arg-type]
        return path

    def orchestrator(
        self, config: Path, *, runners: int | None = 2, start: bool = True
    ) -> Orchestrator:
        orch = Orchestrator(
            self.binary,
            config,
            cwd=self.dir,
            env=python_env({"RRQ_ORACLE_LOG": str(self.oracle.path), "RUST_LOG": "info"}),
        )
        self.orchestrators.append(orch)
        if start:
            orch.start()
            if runners:
                orch.wait_for_runners(runners)
        return orch

    def runner_pids(self, orch: Orchestrator) -> list[int]:
        """PIDs of the runner processes this orchestrator started and still runs."""
        assert orch.process is not None
        parent = orch.process.pid
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def logs(self) -> str:
        return "\n".join(
            f"--- {o.log_path} ---\n{o.log.text() if o.log else ''}" for o in self.orchestrators
        )

    def close(self) -> None:
        for orch in self.orchestrators:
            if orch.process is not None and orch.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(orch.process.pid, signal.SIGKILL)
                orch.process.wait()


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis as the rows want it: AOF everysec, noeviction, loopback, free port."""
    with RedisServer(tmp_path / "redis", tcp=True, aof=True, maxmemory_policy="noeviction") as r:
        yield r


@pytest.fixture
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, fault_redis: RedisServer
) -> Iterator[Harness]:
    h = Harness(tmp_path, fault_redis)
    try:
        yield h
    finally:
        h.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(h.logs(), file=sys.stderr)


@pytest.fixture
async def fault_client(fault_redis: RedisServer) -> AsyncIterator[RRQClient]:
    async with RRQClient(config={"redis_dsn": fault_redis.dsn}) as c:
        yield c


@pytest.fixture
def producer(fault_client: RRQClient, tmp_path: Path) -> Producer:
    return Producer(fault_client, tmp_path / "producer.log")


@pytest.fixture
def monitor(fault_redis: RedisServer) -> Iterator[TerminalMonitor]:
    m = TerminalMonitor(fault_redis.dsn)
    try:
        yield m
    finally:
        m.stop()


__all__ = ["ORACLE_SETTINGS", "Harness", "free_port"]
