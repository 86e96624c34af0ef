"""What every harness stage shares: languages, results, rrq.toml, processes, job records.

The harness drives runners as black boxes: it starts the real orchestrator
(``rrq.testing.Orchestrator``) on a private Redis (``rrq.testing.RedisServer``)
and reads Redis; it never imports runner code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rrq.testing import Orchestrator, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]  # conformance-tests/
RUNNERS_DIR = ROOT / "runners"
SCENARIOS_DIR = ROOT / "scenarios"

# Column order of the matrix; other language folders follow alphabetically.
PREFERRED_ORDER = ("python", "typescript", "rust")

STATUS_NAMES = {
    0: "UNSPECIFIED",
    1: "PENDING",
    2: "ACTIVE",
    3: "RETRYING",
    4: "COMPLETED",
    5: "FAILED",
    6: "CANCELLED",
}

# Short timings, so that timeouts, retries and recovery happen within seconds.
TIMINGS: Mapping[str, float] = {
    "lease_seconds": 2,
    "lease_renew_interval_seconds": 0.5,
    "recovery_interval_seconds": 0.5,
    "runner_heartbeat_interval_seconds": 0.5,
    "cancel_grace_seconds": 1,
    "shutdown_grace_seconds": 5,
    "retry_backoff_initial_seconds": 0.05,
    "retry_backoff_max_seconds": 0.2,
}

# The environment must not redirect anything to another Redis, config or orchestrator.
_FOREIGN_ENV = (
    "RRQ_REDIS_DSN",
    "RRQ_CONFIG",
    "RRQ_ORCHESTRATOR_ADDR",
    "RRQ_RUNNER_TOKEN",
    "RRQ_RUNNER_NAME",
    "RRQ_RUNNER_MAX_IN_FLIGHT",
)

CONNECT_TIMEOUT = 30.0


class ConformanceError(AssertionError):
    """A check failed; the message says what was expected and what was found."""


# --- results ------------------------------------------------------------------

Outcome = Literal["pass", "fail", "skip", "known-fail"]


@dataclass
class Result:
    outcome: Outcome
    message: str = ""
    details: str = ""  # printed under "failure details"
    seconds: float = 0.0
    # The language's runner never connected: its remaining scenarios fail at once.
    runner_never_connected: bool = False

    def cell(self, width: int = 40) -> str:
        if self.outcome == "pass":
            return "pass"
        if self.outcome == "fail":
            return "FAIL"
        if self.outcome == "skip":
            reason = (
                self.message if len(self.message) <= width else self.message[: width - 3] + "..."
            )
            return f"skip({reason})"
        return "known-fail"


# --- languages ------------------------------------------------------------------


@dataclass
class Language:
    """A ``runners/<name>/`` folder and its features.yaml."""

    name: str
    directory: Path
    build: list[str] | None = None
    runner_cmd: list[str] | None = None
    producer_cmd: list[str] | None = None
    features: dict[str, Any] = field(default_factory=dict)
    # feature -> why the language lacks it: the comment after `feature: false`.
    feature_reasons: dict[str, str] = field(default_factory=dict)
    known_failing: dict[str, str] = field(default_factory=dict)
    # Set when features.yaml is missing or invalid, or the build failed:
    # every cell of this language then fails with this message.
    broken: str | None = None
    build_seconds: float = 0.0


def substitute(cmd: Sequence[object]) -> list[str]:
    """A command from features.yaml with ``{python}`` replaced by this interpreter."""
    return [str(part).replace("{python}", sys.executable) for part in cmd]


def _command(data: Mapping[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key} must be a non-empty list of strings, got {value!r}")
    return substitute(value)


def parse_known_failing(path: Path) -> dict[str, str]:
    """``scenario # reason`` lines; blank lines and ``#`` comment lines are ignored."""
    known: dict[str, str] = {}
    if not path.is_file():
        return known
    for raw in path.read_text(encoding="utf-8").splitlines():
        name, _, reason = raw.partition("#")
        name = name.strip()
        if name:
            known[name] = reason.strip() or "no reason given"
    return known


