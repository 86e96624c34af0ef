"""F30 (Python half): fuzzing the runner's decoder of orchestrator frames.

The target is what the Python runner does with one gRPC message from the
orchestrator: ``OrchestratorMessage.FromString`` (grpc's deserializer), then
``_wire.decode_orchestrator_message`` (hello_ack, execute batches with their
params and context, cancels), then the outcome the runner would send back for
each execution. A ``DecodeError`` from the first step and ``StreamEnded`` from
the second are the documented ways a frame is refused (grpc ends the call and
``Stream.read`` reports ``StreamEnded``); any other exception is a crash.

Each input is also read as a recipe for a well-formed message with edge-case
field values (structure-aware), which is decoded the same way.

Limits per input, as in fault row F30 (docs/guarantees.md): no exception, 1 s, and at most
64 MiB of growth of the process's peak RSS.

Engine: atheris (libFuzzer, coverage-guided) when it is installed, in a child
process (``python test_f30_python_fuzz.py --atheris ...``); otherwise a seeded
mutation loop in process. Failing inputs go to
``rust/rrq-fuzz/crashers/python-frame/`` next to the Rust targets' crashers,
and ``test_f30_python_regressions`` replays them all.

``RRQ_F30_SECONDS`` sets the long run (default 60 s); the quick run takes 5 s.
``RRQ_F30_SEED`` replays a run's input sequence; ``RRQ_F30_ENGINE=mutation``
forces the in-process engine.
Each run prints one ``CHECKER`` JSON line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError

from rrq import _wire
from rrq.v1 import runner_pb2

ROW = "F30"
TARGET = "python-frame"
SECONDS = float(os.environ.get("RRQ_F30_SECONDS", "60"))
QUICK_SECONDS = 5.0
TIMEOUT_S = 1.0
ALLOC_LIMIT = 64 * 1024 * 1024
MAX_LEN = 4096

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
CRASHERS = REPO_ROOT / "rust" / "rrq-fuzz" / "crashers" / TARGET


class UnboundedAllocationError(Exception):
    """One input grew the process's peak RSS by more than ALLOC_LIMIT."""


class HangError(Exception):
    """One input ran longer than TIMEOUT_S."""


# --- the target ------------------------------------------------------------------


def decode_frame(data: bytes) -> None:
    """What the runner does with one frame; raises only on a real failure."""
    try:
        message = runner_pb2.OrchestratorMessage.FromString(data)
    except DecodeError:
        return  # grpc ends the call; Stream.read raises StreamEnded
    try:
        decoded = _wire.decode_orchestrator_message(message)
    except _wire.StreamEnded:
        return
    if isinstance(decoded, list):
        for execute in decoded:
            if execute.request is not None:
                context = execute.request.context
                _ = (context.enqueued_at.isoformat(), context.deadline.isoformat())
            # Every execution gets an outcome; an undecodable one gets this one.
            outcome = _wire.Outcome(
                execute.job_id,
                execute.attempt,
                "failure",
                failure_kind="INVALID_PARAMS",
                error_type="InvalidParams",
                message=execute.params_error,
            )
            _wire._encode_outcome(outcome).SerializeToString()


_INTERESTING_INTS = (
    0,
    1,
    -1,
    1_700_000_000_000,
    253_402_300_799_000,
    253_402_300_800_000,
    -62_135_596_800_001,
    2**31 - 1,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
)
_PARAMS = (
    "",
    "{}",
    '{"a": 1}',
    "[]",
    "null",
    '{"a": NaN}',
    '{"a": Infinity}',
    '{"a": 1e999}',
    '{"a": ' + "1" * 5000 + "}",
    '{"a": "\\ud800"}',
    "[" * 100_000,
    '{"a": 1, "a": 2}',
    "{",
)


