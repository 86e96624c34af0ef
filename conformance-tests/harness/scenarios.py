"""Scenarios: YAML data (``conformance-tests/scenarios/*.yaml``) run step by step.

A scenario file::

    name: retries_backoff            # optional; defaults to the file name
    description: ...                 # one line, printed nowhere but read by humans
    requires: [current_span_trace_id]  # optional features (features.yaml); else skipped
    config: {max_payload_bytes: 65536} # optional extra [rrq] keys for this scenario
    timeout: 60                      # optional budget of the whole scenario (s), default 60
    steps: [...]

Each (scenario, language) gets a fresh Redis and orchestrator with one runner
named after the language (see harness/README.md); the harness waits for that
runner to connect, then runs the steps in order. ``$dir`` in any string of
params is replaced by the scenario's marker directory (an absolute path).

Steps (each one mapping with one key; ``job`` names a job given ``as:`` at enqueue):

``enqueue: {as, function, params?, pad_params_to_bytes?, queue_name?, max_retries?,
job_timeout_seconds?, result_ttl_seconds?, defer_by_seconds?, trace_parent?}``
    enqueue with the Python client; ``pad_params_to_bytes: N`` adds a ``pad``
    string to params so their compact JSON is exactly N bytes, or
    ``max_payload_bytes - N`` bytes when N is negative; ``trace_parent`` is made the
    current OpenTelemetry context around the call, so the client stores it.
``wait_for_file: {file, timeout?}``
    wait until ``<dir>/<file>`` exists.
``wait_for_status: {job, status, timeout?}``
    wait until the job's record has that status.
``wait_for_result: {job, timeout?}``
    wait until the job is terminal (``RRQClient.wait_for_result``).
``cancel: {job}``
    ``RRQClient.cancel``; it must return True.
``signal_orchestrator: {signal}``
    send SIGTERM / SIGINT / ... to the orchestrator.
``expect_orchestrator_exit: {code, timeout?}``
    the orchestrator exits with that status within the timeout.
``expect: {job, <path>: <expected>, ...}``
    check fields of the job record (``common.record_view``): a path is dotted
    (``errors.0.error_type``, ``result.trace_id``); ``#`` is a length
    (``errors.#``), ``*`` means every element (``errors.*.error_type``).
    An expected value is compared for equality, or is an operator mapping:
    ``{$ne: v}``, ``{$in: [..]}``, ``{$gte: n}``, ``{$lte: n}``, ``{$regex: r}``,
    ``{$same_as: other.path}`` (equal to another field of the record).
``expect_elapsed: {job, from, to, min_ms?, max_ms?}``
    ``record[to] - record[from]`` (ms, both Redis times) lies within the bounds.
``expect_in_dlq: {job}``
    the job is listed by ``RRQClient.dlq_list`` and by ``rrq dlq list --json``.
``expect_file: {file, exists?}``
    ``<dir>/<file>`` exists (or not, with ``exists: false``).
``expect_runner_replaced: {pid_file, timeout?}``
    the runner whose pid is in ``<dir>/<pid_file>`` is dead, and another runner
    process connected after it (``runner connected`` lines of the orchestrator log).

Every step has a ``timeout`` (s, default 20) where it waits at all.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import yaml
from common import (
    CONNECT_TIMEOUT,
    SCENARIOS_DIR,
    ConformanceError,
    Language,
    Result,
    RunnerSpec,
    connected_pids,
    decode_hash,
    job_key,
    kill_everything,
    orchestrator_env,
    pid_alive,
    record_view,
    start_redis,
    write_config,
)
from opentelemetry import context as otel_context
from opentelemetry import propagate

from rrq.client import RRQClient
from rrq.testing import Orchestrator

DEFAULT_STEP_TIMEOUT = 20.0
DEFAULT_SCENARIO_TIMEOUT = 60.0
DEFAULT_QUEUE = "default"
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576

STEP_KINDS = frozenset(
    {
        "enqueue",
        "wait_for_file",
        "wait_for_status",
        "wait_for_result",
        "cancel",
        "signal_orchestrator",
        "expect_orchestrator_exit",
        "expect",
        "expect_elapsed",
        "expect_in_dlq",
        "expect_file",
        "expect_runner_replaced",
    }
)
ENQUEUE_OPTIONS = (
    "queue_name",
    "max_retries",
    "job_timeout_seconds",
    "result_ttl_seconds",
    "defer_by_seconds",
)


@dataclass
class Scenario:
    name: str
    path: Path
    steps: list[dict[str, Any]]
    requires: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_SCENARIO_TIMEOUT
    description: str = ""


def load_scenarios(selected: list[str]) -> list[Scenario]:
    scenarios = []
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise SystemExit(f"{path}: a scenario must be a mapping")
        steps = data.get("steps")
        if not isinstance(steps, list) or not steps:
            raise SystemExit(f"{path}: steps must be a non-empty list")
        for index, step in enumerate(steps):
            if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEP_KINDS:
                raise SystemExit(
                    f"{path}: step {index + 1} must be a mapping with one of "
                    f"{', '.join(sorted(STEP_KINDS))}, got {step!r}"
                )
        scenarios.append(
            Scenario(
                name=str(data.get("name", path.stem)),
                path=path,
                steps=steps,
                requires=list(data.get("requires") or []),
                config=dict(data.get("config") or {}),
                timeout=float(data.get("timeout", DEFAULT_SCENARIO_TIMEOUT)),
                description=str(data.get("description", "")),
            )
        )
    if selected:
        names = {s.name for s in scenarios}
        unknown = [n for n in selected if n not in names]
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
        scenarios = [s for s in scenarios if s.name in selected]
    return scenarios


# --- expectations ---------------------------------------------------------------

_MISSING = object()


def lookup(value: Any, path: str) -> Any:  # noqa: ANN401 - JSON values
    """The value at a dotted path (``#`` = length); _MISSING when absent."""
    for part in path.split("."):
        if part == "#":
            if not isinstance(value, list | str | dict):
                return _MISSING
            value = len(value)
        elif isinstance(value, list):
            if not part.isdigit() or int(part) >= len(value):
                return _MISSING
            value = value[int(part)]
        elif isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        else:
            return _MISSING
    return value


def values_at(record: Mapping[str, Any], path: str) -> list[tuple[str, Any]]:
    """(concrete path, value) pairs; ``*`` expands to every element of a list."""
    head, star, tail = path.partition(".*")
    if not star:
        return [(path, lookup(record, path))]
    items = lookup(record, head)
    if not isinstance(items, list):
        return [(head, _MISSING)]
    if not items:
        return [(f"{head}.*", _MISSING)]
    out: list[tuple[str, Any]] = []
    for index in range(len(items)):
        out += values_at(record, f"{head}.{index}{tail}")
    return out


def short(value: object, limit: int = 160) -> str:
    text = "<missing>" if value is _MISSING else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def check_value(
    record: Mapping[str, Any], path: str, actual: object, expected: object
) -> str | None:
    """None when ``actual`` meets ``expected``, else why not."""
    if isinstance(expected, dict) and len(expected) == 1 and next(iter(expected)).startswith("$"):
        op, operand = next(iter(expected.items()))
        if actual is _MISSING:
            return f"{path} is missing (expected {op} {short(operand)})"
        if op == "$ne":
            ok = actual != operand
        elif op == "$in":
            ok = actual in operand
        elif op in ("$gte", "$lte"):
            ok = isinstance(actual, int | float) and (
                actual >= operand if op == "$gte" else actual <= operand
            )
        elif op == "$regex":
            ok = isinstance(actual, str) and re.search(str(operand), actual) is not None
        elif op == "$same_as":
            other = lookup(record, str(operand))
            ok = actual == other
            if not ok:
                return f"{path} = {short(actual)}, expected the same as {operand} = {short(other)}"
        else:
            return f"unknown operator {op} for {path}"
        return None if ok else f"{path} = {short(actual)}, expected {op} {short(operand)}"
    if actual != expected:
        return f"{path} = {short(actual)}, expected {short(expected)}"
    return None


# --- running ---------------------------------------------------------------------


@dataclass
class Context:
    language: Language
    scenario: Scenario
    workdir: Path
    markers: Path
    client: RRQClient
    redis: aioredis.Redis
    orchestrator: Orchestrator
    config_path: Path
    binary: str
    max_payload_bytes: int
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> (queue, id)
    transcript: list[str] = field(default_factory=list)

    def job(self, step: Mapping[str, Any]) -> tuple[str, str]:
        alias = step.get("job")
        if alias not in self.jobs:
            raise ConformanceError(f"unknown job {alias!r} (enqueue it with as: {alias})")
        return self.jobs[str(alias)]

    async def record(self, step: Mapping[str, Any]) -> dict[str, Any]:
        queue, job_id = self.job(step)
        raw = await self.redis.hgetall(job_key(queue, job_id))
        if not raw:
            raise ConformanceError(f"job {step.get('job')} ({job_id}) has no record in Redis")
        return record_view(decode_hash(raw))


def substitute_dir(value: Any, directory: str) -> Any:  # noqa: ANN401 - JSON values
    if isinstance(value, str):
        return value.replace("$dir", directory)
    if isinstance(value, list):
        return [substitute_dir(v, directory) for v in value]
    if isinstance(value, dict):
        return {k: substitute_dir(v, directory) for k, v in value.items()}
    return value


def padded(params: dict[str, Any], size: int) -> dict[str, Any]:
    """params plus a ``pad`` string making their compact JSON exactly ``size`` bytes."""
    base = dict(params, pad="")
    length = len(json.dumps(base, ensure_ascii=False, separators=(",", ":")).encode())
    if length > size:
        raise ConformanceError(f"params are already {length} bytes, cannot pad to {size}")
    base["pad"] = "x" * (size - length)
    return base


async def poll(what: str, limit: float, check: Any) -> Any:  # noqa: ANN401
    """Calls async ``check()`` every 50 ms until it returns non-None."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise ConformanceError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


async def step_enqueue(ctx: Context, step: Mapping[str, Any]) -> None:
    alias = str(step.get("as", "job"))
    params = substitute_dir(dict(step.get("params") or {}), str(ctx.markers))
    if "pad_params_to_bytes" in step:
        size = int(step["pad_params_to_bytes"])
        params = padded(params, size if size > 0 else ctx.max_payload_bytes + size)
    options: dict[str, Any] = {"params": params}
    for name in ENQUEUE_OPTIONS:
        if name in step:
            options[name] = step[name]
    token = None
    if step.get("trace_parent"):
        token = otel_context.attach(propagate.extract({"traceparent": str(step["trace_parent"])}))
    try:
        job_id = await ctx.client.enqueue(str(step["function"]), options)
    finally:
        if token is not None:
            otel_context.detach(token)
    ctx.jobs[alias] = (str(options.get("queue_name", DEFAULT_QUEUE)), job_id)
    ctx.transcript.append(f"enqueued {alias} = {step['function']} ({job_id})")


async def step_wait_for_file(ctx: Context, step: Mapping[str, Any]) -> None:
    path = ctx.markers / str(step["file"])

    async def exists() -> bool | None:
        return True if path.exists() else None

    await poll(f"file {step['file']}", float(step.get("timeout", DEFAULT_STEP_TIMEOUT)), exists)


async def step_wait_for_status(ctx: Context, step: Mapping[str, Any]) -> None:
    wanted = str(step["status"])
    seen: list[str] = []

    async def reached() -> bool | None:
        status = str((await ctx.record(step)).get("status"))
        seen.append(status)
        return True if status == wanted else None

    try:
        await poll(f"status {wanted}", float(step.get("timeout", DEFAULT_STEP_TIMEOUT)), reached)
    except ConformanceError as exc:
        raise ConformanceError(f"{exc} (last status {seen[-1] if seen else '?'})") from None


async def step_wait_for_result(ctx: Context, step: Mapping[str, Any]) -> None:
    _queue, job_id = ctx.job(step)
    timeout = float(step.get("timeout", DEFAULT_STEP_TIMEOUT))
    try:
        result = await ctx.client.wait_for_result(job_id, timeout=timeout)
    except TimeoutError:
        record = await ctx.record(step)
        raise ConformanceError(
            f"job {step['job']} not finished after {timeout}s: status {record.get('status')}, "
            f"attempt {record.get('attempt')}, last error {record.get('last_error_type')!r} "
            f"{record.get('last_error')!r}"
        ) from None
    ctx.transcript.append(f"{step['job']} finished: {result}")


async def step_cancel(ctx: Context, step: Mapping[str, Any]) -> None:
    _queue, job_id = ctx.job(step)
    if not await ctx.client.cancel(job_id):
        raise ConformanceError(f"cancel({step['job']}) returned False: the job had finished")


async def step_signal_orchestrator(ctx: Context, step: Mapping[str, Any]) -> None:
    ctx.orchestrator.signal(signal.Signals[str(step["signal"])])


async def step_expect_orchestrator_exit(ctx: Context, step: Mapping[str, Any]) -> None:
    timeout = float(step.get("timeout", DEFAULT_STEP_TIMEOUT))
    try:
        code = await asyncio.to_thread(ctx.orchestrator.wait, timeout)
    except subprocess.TimeoutExpired:
        raise ConformanceError(f"the orchestrator did not exit within {timeout}s") from None
    if code != int(step.get("code", 0)):
        raise ConformanceError(f"the orchestrator exited {code}, expected {step.get('code', 0)}")


async def step_expect(ctx: Context, step: Mapping[str, Any]) -> None:
    record = await ctx.record(step)
    problems = []
    for path, expected in step.items():
        if path == "job":
            continue
        for concrete, actual in values_at(record, path):
            problem = check_value(record, concrete, actual, expected)
            if problem:
                problems.append(problem)
    if problems:
        raise ConformanceError(f"job {step['job']}: " + "; ".join(problems))


async def step_expect_elapsed(ctx: Context, step: Mapping[str, Any]) -> None:
    record = await ctx.record(step)
    start, end = lookup(record, str(step["from"])), lookup(record, str(step["to"]))
    if not isinstance(start, int) or not isinstance(end, int):
        raise ConformanceError(
            f"job {step['job']}: {step['from']} = {short(start)}, {step['to']} = {short(end)}: "
            "both must be times in ms"
        )
    elapsed = end - start
    low, high = step.get("min_ms"), step.get("max_ms")
    if (low is not None and elapsed < low) or (high is not None and elapsed > high):
        raise ConformanceError(
            f"job {step['job']}: {step['to']} - {step['from']} = {elapsed} ms, "
            f"expected within [{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}] ms"
        )


async def step_expect_in_dlq(ctx: Context, step: Mapping[str, Any]) -> None:
    queue, job_id = ctx.job(step)
    listed = [r.job_id for r in await ctx.client.dlq_list(queue_name=queue)]
    if job_id not in listed:
        raise ConformanceError(f"job {step['job']} is not in dlq_list({queue}): {listed}")
    cli = await asyncio.to_thread(
        subprocess.run,
        [ctx.binary, "dlq", "list", "--config", str(ctx.config_path), "--queue", queue, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if cli.returncode != 0:
        raise ConformanceError(f"rrq dlq list exited {cli.returncode}: {cli.stderr.strip()}")
    entries = json.loads(cli.stdout or "[]")
    ids = [e.get("job_id", e.get("id")) for e in entries if isinstance(e, dict)]
    if job_id not in ids:
        raise ConformanceError(f"job {step['job']} is not in `rrq dlq list --json`: {ids}")


async def step_expect_file(ctx: Context, step: Mapping[str, Any]) -> None:
    path = ctx.markers / str(step["file"])
    wanted = bool(step.get("exists", True))
    if path.exists() != wanted:
        raise ConformanceError(f"{step['file']} {'does not exist' if wanted else 'exists'}")


async def step_expect_runner_replaced(ctx: Context, step: Mapping[str, Any]) -> None:
    pid_file = ctx.markers / str(step["pid_file"])
    old_pid = int(pid_file.read_text(encoding="utf-8").strip())
    timeout = float(step.get("timeout", DEFAULT_STEP_TIMEOUT))

    async def dead() -> bool | None:
        return True if not pid_alive(old_pid) else None

    await poll(f"runner pid {old_pid} (from {step['pid_file']}) to die", timeout, dead)

    async def replaced() -> int | None:
        pids = connected_pids(ctx.orchestrator)
        if old_pid in pids:
            newer = pids[pids.index(old_pid) + 1 :]
            fresh = [p for p in newer if p != old_pid]
            return fresh[-1] if fresh else None
        # The hung runner may not be the one the log names first; any other pid will do.
        others = [p for p in pids if p != old_pid]
        return others[-1] if len(pids) >= 2 and others else None

    new_pid = await poll("a new runner to connect", timeout, replaced)
    ctx.transcript.append(f"runner {old_pid} replaced by {new_pid}")


STEPS = {
    "enqueue": step_enqueue,
    "wait_for_file": step_wait_for_file,
    "wait_for_status": step_wait_for_status,
    "wait_for_result": step_wait_for_result,
    "cancel": step_cancel,
    "signal_orchestrator": step_signal_orchestrator,
    "expect_orchestrator_exit": step_expect_orchestrator_exit,
    "expect": step_expect,
    "expect_elapsed": step_expect_elapsed,
    "expect_in_dlq": step_expect_in_dlq,
    "expect_file": step_expect_file,
    "expect_runner_replaced": step_expect_runner_replaced,
}
assert set(STEPS) == STEP_KINDS


class RunnerNeverConnectedError(ConformanceError):
    pass


async def _run_steps(language: Language, scenario: Scenario, workdir: Path, binary: str) -> None:
    markers = workdir / "markers"
    markers.mkdir(parents=True)
    assert language.runner_cmd is not None
    redis_server = start_redis(workdir / "redis")
    orchestrator: Orchestrator | None = None
    try:
        max_payload = int(scenario.config.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES))
        config = write_config(
            workdir,
            redis_server.dsn,
            [RunnerSpec(language.name, language.runner_cmd, language.directory)],
            default_runner=language.name,
            extra=scenario.config,
        )
        orchestrator = Orchestrator(binary, config, cwd=workdir, env=orchestrator_env())
        try:
            await asyncio.to_thread(orchestrator.start)
            await asyncio.to_thread(orchestrator.wait_for_runners, 1, CONNECT_TIMEOUT)
        except TimeoutError as exc:
            raise RunnerNeverConnectedError(
                f"the {language.name} runner did not connect: {str(exc).splitlines()[0]}"
            ) from None
        redis = aioredis.Redis.from_url(redis_server.dsn)
        client = RRQClient(config={"redis_dsn": redis_server.dsn, "max_payload_bytes": max_payload})
        ctx = Context(
            language=language,
            scenario=scenario,
            workdir=workdir,
            markers=markers,
            client=client,
            redis=redis,
            orchestrator=orchestrator,
            config_path=config,
            binary=binary,
            max_payload_bytes=max_payload,
        )
        try:
            for index, step in enumerate(scenario.steps, 1):
                kind, args = next(iter(step.items()))
                try:
                    await STEPS[kind](ctx, args or {})
                except ConformanceError as exc:
                    raise ConformanceError(f"step {index} ({kind}): {exc}") from None
                except Exception as exc:
                    raise ConformanceError(
                        f"step {index} ({kind}): {type(exc).__name__}: {exc}"
                    ) from exc
        finally:
            await client.close()
            await redis.aclose()
    finally:
        if orchestrator is not None:
            kill_everything(orchestrator)
        redis_server.stop()


def run_scenario(language: Language, scenario: Scenario, workdir: Path, binary: str) -> Result:
    """Runs one scenario for one language (in its own event loop); never raises."""
    started = time.monotonic()
    try:
        asyncio.run(
            asyncio.wait_for(_run_steps(language, scenario, workdir, binary), scenario.timeout)
        )
    except RunnerNeverConnectedError as exc:
        return Result(
            "fail",
            str(exc),
            _details(workdir),
            time.monotonic() - started,
            runner_never_connected=True,
        )
    except ConformanceError as exc:
        return Result("fail", str(exc), _details(workdir), time.monotonic() - started)
    except TimeoutError:
        return Result(
            "fail",
            f"the scenario took longer than its timeout ({scenario.timeout}s)",
            _details(workdir),
            time.monotonic() - started,
        )
    except Exception as exc:  # noqa: BLE001 - a harness error is a failed cell, not a crash
        return Result(
            "fail",
            f"harness error: {type(exc).__name__}: {exc}",
            _details(workdir),
            time.monotonic() - started,
        )
    return Result("pass", seconds=time.monotonic() - started)


def _details(workdir: Path) -> str:
    logs = sorted(workdir.glob("orchestrator-*.log"))
    if not logs:
        return f"workdir: {workdir}"
    lines = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
    return f"workdir: {workdir}\norchestrator log ({logs[-1]}), last lines:\n" + "\n".join(
        "    " + line for line in lines
    )


__all__ = ["Scenario", "load_scenarios", "run_scenario"]
