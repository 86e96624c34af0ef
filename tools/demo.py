"""A real end-to-end demo: private Redis, orchestrator, Python runner, producer.

Run with `make demo`. Everything lives under .rrq/demo/ and is stopped at the end;
nothing needs configuring first and no shared Redis is touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator, RedisServer, find_rrq_binary

HANDLERS = """
import asyncio

from rrq.exceptions import RetryJob
from rrq.runner import ExecutionRequest


async def send_welcome_email(request: ExecutionRequest) -> dict[str, object]:
    await asyncio.sleep(0.05)  # pretend to talk to a mail server
    return {"sent": True, "email": request.params["email"]}


def resize_image(request: ExecutionRequest) -> dict[str, object]:
    # A plain function: RRQ runs it in a worker thread.
    width, height = request.params["size"]
    return {"thumbnail": [width // 10, height // 10]}


async def flaky_sync(request: ExecutionRequest) -> str:
    if request.context.attempt < 2:
        raise RetryJob(defer_seconds=0.2, message="upstream busy")
    return f"synced on attempt {request.context.attempt}"


async def always_broken(request: ExecutionRequest) -> None:
    raise ValueError("the data is corrupt")
"""

RUNNER = """
from rrq.registry import Registry
from rrq.runner_settings import PythonRunnerSettings
from demo_app import handlers

registry = Registry()
registry.register("send_welcome_email", handlers.send_welcome_email)
registry.register("resize_image", handlers.resize_image)
registry.register("flaky_sync", handlers.flaky_sync)
registry.register("always_broken", handlers.always_broken)

settings = PythonRunnerSettings(registry=registry)
"""


def write_app(workdir: Path, redis_dsn: str) -> Path:
    app = workdir / "demo_app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "__init__.py").write_text("")
    (app / "handlers.py").write_text(textwrap.dedent(HANDLERS))
    (app / "runner.py").write_text(textwrap.dedent(RUNNER))
    config = workdir / "rrq.toml"
    config.write_text(
        textwrap.dedent(f"""\
        [rrq]
        redis_dsn = "{redis_dsn}"
        default_runner_name = "python"
        default_max_retries = 2
        retry_backoff_initial_seconds = 0.1

        [rrq.runners.python]
        type = "socket"
        cmd = ["rrq-runner", "--settings", "demo_app.runner:settings"]
        pool_size = 2
        max_in_flight = 10
        """)
    )
    return config


async def produce(config: Path) -> None:
    async with RRQClient(config_path=str(config)) as client:
        jobs = {
            "welcome email": await client.enqueue(
                "send_welcome_email",
                {"params": {"email": "user@example.com", "template": "welcome"}},
            ),
            "thumbnail (sync handler)": await client.enqueue(
                "resize_image", {"params": {"size": [1920, 1080]}}
            ),
            "retry, then success": await client.enqueue("flaky_sync", {"params": {}}),
            "fails for good (DLQ)": await client.enqueue(
                "always_broken", {"params": {}, "max_retries": 1}
            ),
            "unknown function": await client.enqueue("no_such_handler", {"params": {}}),
        }
        started = time.monotonic()
        for label, job_id in jobs.items():
            result = await client.wait_for_result(job_id, timeout=30)
            if result.status is JobStatus.COMPLETED:
                detail = result.result
            else:  # the first line; the rest is the handler's traceback
                detail = (result.last_error or "").splitlines()[0]
            print(f"  {label:<26} {result.status.value:<10} attempts={result.attempt}  {detail}")
        print(f"all {len(jobs)} jobs settled in {time.monotonic() - started:.2f}s")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    workdir = root / ".rrq" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"demo: working in {workdir}")
    with RedisServer(workdir / "redis") as redis:
        print(f"demo: private Redis at {redis.dsn}")
        config = write_app(workdir, redis.dsn)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with Orchestrator(find_rrq_binary(), config, cwd=workdir, env=env) as orchestrator:
            orchestrator.wait_for_runners(count=2)
            print(f"demo: orchestrator and 2 Python runners up (log: {orchestrator.log_path})")
            asyncio.run(produce(config))
            code = orchestrator.stop()
            print(f"demo: orchestrator drained and exited with status {code}")
            return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