class _Reader:
    """Reads field values for a structured message out of fuzz bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def i64(self) -> int:
        b = self.byte()
        if b < 128:
            return _INTERESTING_INTS[b % len(_INTERESTING_INTS)]
        return int.from_bytes(self.take(8).ljust(8, b"\0"), "little", signed=True)

    def text(self) -> str:
        return self.take(self.byte() % 24).decode("utf-8", errors="replace")

    def params(self) -> str:
        b = self.byte()
        return _PARAMS[b % len(_PARAMS)] if b < 200 else self.text()


def structured(data: bytes) -> bytes:
    """A well-formed message whose field values come from ``data``."""
    r = _Reader(data)
    message = runner_pb2.OrchestratorMessage()
    kind = r.byte() % 4
    if kind == 0:
        message.hello_ack.orchestrator_id = r.text()
        message.hello_ack.heartbeat_interval_ms = r.i64()
        message.hello_ack.max_result_bytes = r.i64()
    elif kind == 1:
        for _ in range(1 + r.byte() % 4):
            req = message.execute.requests.add()
            req.job_id = r.text()
            req.attempt = r.i64()
            req.function_name = r.text()
            req.params_json = r.params()
            req.queue_name = r.text()
            req.enqueued_at_ms = r.i64()
            req.deadline_ms = r.i64()
            req.trace_parent = r.text()
            req.trace_state = r.text()
            req.max_retries = r.i64()
    elif kind == 2:
        message.cancel.job_id = r.text()
        message.cancel.attempt = r.i64()
        message.cancel.reason = r.i64() % 2**31  # type: ignore[assignment]
    return message.SerializeToString()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def one_input(data: bytes) -> None:
    """One fuzz input: raw and structured decode under the allocation limit."""
    before = _maxrss()
    decode_frame(data)
    decode_frame(structured(data))
    grown = _maxrss() - before
    if grown > ALLOC_LIMIT:
        raise UnboundedAllocationError(f"peak RSS grew by {grown} bytes on one input")


def run_guarded(data: bytes) -> str | None:
    """Runs one input; returns what went wrong, or None."""
    start = time.monotonic()
    try:
        one_input(data)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    elapsed = time.monotonic() - start
    if elapsed > TIMEOUT_S:
        return f"hang: the input took {elapsed:.2f}s"
    return None


def seeds() -> list[bytes]:
    """Valid frames of every kind the orchestrator sends."""
    ack = runner_pb2.OrchestratorMessage()
    ack.hello_ack.protocol_version = 1
    ack.hello_ack.orchestrator_id = "orc-1"
    ack.hello_ack.heartbeat_interval_ms = 5000
    ack.hello_ack.max_result_bytes = 1_048_576
    execute = runner_pb2.OrchestratorMessage()
    for i, params in enumerate(['{"n": 1}', "[1]", "", '{"a": {"b": [1, 2, null]}}']):
        req = execute.execute.requests.add()
        req.job_id = f"j{i}"
        req.attempt = 1 + i
        req.function_name = "echo"
        req.params_json = params
        req.queue_name = "default"
        req.enqueued_at_ms = 1_699_999_999_000
        req.deadline_ms = 1_700_000_030_000
        req.trace_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        req.max_retries = 3
    out = [ack.SerializeToString(), execute.SerializeToString(), b""]
    for reason in range(5):
        cancel = runner_pb2.OrchestratorMessage()
        cancel.cancel.job_id = "j1"
        cancel.cancel.attempt = 2
        cancel.cancel.reason = reason  # type: ignore[assignment]
        out.append(cancel.SerializeToString())
    return out


def crashers() -> list[Path]:
    if not CRASHERS.is_dir():
        return []
    return sorted(p for p in CRASHERS.iterdir() if p.is_file() and not p.name.startswith("."))


# --- engines ---------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(1 << rng.randrange(4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 2 and buf:
            del buf[pos : pos + rng.randrange(1, 9)]
        elif op == 3:
            buf[pos:pos] = rng.choice([b"\xff" * 9 + b"\x01", b"\x80" * 4, b"\x00", b"\x7f"])
        elif op == 4 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 5 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        else:
            buf[pos:pos] = rng.choice([b"\x08", b"\x10", b"\x12", b"\x1a", b"\x38", b"\x50"])
    return bytes(buf[:MAX_LEN])


def _save(data: bytes) -> Path:
    CRASHERS.mkdir(parents=True, exist_ok=True)
    path = CRASHERS / f"crash-{hashlib.sha1(data).hexdigest()}"  # noqa: S324 - a name, as libFuzzer's
    path.write_bytes(data)
    return path


def _fuzz_in_process(seconds: float, seed: int) -> dict[str, Any]:
    """The engine when atheris is missing: seeded mutations of the seeds."""
    rng = random.Random(seed)
    pool = seeds() + [p.read_bytes() for p in crashers()]
    start = time.monotonic()
    execs = panics = hangs = oom = 0
    saved: list[str] = []
    while time.monotonic() - start < seconds:
        if execs < len(pool):
            data = pool[execs]
        elif rng.randrange(8) == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            data = _mutate(rng, rng.choice(pool), pool)
        failure = run_guarded(data)
        execs += 1
        if failure is None:
            continue
        if failure.startswith("hang"):
            hangs += 1
        elif failure.startswith(UnboundedAllocationError.__name__):
            oom += 1
        else:
            panics += 1
        if len(saved) < 10:
            saved.append(str(_save(data).relative_to(REPO_ROOT)))
            print(f"F30 {TARGET}: {failure} (saved {saved[-1]})", file=sys.stderr)
    return {
        "execs": execs,
        "seconds": round(time.monotonic() - start, 1),
        "panics": panics,
        "hangs": hangs,
        "oom": oom,
        "engine": "mutation",
        "crashers": saved,
    }


def _fuzz_atheris(seconds: float, seed: int, workdir: Path) -> dict[str, Any]:
    """Runs this file under atheris in a child process and reads libFuzzer's report."""
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(data)
    for path in crashers():
        shutil.copy(path, corpus / path.name)
    CRASHERS.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in crashers()}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT / "python" / "src"), str(HERE.parent), env.get("PYTHONPATH", "")]
    )
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--atheris",
            f"-max_total_time={max(1, round(seconds))}",
            f"-timeout={round(TIMEOUT_S)}",
            "-rss_limit_mb=2048",
            f"-seed={seed}",
            f"-max_len={MAX_LEN}",
            f"-artifact_prefix={CRASHERS}/",
            "-print_final_stats=1",
            str(corpus),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(
        r"Done (\d+) runs", log
    )
    new = sorted(p.name for p in crashers() if p.name not in before)
    # libFuzzer stops at the first failure: at most one kind per run.
    panics = hangs = oom = 0
    if proc.returncode != 0:
        if any(n.startswith("timeout-") for n in new):
            hangs = 1
        elif any(n.startswith("oom-") for n in new) or UnboundedAllocationError.__name__ in log:
            oom = 1
        else:
            panics = 1
        print(log[-4000:], file=sys.stderr)
    return {
        "execs": int(runs[-1]) if runs else 0,
        "seconds": round(elapsed, 1),
        "panics": panics,
        "hangs": hangs,
        "oom": oom,
        "engine": "atheris",
        "crashers": [str((CRASHERS / n).relative_to(REPO_ROOT)) for n in new],
    }


