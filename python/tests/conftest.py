"""Test harness: a private redis-server and the real orchestrator binary.

Nothing is mocked. The Redis fixture starts ``redis-server`` on a free TCP
port in a temporary directory; the orchestrator fixture runs the real ``rrq``
binary (``$RRQ_BIN``, else ``rrq`` on PATH, else ``rust/target/debug/rrq``),
which spawns real Python runner processes serving ``fixture_handlers``.
Processes are followed through their output, so tests wait on events
(log lines, pub/sub, files) rather than sleeping.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import rrq
from rrq.client import RRQClient
from rrq.testing import Orchestrator, RedisServer, find_rrq_binary, free_port

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parents[1]
SRC_DIR = Path(rrq.__file__).resolve().parents[1]

# The environment must not redirect the tests to another Redis or config.
for _name in (
    "RRQ_REDIS_DSN",
    "RRQ_CONFIG",
    "RRQ_ORCHESTRATOR_ADDR",
    "RRQ_RUNNER_TOKEN",
    "RRQ_RUNNER_SPAWNED",
):
    os.environ.pop(_name, None)

# External runners of the tests authenticate with this token: the
# orchestrators get it in EXTERNAL_TOKEN_ENV (python_env sets it), configs
# without ``cmd`` name that variable in ``token_env``, and the runners present
# it in RRQ_RUNNER_TOKEN (external_runner_env).
EXTERNAL_TOKEN_ENV = "RRQ_TEST_RUNNER_TOKEN"  # noqa: S105 - a variable name
EXTERNAL_TOKEN = "rrq-tests-external-runner-token-0123456789"  # noqa: S105 - a test secret


def find_orchestrator_binary() -> str:
    """rrq.testing's lookup ($RRQ_BIN, the installed one), else the workspace's debug build.

    Fails the test (never skips) when there is none.
    """
    try:
        binary = find_rrq_binary()
    except FileNotFoundError:
        debug = REPO_ROOT / "rust" / "target" / "debug" / "rrq"
        if debug.is_file():
            return str(debug)
        pytest.fail(
            "the rrq orchestrator binary was not found: set RRQ_BIN, install the package "
            "(pip install ./python) or build it (cd rust && cargo build -p rrq)"
        )
    if not Path(binary).is_file():
        pytest.fail(f"the rrq orchestrator binary {binary} does not exist (RRQ_BIN?)")
    return binary


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's rrq package importable."""
    env = dict(os.environ)
    paths = [str(SRC_DIR), str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[EXTERNAL_TOKEN_ENV] = EXTERNAL_TOKEN
    env.update(extra or {})
    return env


def external_runner_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """python_env for an external runner: it presents the tests' external token."""
    return python_env({"RRQ_RUNNER_TOKEN": EXTERNAL_TOKEN, **(extra or {})})


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), tcp=True)
    with server:
        yield server


@pytest.fixture
def redis_dsn(redis_server: RedisServer) -> str:
    return redis_server.dsn


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(redis_dsn: str) -> AsyncIterator[RRQClient]:
    async with RRQClient(config={"redis_dsn": redis_dsn}) as c:
        yield c


TIMINGS = """\
lease_seconds = 2
lease_renew_interval_seconds = 0.5
recovery_interval_seconds = 0.5
runner_heartbeat_interval_seconds = 0.5
cancel_grace_seconds = 1
shutdown_grace_seconds = 3
retry_backoff_initial_seconds = 0.05
retry_backoff_max_seconds = 0.2
"""


