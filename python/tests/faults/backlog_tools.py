"""Tools of the backlog rows (F20, F24): bulk load, process memory, SLOWLOG, a side client.

- :func:`bulk_enqueue` writes many jobs through the real ``enqueue.lua``
  (EVALSHA, the KEYS/ARGV built by ``rrq.store``) pipelined on a raw socket,
  so that the loader costs a fraction of what Redis spends running the script
  (redis-py's encoding of a 19-argument command would compete with Redis for
  the second core). Redis is the limit: 30-40k scripts/s on this machine.
- :class:`SlowlogWatch` keeps every SLOWLOG entry of a run, names RRQ's
  scripts by their SHA, and can time one script server-side.
- :class:`SideClient` is "another client" of Redis: it times a PING and a small
  enqueue in a paced loop while the row's load runs.
- :class:`ExternalRunners` starts Python runners that dial the orchestrator
  (``rrq.runner_cli --connect``), so the backlog is built while no runner is
  attached.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from conftest import EXTERNAL_TOKEN_ENV, TESTS_DIR, external_runner_env
from rrq.store import DEFAULT_KEYS, QUEUES_KEY, EnqueueArgs, _enqueue_call
from rrq.testing import ProcessLog

from .conftest import TIMINGS

_LUA = {
    entry.name.removesuffix(".lua"): entry.read_bytes()
    for entry in importlib.resources.files("rrq").joinpath("lua").iterdir()
    if entry.name.endswith(".lua")
}
SHA = {name: hashlib.sha1(text).hexdigest() for name, text in _LUA.items()}  # noqa: S324
SCRIPT_OF_SHA = {sha: name for name, sha in SHA.items()}

# Commands whose cost does not grow with the data (O(1), or O(log N) for one member).
POINT_COMMANDS = frozenset(
    {"HSET", "HGET", "HMGET", "HDEL", "GET", "SET", "DEL", "EXISTS", "PEXPIRE", "EXPIRE"}
    | {"TIME", "PUBLISH", "ZADD", "ZREM", "ZSCORE", "SADD", "SREM", "SISMEMBER"}
)

# 200 bytes of params, as F20 asks.
PARAMS_200 = '{"pad":"' + "x" * 190 + '"}'
assert len(PARAMS_200) == 200

# ----------------------------------------------------------------------------- config


def external_config(
    directory: Path, redis_dsn: str, port: int, *, max_in_flight: int, **overrides: object
) -> Path:
    """An rrq.toml whose runner has no ``cmd``: runners dial ``127.0.0.1:<port>``
    themselves, presenting the tests' external token (``token_env``)."""
    settings = {**TIMINGS, **overrides}
    lines = "\n".join(
        f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()
    )
    path = directory / "rrq-external.toml"
    path.write_text(
        f"""\
[rrq]
redis_dsn = "{redis_dsn}"
default_runner_name = "python"
{lines}

[rrq.runners.python]
type = "socket"
tcp_socket = "127.0.0.1:{port}"
max_in_flight = {max_in_flight}
token_env = "{EXTERNAL_TOKEN_ENV}"
""",
        encoding="utf-8",
    )
    return path


class ExternalRunners:
    """Python runners serving ``faults.oracle_handlers`` that connect to one orchestrator."""

    def __init__(self, directory: Path, port: int, oracle_log: Path) -> None:
        self.dir = directory
        self.port = port
        self.oracle_log = oracle_log
        self.processes: list[subprocess.Popen[str]] = []
        self.logs: list[ProcessLog] = []
        self.started = 0

    def start(
        self, count: int, *, addr: str | None = None, max_in_flight: int | None = None
    ) -> list[int]:
        """Starts ``count`` runners dialing ``addr`` (default: the orchestrator's
        port; a fault proxy's address puts them behind it); returns their pids."""
        extra = {"RRQ_ORACLE_LOG": str(self.oracle_log), "RRQ_LOG_LEVEL": "WARNING"}
        if max_in_flight is not None:
            extra["RRQ_RUNNER_MAX_IN_FLIGHT"] = str(max_in_flight)
        env = external_runner_env(extra)
        pids = []
        for _ in range(count):
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rrq.runner_cli",
                    "--settings",
                    "faults.oracle_handlers:settings",
                    "--connect",
                    addr or f"127.0.0.1:{self.port}",
                ],
                cwd=TESTS_DIR,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert process.stdout is not None
            self.processes.append(process)
            self.logs.append(ProcessLog(process.stdout, self.dir / f"runner-{self.started}.log"))
            self.started += 1
            pids.append(process.pid)
        return pids

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (a graceful drain) and wait; SIGKILL what is left."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.processes.clear()


# ----------------------------------------------------------------------------- bulk load


