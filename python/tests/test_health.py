"""`rrq check`: exit 0 while an orchestrator is alive and serving, 1 otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import OrchestratorFactory, find_orchestrator_binary, python_env, write_config
from helpers import wait_until
from rrq.testing import RedisServer, free_port


async def check(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        find_orchestrator_binary(),
        "check",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=python_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_check_follows_the_orchestrator(tmp_path: Path) -> None:
    # A Redis of its own: heartbeats of other tests' (killed) orchestrators live on
    # in the shared one until they expire.
    with RedisServer(tmp_path / "redis", tcp=True) as redis:
        config = write_config(tmp_path, redis.dsn, free_port())
        orchestrators = OrchestratorFactory(find_orchestrator_binary(), config, tmp_path)
        try:
            await check_follows_the_orchestrator(orchestrators)
        finally:
            orchestrators.close()


async def check_follows_the_orchestrator(orchestrators: OrchestratorFactory) -> None:
    code, out = await check(orchestrators.config)
    assert code == 1, out

    orchestrator = orchestrators.start()
    last: list[tuple[int, str]] = []

    async def healthy() -> bool:
        last[:] = [await check(orchestrators.config)]
        return last[0][0] == 0

    await wait_until(healthy, "rrq check exiting 0", timeout=15)  # the first heartbeat
    assert last[0][1].strip(), "rrq check prints the live orchestrators"

    assert orchestrator.stop() == 0

    async def unhealthy() -> bool:
        return (await check(orchestrators.config))[0] == 1

    await wait_until(unhealthy, "rrq check exiting 1 after the stop", timeout=15)