def write_config(
    directory: Path,
    redis_dsn: str,
    port: int,
    *,
    max_in_flight: int = 4,
    extra: str = "",
    spawn: bool = True,
    tail: str = "",
) -> Path:
    """An rrq.toml serving fixture_handlers with short timings.

    With ``spawn`` False the runner has no ``cmd``: the orchestrator waits for
    external runners to connect.
    """
    cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", "fixture_handlers:settings"]
    cmd_line = (
        "cmd = [" + ", ".join(f'"{part}"' for part in cmd) + "]\n"
        if spawn
        else f'token_env = "{EXTERNAL_TOKEN_ENV}"\n'
    )
    path = directory / "rrq.toml"
    path.write_text(
        f"""\
[rrq]
redis_dsn = "{redis_dsn}"
default_runner_name = "python"
{TIMINGS}{extra}
[rrq.runners.python]
type = "socket"
{cmd_line}tcp_socket = "127.0.0.1:{port}"
max_in_flight = {max_in_flight}
cwd = "{TESTS_DIR}"

[rrq.runners.python.env]
PYTHONPATH = "{os.pathsep.join([str(SRC_DIR), str(TESTS_DIR)])}"
{tail}""",
        encoding="utf-8",
    )
    return path


def runner_table(name: str, settings: str, *, max_in_flight: int = 4) -> str:
    """A ``[rrq.runners.<name>]`` table spawning a Python runner on ``settings``."""
    cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", settings]
    return f"""
[rrq.runners.{name}]
type = "socket"
cmd = [{", ".join(f'"{part}"' for part in cmd)}]
tcp_socket = "127.0.0.1:{free_port()}"
max_in_flight = {max_in_flight}
cwd = "{TESTS_DIR}"

[rrq.runners.{name}.env]
PYTHONPATH = "{os.pathsep.join([str(SRC_DIR), str(TESTS_DIR)])}"
"""


class OrchestratorFactory:
    """Starts orchestrators on one config; each is killed at the end of the test."""

    def __init__(self, binary: str, config: Path, workdir: Path) -> None:
        self.binary = binary
        self.config = config
        self.workdir = workdir
        self.started: list[Orchestrator] = []

    def start(
        self,
        *,
        wait_for_runner: bool = True,
        runners: int = 1,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> Orchestrator:
        orchestrator = Orchestrator(
            self.binary,
            self.config,
            cwd=self.workdir,
            env=python_env(env),
            extra_args=extra_args,
        )
        self.started.append(orchestrator)
        orchestrator.start()
        if wait_for_runner:
            orchestrator.wait_for_runners(runners)
        return orchestrator

    def logs(self) -> str:
        parts = []
        for orchestrator in self.started:
            text = orchestrator.log.text() if orchestrator.log is not None else ""
            parts.append(f"--- {orchestrator.log_path} ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        for orchestrator in self.started:
            orchestrator.__exit__(None, None, None)


@pytest.fixture
def orchestrators(
    request: pytest.FixtureRequest, redis_dsn: str, tmp_path: Path
) -> Iterator[OrchestratorFactory]:
    """Factory of real orchestrators; their output is printed when the test fails."""
    binary = find_orchestrator_binary()
    config = write_config(tmp_path, redis_dsn, free_port())
    factory = OrchestratorFactory(binary, config, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(factory.logs(), file=sys.stderr)


ConfigureOrchestrators = Callable[..., OrchestratorFactory]


@pytest.fixture
def configure_orchestrators(
    request: pytest.FixtureRequest, redis_dsn: str, tmp_path: Path
) -> Iterator[ConfigureOrchestrators]:
    """Like ``orchestrators``, on a config with ``write_config`` keyword arguments
    (and ``dsn``, another Redis DSN than the test's)."""
    binary = find_orchestrator_binary()
    factories: list[OrchestratorFactory] = []

    def configure(*, dsn: str | None = None, **kwargs: Any) -> OrchestratorFactory:
        directory = tmp_path / f"config-{len(factories)}"
        directory.mkdir()
        config = write_config(directory, dsn or redis_dsn, free_port(), **kwargs)
        factory = OrchestratorFactory(binary, config, directory)
        factories.append(factory)
        return factory

    try:
        yield configure
    finally:
        for factory in factories:
            factory.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for factory in factories:
                print(factory.logs(), file=sys.stderr)


@pytest.fixture
def orchestrator(orchestrators: OrchestratorFactory) -> Orchestrator:
    """One running orchestrator with its runner connected."""
    return orchestrators.start()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def marker_dir(tmp_path: Path) -> Path:
    """A directory where fixture handlers leave files the test waits for."""
    directory = tmp_path / "markers"
    directory.mkdir()
    return directory