@dataclass
class LoadResult:
    created: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.created / self.seconds if self.seconds else 0.0


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _arg(value: str | int) -> bytes:
    return str(value).encode() if isinstance(value, int) else value.encode()


def _host_port(dsn: str) -> tuple[str, int]:
    url = urlparse(dsn)
    assert url.scheme == "redis", f"bulk_enqueue needs a TCP Redis, got {dsn}"
    return url.hostname or "127.0.0.1", url.port or 6379


class _Raw:
    """A bare RESP connection: the bulk path of :func:`bulk_enqueue`."""

    def __init__(self, dsn: str) -> None:
        self.sock = socket.create_connection(_host_port(dsn))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def command(self, *args: bytes) -> bytes:
        """Sends one command; returns its reply's first line (an error raises)."""
        self.sock.sendall(b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args))
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, _, self.buf = self.buf.partition(b"\r\n")
        if line.startswith(b"-"):
            raise redis.ResponseError(line[1:].decode())
        if line.startswith(b"$") and int(line[1:]) >= 0:  # a bulk string: read its body too
            size = int(line[1:]) + 2
            while len(self.buf) < size:
                self.buf += self.sock.recv(65536)
            body, self.buf = self.buf[: size - 2], self.buf[size:]
            return body
        return line

    def close(self) -> None:
        self.sock.close()


# One reply of enqueue.lua: {code, job_id, value}.
_ENQUEUE_REPLY = re.compile(rb"\*3\r\n:(-?\d+)\r\n\$\d+\r\n[^\r]*\r\n:-?\d+\r\n")
_MARK = "\x00JOB\x00"


