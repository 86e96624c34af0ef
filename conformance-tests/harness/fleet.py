"""Mixed fleet: one orchestrator with a runner of every language at once.

Runner names are the language names; ``[rrq.runner_routes]`` sends queue
``ts-queue`` to typescript and ``rust-queue`` to rust; the default runner is
python. ``whoami`` is enqueued on each routed queue and on the default queue,
and ``<lang>#whoami`` on the default queue for every language; each job must
complete with ``result.language`` naming the language that should have run it.
A language whose build failed is left out of the fleet (and fails this row).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from common import (
    CONNECT_TIMEOUT,
    Language,
    Result,
    RunnerSpec,
    check_command,
    connected_pids,
    kill_everything,
    log_tail,
    orchestrator_env,
    start_redis,
    write_config,
)

from rrq.client import RRQClient
from rrq.testing import Orchestrator

ROUTES = {"ts-queue": "typescript", "rust-queue": "rust"}
DEFAULT_RUNNER = "python"
JOB_TIMEOUT = 20.0


async def _jobs(dsn: str, plan: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """Enqueues (function, queue, expected language) and checks each; problems per language."""
    problems: dict[str, list[str]] = {}
    async with RRQClient(config={"redis_dsn": dsn}) as client:
        ids = [
            (await client.enqueue(function, {"queue_name": queue}), function, queue, expected)
            for function, queue, expected in plan
        ]
        for job_id, function, queue, expected in ids:
            what = f"{function} on queue {queue}"
            try:
                result = await client.wait_for_result(job_id, timeout=JOB_TIMEOUT)
            except TimeoutError:
                status = await client.get_job_status(job_id)
                problems.setdefault(expected, []).append(
                    f"{what}: not finished after {JOB_TIMEOUT}s ({status})"
                )
                continue
            value = result.result if isinstance(result.result, dict) else {}
            if result.status.name != "COMPLETED" or value.get("language") != expected:
                problems.setdefault(expected, []).append(
                    f"{what}: expected to run on {expected}, got {result.status.name} "
                    f"result={result.result!r} "
                    f"last_error={result.last_error_type}: {result.last_error}"
                )
    return problems


def run_mixed_fleet(
    languages: list[Language],
    workdir: Path,
    binary: str,
    never_connected: dict[str, str] | None = None,
) -> dict[str, Result]:
    """One Result per language; ``never_connected`` (language -> why) are left out."""
    started = time.monotonic()
    results: dict[str, Result] = {}
    fleet: list[Language] = []
    for language in languages:
        if language.broken is not None or language.runner_cmd is None:
            results[language.name] = Result("fail", language.broken or "no runner_cmd")
            continue
        problem = check_command(language.runner_cmd, language.directory)
        if problem:
            results[language.name] = Result("fail", f"runner_cmd: {problem}")
            continue
        if language.name in (never_connected or {}):
            reason = (never_connected or {})[language.name]
            results[language.name] = Result("fail", f"left out: {reason}")
            continue
        fleet.append(language)
    if not fleet:
        return results
    names = [lang.name for lang in fleet]
    default = DEFAULT_RUNNER if DEFAULT_RUNNER in names else names[0]
    routes = {queue: runner for queue, runner in ROUTES.items() if runner in names}
    plan = [("whoami", queue, runner) for queue, runner in routes.items()]
    plan.append(("whoami", "default", default))
    plan += [(f"{name}#whoami", "default", name) for name in names]

    workdir.mkdir(parents=True, exist_ok=True)
    server = start_redis(workdir / "redis")
    orchestrator: Orchestrator | None = None
    try:
        config = write_config(
            workdir,
            server.dsn,
            [RunnerSpec(lang.name, lang.runner_cmd or [], lang.directory) for lang in fleet],
            default_runner=default,
            routes=routes,
        )
        orchestrator = Orchestrator(binary, config, cwd=workdir, env=orchestrator_env())
        orchestrator.start()
        # The jobs of a runner that never connects fail below, with the log.
        with contextlib.suppress(TimeoutError):
            orchestrator.wait_for_runners(len(fleet), timeout=CONNECT_TIMEOUT)
        problems = asyncio.run(_jobs(server.dsn, plan))
        details = f"workdir: {workdir}\nrunner pids connected: {connected_pids(orchestrator)}\n"
        details += log_tail(orchestrator, 30)
        for language in fleet:
            mine = problems.get(language.name, [])
            results[language.name] = (
                Result("fail", "; ".join(mine), details, time.monotonic() - started)
                if mine
                else Result("pass", seconds=time.monotonic() - started)
            )
    except Exception as exc:  # noqa: BLE001 - a harness error fails the row, it does not crash
        details = f"workdir: {workdir}\n" + log_tail(orchestrator, 30)
        for language in fleet:
            results[language.name] = Result(
                "fail", f"mixed fleet: {type(exc).__name__}: {exc}", details
            )
    finally:
        if orchestrator is not None:
            kill_everything(orchestrator)
        server.stop()
    return results
