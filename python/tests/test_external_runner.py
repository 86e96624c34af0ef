"""A runner started by hand (``rrq-runner --connect``), not spawned by the orchestrator."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    TESTS_DIR,
    OrchestratorFactory,
    external_runner_env,
    find_orchestrator_binary,
    write_config,
)
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import ProcessLog, free_port


class ExternalRunner:
    def __init__(self, port: int, log_path: Path) -> None:
        env = external_runner_env()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rrq.runner_cli",
                "--settings",
                "fixture_handlers:settings",
                "--connect",
                f"127.0.0.1:{port}",
            ],
            cwd=TESTS_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        self.log = ProcessLog(self.process.stdout, log_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def external(
    redis_dsn: str, tmp_path: Path
) -> Iterator[tuple[OrchestratorFactory, ExternalRunner]]:
    port = free_port()
    config = write_config(tmp_path, redis_dsn, port, spawn=False)
    factory = OrchestratorFactory(find_orchestrator_binary(), config, tmp_path)
    runner: ExternalRunner | None = None
    try:
        factory.start(wait_for_runner=False)
        runner = ExternalRunner(port, tmp_path / "runner.log")
        yield factory, runner
    finally:
        if runner is not None:
            runner.stop()
        factory.close()


async def test_external_runner_serves_reconnects_and_stops_on_sigterm(
    external: tuple[OrchestratorFactory, ExternalRunner], client: RRQClient, queue: str
) -> None:
    factory, runner = external
    first = factory.started[0]
    await asyncio.to_thread(first.wait_for_runners)
    job_id = await client.enqueue("echo", {"queue_name": queue, "params": {"n": 1}})
    result = await client.wait_for_result(job_id, timeout=30)
    assert result.status is JobStatus.COMPLETED
    assert result.result["pid"] == runner.process.pid

    # The orchestrator dies; an external runner keeps trying until a new one is up.
    first.kill()
    await asyncio.to_thread(runner.log.wait_for, "stream ended")
    second = await asyncio.to_thread(factory.start, wait_for_runner=False)
    await asyncio.to_thread(second.wait_for_runners)
    job_id = await client.enqueue("echo", {"queue_name": queue, "params": {"n": 2}})
    result = await client.wait_for_result(job_id, timeout=30)
    assert result.result["pid"] == runner.process.pid

    runner.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(runner.process.wait, 30)
    assert code == 0, runner.log.text()
    assert "Traceback" not in runner.log.text()