def bulk_enqueue(
    dsn: str,
    queue: str,
    count: int,
    *,
    prefix: str,
    start: int = 0,
    params_json: str = PARAMS_200,
    run_at_ms: int = 0,
    max_retries: int = 3,
    chunk: int = 10_000,
) -> LoadResult:
    """Enqueues ``count`` jobs ``<prefix>-<n>`` (``n`` from ``start``) through ``enqueue.lua``.

    The KEYS/ARGV are ``rrq.store``'s own for an :class:`EnqueueArgs` (function
    ``work`` of ``faults.oracle_handlers``), only the job id varies; the queue
    is registered first as the client does. Writes and reads overlap (a writer
    thread), so Redis is never idle waiting for the loader. Every reply must be
    CREATED, otherwise this raises.
    """
    template = EnqueueArgs(
        job_id=_MARK,
        function_name="work",
        queue_name=queue,
        params_json=params_json,
        max_retries=max_retries,
        job_timeout_ms=0,
        result_ttl_ms=0,
        defer_ms=0,
        run_at_ms=run_at_ms,
        max_params_bytes=1024 * 1024,
    )
    keys, argv = _enqueue_call(DEFAULT_KEYS, template)
    parts = [b"EVALSHA", SHA["enqueue"].encode(), str(len(keys)).encode()]
    parts += [_arg(a) for a in [*keys, *argv]]
    # Segments of one command: constant bytes, or (before, after) around the job id.
    segments: list[bytes | tuple[bytes, bytes]] = [b"*%d\r\n" % len(parts)]
    for part in parts:
        mark = _MARK.encode()
        if mark in part:
            before, after = part.split(mark)
            segments.append((before, after))
        else:
            segments.append(_bulk(part))
    merged: list[bytes | tuple[bytes, bytes]] = []
    for seg in segments:
        if isinstance(seg, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += seg
        else:
            merged.append(seg)

    def encode(job: bytes) -> bytes:
        out = []
        for seg in merged:
            if isinstance(seg, bytes):
                out.append(seg)
            else:
                out.append(_bulk(seg[0] + job + seg[1]))
        return b"".join(out)

    raw = _Raw(dsn)
    try:
        raw.command(b"SCRIPT", b"LOAD", _LUA["enqueue"])
        raw.command(b"SADD", QUEUES_KEY.encode(), queue.encode())
        failure: list[BaseException] = []

        def writer() -> None:
            try:
                for first in range(start, start + count, chunk):
                    last = min(start + count, first + chunk)
                    raw.sock.sendall(
                        b"".join(
                            encode(b"%s-%d" % (prefix.encode(), n)) for n in range(first, last)
                        )
                    )
            except BaseException as exc:  # re-raised by the reader below
                failure.append(exc)

        began = time.monotonic()
        thread = threading.Thread(target=writer, name="bulk-enqueue", daemon=True)
        thread.start()
        buf, replies, created = raw.buf, 0, 0
        raw.sock.settimeout(30)
        while replies < count:
            if failure:
                raise failure[0]
            data = raw.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("Redis closed the bulk-enqueue connection")
            buf += data
            pos = 0
            for match in _ENQUEUE_REPLY.finditer(buf):
                if match.start() != pos:
                    break
                pos = match.end()
                replies += 1
                created += match.group(1) == b"1"
            if buf[pos : pos + 1] == b"-":
                raise redis.ResponseError(buf[pos : buf.find(b"\r\n", pos)].decode())
            buf = buf[pos:]
        thread.join()
        seconds = time.monotonic() - began
    finally:
        raw.close()
    if created != count:
        raise AssertionError(f"{count - created} of {count} enqueues did not create a job")
    return LoadResult(created, seconds)


# ----------------------------------------------------------------------------- process memory


def proc_memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MB (procfs ``status``)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            out[name] = round(int(value.split()[0]) / 1024, 2)
    return out


def proc_cpu_s(pid: int) -> float:
    """CPU time (user + system) a process used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples a process's VmRSS every ``interval`` s in a thread; keeps the largest."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(proc_memory_mb(self.pid)["VmRSS"])
            self._stop.wait(self.interval)  # the sampling period

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)


def evalsha_stats(r: redis.Redis) -> dict[str, float]:
    """EVALSHA calls since the last ``CONFIG RESETSTAT``: count, mean and percentiles (ms)."""
    calls = r.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec_per_call": 0.0})
    pct = r.info("latencystats").get("latency_percentiles_usec_evalsha", {})
    out = {"calls": int(calls["calls"]), "mean": round(float(calls["usec_per_call"]) / 1000, 3)}
    for name in ("p50", "p99", "p99.9"):
        if name in pct:
            out[name] = round(float(pct[name]) / 1000, 3)
    return out


def used_memory(r: redis.Redis) -> int:
    info: dict[str, Any] = r.info("memory")
    return int(info["used_memory"])


# ----------------------------------------------------------------------------- SLOWLOG


@dataclass
class SlowEntry:
    id: int
    at: int  # unix time (s) the command started
    duration_us: int
    command: str
    client: str  # "?:0" for a command a script called (Redis 7 logs those too)

    @property
    def is_script(self) -> bool:
        """A script call (EVALSHA/EVAL), not one of its inner commands."""
        return self.command.split(" ", 1)[0].upper() in {"EVALSHA", "EVAL", "EVALSHA_RO"}

    @property
    def script(self) -> str:
        """``enqueue``, ``claim``... for an RRQ script, else the command name."""
        words = self.command.split()
        name = words[0] if words else "?"
        if len(words) > 1 and name.upper() == "EVALSHA":
            return SCRIPT_OF_SHA.get(words[1], f"script {words[1][:12]}")
        if self.client.startswith("?"):
            return f"{name} (in a script)"
        return name

    def describe(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "ms": round(self.duration_us / 1000, 1),
            "at": self.at,
            "command": self.command[:160],
        }


@dataclass
class SlowlogWatch:
    """Every SLOWLOG entry of a run, kept across reads (by entry id).

    Starts with ``slowlog-log-slower-than`` at ``threshold_us``, a long
    SLOWLOG and ``latency-monitor-threshold 10``, after SLOWLOG/LATENCY RESET.
    Each read empties the SLOWLOG in the same transaction, so a read never
    costs Redis more than the entries logged since the last one.
    """

    r: redis.Redis
    threshold_us: int = 50_000
    entries: dict[int, SlowEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.r.config_set("slowlog-max-len", 10_000)
        self.r.config_set("slowlog-log-slower-than", self.threshold_us)
        self.r.config_set("latency-monitor-threshold", 10)
        self.r.slowlog_reset()
        self.r.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]

    def collect(self) -> list[SlowEntry]:
        """Reads (and empties) the SLOWLOG; returns the entries not seen before."""
        pipe = self.r.pipeline(transaction=True)
        pipe.slowlog_get(10_000)
        pipe.slowlog_reset()
        raws, _ = pipe.execute()
        new = []
        for raw in raws:
            command, client = raw["command"], raw.get("client_address", b"")
            entry = SlowEntry(
                int(raw["id"]),
                int(raw["start_time"]),
                int(raw["duration"]),
                command.decode(errors="replace") if isinstance(command, bytes) else command,
                client.decode(errors="replace") if isinstance(client, bytes) else str(client),
            )
            if entry.id not in self.entries:
                self.entries[entry.id] = entry
                new.append(entry)
        return new

    def over(self, us: int | None = None) -> list[SlowEntry]:
        """Entries of at least ``us`` (the threshold), longest first."""
        self.collect()
        limit = self.threshold_us if us is None else us
        return sorted(
            (e for e in self.entries.values() if e.duration_us >= limit),
            key=lambda e: -e.duration_us,
        )

    def stalled_us(self, entry: SlowEntry) -> int:
        """Time that ``entry``'s (a script call's) point commands spent in the SLOWLOG.

        Redis 7 logs a script's inner commands (client ``?:0``) just before the
        call itself, with consecutive ids. A point command (O(1) or O(log N)
        whatever the data, e.g. HSET or TIME) that took 10 ms or more was
        stalled (descheduled by the kernel, page faults after an AOF-rewrite
        fork), not working: that time is not the script's work. A range
        command (ZRANGEBYSCORE...) is never discounted.
        """
        total, i = 0, entry.id - 1
        while (inner := self.entries.get(i)) is not None and inner.client.startswith("?"):
            if inner.command.split(" ", 1)[0].upper() in POINT_COMMANDS:
                total += inner.duration_us
            i -= 1
        return total

    def describe(self, entry: SlowEntry) -> dict[str, Any]:
        """``entry`` as a report row; a script call also gets its time net of stalls."""
        row = entry.describe()
        if entry.is_script:
            row["net_ms"] = round((entry.duration_us - self.stalled_us(entry)) / 1000, 1)
        return row

    @contextlib.contextmanager
    def everything(self, script: str) -> Iterator[list[int]]:
        """Logs every command inside the block; fills the list with ``script``'s durations (us).

        The long entries stay in :attr:`entries` like any other.
        """
        self.collect()
        durations: list[int] = []
        self.r.config_set("slowlog-log-slower-than", 0)
        try:
            yield durations
        finally:
            self.r.config_set("slowlog-log-slower-than", self.threshold_us)
            durations += [e.duration_us for e in self.collect() if e.script == script]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per script (or command) of the entries over the threshold: count and longest, in ms."""
        out: dict[str, dict[str, float]] = {}
        for e in self.over():
            row = out.setdefault(e.script, {"n": 0, "max_ms": 0.0})
            row["n"] += 1
            row["max_ms"] = max(row["max_ms"], round(e.duration_us / 1000, 1))
        return out

    def latency(self) -> dict[str, int]:
        """``LATENCY LATEST``: event -> its largest latency in ms."""
        rows = self.r.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
        out = {}
        for row in rows:
            name = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            out[name] = int(row[3])
        return out


