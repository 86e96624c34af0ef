"""The product README's Quick Start, end to end, with its exact texts.

Only two things are added: a ``send_email`` stub (the README leaves it
undefined) and, when ``rrq-runner`` is not installed in this interpreter's
scripts directory, a shim for it on PATH. Redis is a private server reached
through ``RRQ_REDIS_DSN``; port 9000 is kept unless it is busy.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import find_orchestrator_binary, python_env
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator, RedisServer, free_port

RRQ_TOML = """\
[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
"""

HANDLERS = """\
# myapp/handlers.py
from rrq.runner import ExecutionRequest

async def send_welcome_email(request: ExecutionRequest):
    user_email = request.params.get("email")
    template = request.params.get("template", "welcome")

    # Your email sending logic here
    await send_email(to=user_email, template=template)

    return {"sent": True, "email": user_email}
"""

SEND_EMAIL_STUB = """\
async def send_email(to, template):
    return None

"""

RUNNER = """\
# myapp/runner.py
from rrq.runner_settings import PythonRunnerSettings
from rrq.registry import Registry
from myapp import handlers

registry = Registry()
registry.register("send_welcome_email", handlers.send_welcome_email)

settings = PythonRunnerSettings(registry=registry)
"""

PRODUCER = """\
import asyncio
from rrq.client import RRQClient

async def main():
    client = RRQClient(config_path="rrq.toml")

    job_id = await client.enqueue(
        "send_welcome_email",
        {
            "params": {
                "email": "user@example.com",
                "template": "welcome",
            }
        },
    )

    print(f"Enqueued job: {job_id}")
    await client.close()

asyncio.run(main())
"""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def write_project(root: Path) -> None:
    toml = RRQ_TOML
    if not port_is_free(9000):
        toml = toml.replace("127.0.0.1:9000", f"127.0.0.1:{free_port()}")
    (root / "rrq.toml").write_text(toml)
    app = root / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    header, _, rest = HANDLERS.partition("from rrq.runner import ExecutionRequest\n")
    handlers = f"{header}from rrq.runner import ExecutionRequest\n\n{SEND_EMAIL_STUB}{rest}"
    (app / "handlers.py").write_text(handlers)
    (app / "runner.py").write_text(RUNNER)
    (root / "produce.py").write_text(PRODUCER)


def runner_path(root: Path) -> str:
    """PATH on which `rrq-runner` is this interpreter's (installed, or a shim)."""
    scripts = Path(sys.executable).parent
    if (scripts / "rrq-runner").exists():
        return f"{scripts}{os.pathsep}{os.environ['PATH']}"
    shim_dir = root / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "rrq-runner"
    shim.write_text(
        f"#!{sys.executable}\nimport sys\nfrom rrq.runner_cli import main\nsys.exit(main())\n"
    )
    shim.chmod(0o755)
    return f"{shim_dir}{os.pathsep}{os.environ['PATH']}"


async def test_readme_quick_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_project(project)
    with RedisServer(tmp_path / "redis", tcp=True) as redis:
        env = python_env({"RRQ_REDIS_DSN": redis.dsn, "PATH": runner_path(tmp_path)})
        orchestrator = Orchestrator(
            find_orchestrator_binary(), Path("rrq.toml"), cwd=project, env=env
        )
        with orchestrator:
            orchestrator.wait_for_runners()
            produced = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "produce.py"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert produced.returncode == 0, produced.stderr
            prefix = "Enqueued job: "
            assert produced.stdout.startswith(prefix)
            job_id = produced.stdout.removeprefix(prefix).strip()

            monkeypatch.setenv("RRQ_REDIS_DSN", redis.dsn)
            async with RRQClient(config_path=str(project / "rrq.toml")) as client:
                result = await client.wait_for_result(job_id, timeout=30)
                status = await client.get_job_status(job_id)
            assert result.status is JobStatus.COMPLETED, (
                orchestrator.log and orchestrator.log.text()
            )
            assert result.result == {"sent": True, "email": "user@example.com"}
            assert status is not None
            print(f"Status: {status}")
            assert "completed" in f"Status: {status}"