def fuzz(seconds: float, workdir: Path) -> dict[str, Any]:
    seed = int(os.environ.get("RRQ_F30_SEED", str(random.SystemRandom().randrange(2**31))))
    print(f"F30 {TARGET}: seed {seed} (rerun with RRQ_F30_SEED={seed})", file=sys.stderr)
    engine = os.environ.get("RRQ_F30_ENGINE", "atheris")  # "mutation" forces the fallback
    if engine == "atheris" and importlib.util.find_spec("atheris") is not None:
        result = _fuzz_atheris(seconds, seed, workdir)
    else:
        result = _fuzz_in_process(seconds, seed)
    record: dict[str, Any] = {"row": ROW, "target": TARGET, **result, "seed": seed}
    print("CHECKER " + json.dumps(record))
    return record


def _assert_clean(record: dict[str, Any]) -> None:
    assert record["execs"] > 0, record
    assert (record["panics"], record["hangs"], record["oom"]) == (0, 0, 0), record


# --- tests -----------------------------------------------------------------------


@pytest.mark.quick
def test_f30_python_regressions() -> None:
    """Every seed and every saved crasher decodes without a failure."""
    failures = [f"seed {i}: {f}" for i, d in enumerate(seeds()) if (f := run_guarded(d))]
    for path in crashers():
        failure = run_guarded(path.read_bytes())
        if failure is not None:
            failures.append(f"{path.name}: {failure}")
    assert not failures, "\n".join(failures)


@pytest.mark.quick
def test_f30_python_frame_fuzz_quick(tmp_path: Path) -> None:
    _assert_clean(fuzz(QUICK_SECONDS, tmp_path))


@pytest.mark.timeout(SECONDS + 180)
def test_f30_python_frame_fuzz(tmp_path: Path) -> None:
    _assert_clean(fuzz(SECONDS, tmp_path))


# --- atheris child ---------------------------------------------------------------


def _atheris_main(argv: list[str]) -> None:
    atheris: Any = importlib.import_module("atheris")

    def test_one_input(data: bytes) -> None:
        one_input(data)

    # Coverage of the decoder's own Python code (protobuf's parser is C);
    # instrument_all() would take minutes over grpc and protobuf.
    for obj in [*vars(_wire).values(), decode_frame, structured, one_input]:
        if isinstance(obj, types.FunctionType) and obj.__module__ in (_wire.__name__, __name__):
            atheris.instrument_func(obj)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__" and sys.argv[1:2] == ["--atheris"]:
    _atheris_main([sys.argv[0], *sys.argv[2:]])