# ----------------------------------------------------------------------------- other clients


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max of durations in seconds, in ms."""
    if not samples:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered) * 1000, 3),
        "p99": round(p99 * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


class SideClient:
    """Another client of Redis: a PING and a small enqueue (its own queue) every ``period`` s.

    The enqueue goes through EVAL (enqueue.lua's text), so that the EVALSHA
    statistics of Redis count the orchestrator's scripts alone.
    """

    def __init__(self, dsn: str, queue: str, period: float = 0.005) -> None:
        self.r = redis.Redis.from_url(dsn, socket_timeout=10)
        self.queue = queue
        self.period = period
        self.ping: list[float] = []
        self.enqueue: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="side-client", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        n = 0
        try:
            text = _LUA["enqueue"].decode()
            while not self._stop.is_set():
                t0 = time.perf_counter()
                self.r.ping()
                t1 = time.perf_counter()
                keys, argv = _enqueue_call(
                    DEFAULT_KEYS,
                    EnqueueArgs(
                        job_id=f"side-{n}",
                        function_name="work",
                        queue_name=self.queue,
                        params_json="{}",
                        max_retries=0,
                        job_timeout_ms=0,
                        result_ttl_ms=0,
                        defer_ms=0,
                        run_at_ms=0,
                        max_params_bytes=1024,
                    ),
                )
                t2 = time.perf_counter()
                self.r.eval(text, len(keys), *keys, *argv)
                t3 = time.perf_counter()
                self.ping.append(t1 - t0)
                self.enqueue.append(t3 - t2)
                n += 1
                self._stop.wait(self.period)  # the load's pace, not a synchronization
        except BaseException as exc:
            self._error = exc

    def __enter__(self) -> SideClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self.r.close()
        if self._error is not None:
            raise self._error

    def report(self) -> dict[str, dict[str, float]]:
        return {"ping": percentiles_ms(self.ping), "enqueue": percentiles_ms(self.enqueue)}


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float, poll: float = 0.05
) -> None:
    """A bounded poll of a condition that publishes no event."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        time.sleep(poll)


def count_ends(oracle_log: Path, prefix: str = "") -> int:
    """Executions the handler finished (``end`` lines of the oracle log) of jobs ``<prefix>...``."""
    data = oracle_log.read_bytes()
    mark = f"end {prefix}".encode()
    return data.count(b"\n" + mark) + data.startswith(mark)


def redis_time_ms(r: redis.Redis) -> int:
    secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


__all__ = [
    "PARAMS_200",
    "ExternalRunners",
    "LoadResult",
    "RssSampler",
    "SideClient",
    "SlowlogWatch",
    "bulk_enqueue",
    "count_ends",
    "evalsha_stats",
    "external_config",
    "percentiles_ms",
    "proc_cpu_s",
    "proc_memory_mb",
    "redis_time_ms",
    "used_memory",
    "wait_until",
]