def discover_languages(selected: Sequence[str]) -> list[Language]:
    names = sorted(
        p.name for p in RUNNERS_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    order = [n for n in PREFERRED_ORDER if n in names] + [
        n for n in names if n not in PREFERRED_ORDER
    ]
    if selected:
        unknown = [n for n in selected if n not in names]
        if unknown:
            raise SystemExit(
                f"unknown language(s): {', '.join(unknown)} (have: {', '.join(order)})"
            )
        order = [n for n in order if n in selected]
    return [load_language(RUNNERS_DIR / name) for name in order]


def _feature_reasons(text: str) -> dict[str, str]:
    """Why a language lacks a feature: the comment after ``name: false``, else the
    comment lines just above it (YAML loaders drop comments)."""
    reasons: dict[str, str] = {}
    above: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^\s+(\w+):\s*(?:false|no|off)\s*(?:#\s*(.*?))?\s*$", line)
        if match:
            reasons[match.group(1)] = match.group(2) or " ".join(above) or f"no {match.group(1)}"
        above = []
    return reasons


def _read_features(path: Path, folder: str) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise TypeError("features.yaml must be a mapping")
    if data.get("language", folder) != folder:
        raise ValueError(f"language is {data.get('language')!r}, the folder is {folder!r}")
    if not isinstance(data.get("features") or {}, dict):
        raise TypeError("features must be a mapping")
    return data


def load_language(directory: Path) -> Language:
    language = Language(name=directory.name, directory=directory)
    language.known_failing = parse_known_failing(directory / "known_failing.txt")
    path = directory / "features.yaml"
    if not path.is_file():
        language.broken = f"build: {path.relative_to(ROOT)} is missing"
        return language
    try:
        data = _read_features(path, directory.name)
        language.build = _command(data, "build")
        language.runner_cmd = _command(data, "runner_cmd")
        language.producer_cmd = _command(data, "producer_cmd")
        language.features = data.get("features") or {}
        language.feature_reasons = _feature_reasons(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        language.broken = f"build: invalid {path.relative_to(ROOT)}: {exc}"
        return language
    if language.runner_cmd is None:
        language.broken = "build: features.yaml has no runner_cmd"
    return language


def build_language(language: Language, log_dir: Path) -> None:
    """Runs the language's ``build`` once (cwd = its folder); marks it broken on failure."""
    if language.broken is not None or language.build is None:
        return
    log_path = log_dir / f"build-{language.name}.log"
    started = time.monotonic()
    try:
        with log_path.open("w", encoding="utf-8") as out:
            completed = subprocess.run(
                language.build,
                cwd=language.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        language.broken = f"build: {' '.join(language.build)}: {exc}"
        return
    finally:
        language.build_seconds = time.monotonic() - started
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        language.broken = (
            f"build: {' '.join(language.build)} exited {completed.returncode} "
            f"(log: {log_path}): " + " | ".join(tail)
        )


def check_command(cmd: Sequence[str], cwd: Path) -> str | None:
    """Why ``cmd`` cannot start, or None: its program is not found, or an
    argument that is a relative path (``./x``, ``../x``) does not exist."""
    program = cmd[0]
    if os.sep in program:
        if not (cwd / program).exists():
            return f"{program} does not exist (relative to {cwd})"
    elif shutil.which(program) is None:
        return f"{program} is not on PATH"
    for arg in cmd[1:]:
        if arg.startswith(("./", "../")) and not (cwd / arg).exists():
            return f"{arg} does not exist (relative to {cwd}): not built?"
    return None


# --- rrq.toml and processes --------------------------------------------------------


@dataclass
class RunnerSpec:
    name: str
    cmd: list[str]
    cwd: Path
    pool_size: int = 1
    max_in_flight: int = 4


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    directory: Path,
    redis_dsn: str,
    runners: Sequence[RunnerSpec],
    *,
    default_runner: str,
    routes: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    settings: dict[str, object] = {"redis_dsn": redis_dsn, "default_runner_name": default_runner}
    settings.update(TIMINGS)
    settings.update(extra or {})
    lines = ["[rrq]"] + [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    if routes:
        lines += ["", "[rrq.runner_routes]"]
        lines += [f"{json.dumps(queue)} = {json.dumps(runner)}" for queue, runner in routes.items()]
    for spec in runners:
        lines += [
            "",
            f"[rrq.runners.{spec.name}]",
            'type = "socket"',
            f"cmd = {toml_value(spec.cmd)}",
            f'tcp_socket = "127.0.0.1:{free_port()}"',
            f"pool_size = {spec.pool_size}",
            f"max_in_flight = {spec.max_in_flight}",
            f"cwd = {toml_value(str(spec.cwd))}",
        ]
    path = directory / "rrq.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def orchestrator_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


_PID_PATTERNS = (re.compile(r"runner connected .*?pid=(\d+)"), re.compile(r"pid=Some\((\d+)\)"))


def runner_pids(orchestrator: Orchestrator) -> list[int]:
    """Pids of the runner processes the orchestrator logged (started or connected)."""
    if orchestrator.log is None:
        return []
    pids: list[int] = []
    for line in orchestrator.log.text().splitlines():
        for pattern in _PID_PATTERNS:
            match = pattern.search(line)
            if match and int(match.group(1)) not in pids:
                pids.append(int(match.group(1)))
    return pids


def connected_pids(orchestrator: Orchestrator) -> list[int]:
    """Pids of the ``runner connected`` lines, in order."""
    if orchestrator.log is None:
        return []
    pattern = _PID_PATTERNS[0]
    return [int(m.group(1)) for m in pattern.finditer(orchestrator.log.text())]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def kill_everything(orchestrator: Orchestrator) -> None:
    """SIGKILL the orchestrator and then each runner process group it started (by pid)."""
    pids = runner_pids(orchestrator)
    orchestrator.kill()
    for pid in runner_pids(orchestrator) or pids:
        # Each runner leads its own process group (the orchestrator spawns it so).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def orchestrator_on(workdir: Path, config: Path, binary: str) -> Iterator[Orchestrator]:
    orchestrator = Orchestrator(binary, config, cwd=workdir, env=orchestrator_env())
    try:
        orchestrator.start()
        yield orchestrator
    finally:
        kill_everything(orchestrator)


def log_tail(orchestrator: Orchestrator | None, lines: int = 25) -> str:
    if orchestrator is None or orchestrator.log is None:
        return ""
    text = orchestrator.log.text().splitlines()[-lines:]
    return f"orchestrator log ({orchestrator.log_path}), last {len(text)} lines:\n" + "\n".join(
        "    " + line for line in text
    )


def start_redis(directory: Path) -> RedisServer:
    return RedisServer(directory, tcp=True).start()


# --- job records -----------------------------------------------------------------

_INT_FIELDS = {
    "attempt",
    "max_retries",
    "job_timeout_ms",
    "result_ttl_ms",
    "enqueued_at_ms",
    "run_at_ms",
    "started_at_ms",
    "finished_at_ms",
}


def job_key(queue: str, job_id: str) -> str:
    return f"rrq:{{{queue}}}:job:{job_id}"


def text(value: object) -> str:
    """A Redis reply item as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def record_view(fields: Mapping[str, str]) -> dict[str, Any]:
    """A job hash as the expectations see it.

    Numbers are ints, ``status`` is the JobStatus name, ``result``, ``params``
    and ``errors`` are the parsed ``result_json``, ``params_json`` and
    ``errors_json`` (``[]`` when absent); every raw field is there too.
    """
    view: dict[str, Any] = dict(fields)
    for name in _INT_FIELDS:
        if name in view:
            view[name] = int(view[name])
    if "status" in view:
        view["status"] = STATUS_NAMES.get(int(view["status"]), view["status"])
    view["result"] = json.loads(fields["result_json"]) if fields.get("result_json") else None
    view["params"] = json.loads(fields["params_json"]) if fields.get("params_json") else None
    view["errors"] = json.loads(fields["errors_json"]) if fields.get("errors_json") else []
    view["cancel_requested"] = fields.get("cancel_requested") in ("1", "true")
    return view
