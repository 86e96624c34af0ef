"""RRQ benchmark: drain throughput, enqueue rate, idle pickup latency, Redis cost, memory.

Run with `make bench`. Each figure is measured against a private Redis and the
real orchestrator and runner processes; nothing is asserted, the numbers are
printed as a table and written to bench-results/bench.json. The Python runner
gets every figure (docs/performance.md lists how each is measured); the
TypeScript and Rust runners (their conformance fixture programs, handler
`echo`) get the drain rate and their memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis.asyncio as aioredis
import yaml

from rrq.client import RRQClient
from rrq.testing import Orchestrator, RedisServer, find_redis_server, find_rrq_binary

HANDLERS = """
import asyncio
import time

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings


async def noop(request: ExecutionRequest) -> None:
    return None


async def started_at(request: ExecutionRequest) -> float:
    return time.time()


async def sleep_10ms(request: ExecutionRequest) -> None:
    await asyncio.sleep(0.01)


async def hold(request: ExecutionRequest) -> None:
    await asyncio.sleep(3600)


registry = Registry()
registry.register("noop", noop)
registry.register("started_at", started_at)
registry.register("sleep_10ms", sleep_10ms)
registry.register("hold", hold)
settings = PythonRunnerSettings(registry=registry)
"""


ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "conformance-tests" / "runners"


def write_config(
    workdir: Path,
    dsn: str,
    max_in_flight: int,
    *,
    cmd: list[str] | None = None,
    cwd: Path | None = None,
    pool_size: int = 1,
) -> Path:
    """rrq.toml with one runner: the bench's Python handlers, or `cmd` run in `cwd`."""
    if cmd is None:
        (workdir / "bench_handlers.py").write_text(textwrap.dedent(HANDLERS))
        cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", "bench_handlers:settings"]
        cwd = workdir
    config = workdir / "rrq.toml"
    config.write_text(
        textwrap.dedent(f"""\
        [rrq]
        redis_dsn = "{dsn}"
        default_runner_name = "bench"

        [rrq.runners.bench]
        cmd = {json.dumps(cmd)}
        cwd = {json.dumps(str(cwd))}
        pool_size = {pool_size}
        max_in_flight = {max_in_flight}
        """)
    )
    return config


def fixture_runner(language: str) -> tuple[list[str], Path]:
    """Builds a language's conformance fixture and returns its runner command and folder."""
    folder = FIXTURES / language
    spec = yaml.safe_load((folder / "features.yaml").read_text())
    if spec.get("build"):
        subprocess.run(spec["build"], cwd=folder, check=True)
    cmd = [part.replace("{python}", sys.executable) for part in spec["runner_cmd"]]
    if language == "rust":
        # The conformance build is a debug build; measure the optimised one.
        manifest = ROOT / "rust" / "Cargo.toml"
        build = ["cargo", "build", "-q", "--release", "--manifest-path", str(manifest)]
        example = ["-p", "rrq-runner", "--example", "conformance_fixture"]
        subprocess.run([*build, *example], check=True)
        cmd = ["env", "RRQ_EXAMPLE_PROFILE=release", *cmd]
    return cmd, folder


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def enqueue_sequential(
    config: Path, count: int, function: str, params: dict[str, object] | None = None
) -> tuple[list[str], float]:
    """`count` awaited `enqueue` calls one after another; the ids and the seconds taken."""
    async with RRQClient(config_path=str(config)) as client:
        await client.enqueue(function, {"params": {}})  # connect and load the script first
        started = time.perf_counter()
        ids = [await client.enqueue(function, {"params": params or {}}) for _ in range(count)]
        return ids, time.perf_counter() - started


async def enqueue_concurrent(config: Path, count: int, function: str, tasks: int) -> float:
    """`count` enqueues from `tasks` concurrent tasks of one client; the seconds taken."""
    async with RRQClient(config_path=str(config)) as client:
        await client.enqueue(function, {"params": {}})

        async def worker(n: int) -> None:
            for _ in range(n):
                await client.enqueue(function, {"params": {}})

        shares = [count // tasks + (1 if i < count % tasks else 0) for i in range(tasks)]
        started = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in shares))
        return time.perf_counter() - started


async def enqueue_batch(
    config: Path, count: int, function: str, params: dict[str, object] | None = None
) -> tuple[list[str], float]:
    """`count` jobs through `enqueue_many`; the ids and the seconds taken."""
    async with RRQClient(config_path=str(config)) as client:
        await client.enqueue_many(function, [{}])
        started = time.perf_counter()
        ids = await client.enqueue_many(function, [params or {}] * count)
        return ids, time.perf_counter() - started


async def redis_info(dsn: str) -> dict[str, float]:
    """Total commands executed (scripts' inner commands included), CPU seconds, used memory."""
    r = aioredis.Redis.from_url(dsn)
    try:
        stats = await r.info("commandstats")
        cpu = await r.info("cpu")
        memory = await r.info("memory")
    finally:
        await r.aclose()
    return {
        "commands": float(sum(int(v["calls"]) for v in stats.values())),
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "used_memory": float(memory["used_memory"]),
    }


async def flush(dsn: str) -> None:
    r = aioredis.Redis.from_url(dsn)
    try:
        await r.flushall()
    finally:
        await r.aclose()


async def drain_window_ms(dsn: str, ids: list[str]) -> float:
    """Span from the first attempt's start to the last completion, in Redis time."""
    r = aioredis.Redis.from_url(dsn)
    try:
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"rrq:{{default}}:job:{job_id}", "started_at_ms", "finished_at_ms", "status")
        rows = await pipe.execute()
    finally:
        await r.aclose()
    if any(row[2] is None or int(row[2]) != 4 for row in rows):
        raise RuntimeError("not every benchmark job completed")
    started = [int(row[0]) for row in rows]
    finished = [int(row[1]) for row in rows]
    return float(max(finished) - min(started))


async def wait_drained(dsn: str) -> None:
    r = aioredis.Redis.from_url(dsn)
    try:
        # 20,000 done channels would cost more than the drain; a benchmark may poll.
        while await r.zcard("rrq:{default}:due") + await r.zcard("rrq:{default}:active"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()


async def wait_active(dsn: str, count: int, limit_s: float) -> None:
    r = aioredis.Redis.from_url(dsn)
    deadline = time.monotonic() + limit_s
    try:
        while await r.zcard("rrq:{default}:active") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} jobs were not in flight after {limit_s}s")
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()


async def pickup_latencies(config: Path, count: int) -> list[float]:
    latencies = []
    async with RRQClient(config_path=str(config)) as client:
        for _ in range(count):
            sent = time.time()
            job_id = await client.enqueue("started_at", {"params": {}})
            result = await client.wait_for_result(job_id, timeout=10)
            latencies.append((float(result.result) - sent) * 1000)
    return latencies


def drain_only(workdir: Path, language: str, jobs: int, max_in_flight: int) -> dict[str, float]:
    """Drain rate and memory of one runner process of `language` (its fixture's `echo`)."""
    cmd, folder = fixture_runner(language)
    workdir.mkdir(parents=True, exist_ok=True)
    with RedisServer(workdir / "redis") as redis_server:
        config = write_config(workdir, redis_server.dsn, max_in_flight, cmd=cmd, cwd=folder)
        ids, _ = asyncio.run(enqueue_batch(config, jobs, "echo"))
        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(1)
            asyncio.run(wait_drained(redis_server.dsn))
            window_ms = asyncio.run(drain_window_ms(redis_server.dsn, ids))
            assert orch.process is not None
            runners = child_pids(orch.process.pid)
            figures = {
                f"{language}_drain_jobs_per_s": jobs / (window_ms / 1000),
                f"{language}_runner_peak_rss_mb": max(
                    (peak_rss_mb(p) for p in runners), default=float("nan")
                ),
            }
            orch.stop()
    return figures


# Drain workloads of the Python runner: name -> (handler, params of every job).
WORKLOADS: dict[str, tuple[str, dict[str, object]]] = {
    "noop": ("noop", {}),
    "1kb": ("noop", {"data": "x" * 1014}),  # 1,024 bytes of params JSON
    "sleep10ms": ("sleep_10ms", {}),
}


def drain_python(
    workdir: Path, jobs: int, max_in_flight: int, workload: str, processes: int
) -> dict[str, float]:
    """Drain rate of `processes` Python runner processes; with one process and the
    no-op workload also Redis commands and CPU per job."""
    function, params = WORKLOADS[workload]
    workdir.mkdir(parents=True, exist_ok=True)
    with RedisServer(workdir / "redis") as redis_server:
        dsn = redis_server.dsn
        config = write_config(workdir, dsn, max_in_flight, pool_size=processes)
        ids, _ = asyncio.run(enqueue_batch(config, jobs, function, params))
        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(processes)
            before = asyncio.run(redis_info(dsn))
            asyncio.run(wait_drained(dsn))
            after = asyncio.run(redis_info(dsn))
            window_ms = asyncio.run(drain_window_ms(dsn, ids))
            assert orch.process is not None
            figures = {f"drain_{workload}_{processes}p_jobs_per_s": jobs / (window_ms / 1000)}
            if workload == "noop" and processes == 1:
                commands = (after["commands"] - before["commands"]) / jobs
                figures |= {
                    "drain_redis_commands_per_job": commands,
                    "drain_redis_cpu_ms_per_job": (after["cpu_s"] - before["cpu_s"]) * 1000 / jobs,
                    "orchestrator_peak_rss_mb": peak_rss_mb(orch.process.pid),
                    "python_runner_peak_rss_mb": max(
                        (peak_rss_mb(p) for p in child_pids(orch.process.pid)),
                        default=float("nan"),
                    ),
                }
            orch.stop()
    return figures


def producer_and_latency(
    workdir: Path, jobs: int, latency_jobs: int, concurrency: int, pending: int
) -> dict[str, float]:
    """Enqueue rates, enqueue's Redis cost, memory per pending job, idle pickup latency."""
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    with RedisServer(workdir / "redis") as redis_server:
        dsn = redis_server.dsn
        config = write_config(workdir, dsn, 256)

        before = asyncio.run(redis_info(dsn))
        _, seconds = asyncio.run(enqueue_sequential(config, jobs, "noop"))
        after = asyncio.run(redis_info(dsn))
        figures["enqueue_seq_jobs_per_s"] = jobs / seconds
        figures["enqueue_redis_commands_per_job"] = (after["commands"] - before["commands"]) / jobs
        figures["enqueue_redis_cpu_ms_per_job"] = (after["cpu_s"] - before["cpu_s"]) * 1000 / jobs
        asyncio.run(flush(dsn))

        seconds = asyncio.run(enqueue_concurrent(config, jobs, "noop", concurrency))
        figures[f"enqueue_{concurrency}tasks_jobs_per_s"] = jobs / seconds
        asyncio.run(flush(dsn))

        _, seconds = asyncio.run(enqueue_batch(config, jobs, "noop"))
        figures["enqueue_many_jobs_per_s"] = jobs / seconds
        asyncio.run(flush(dsn))

        before = asyncio.run(redis_info(dsn))
        asyncio.run(enqueue_batch(config, pending, "noop"))
        after = asyncio.run(redis_info(dsn))
        figures["redis_bytes_per_pending_job"] = (
            after["used_memory"] - before["used_memory"]
        ) / pending
        asyncio.run(flush(dsn))

        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(1)
            latencies = asyncio.run(pickup_latencies(config, latency_jobs))
            orch.stop()
        figures |= {
            "pickup_p50_ms": percentile(latencies, 0.50),
            "pickup_p99_ms": percentile(latencies, 0.99),
            "pickup_max_ms": max(latencies),
        }
    return figures


def in_flight_rss(workdir: Path, in_flight: int) -> dict[str, float]:
    """Orchestrator RSS with `in_flight` jobs running: one runner, handlers that sleep."""
    workdir.mkdir(parents=True, exist_ok=True)
    with RedisServer(workdir / "redis") as redis_server:
        config = write_config(workdir, redis_server.dsn, in_flight)
        asyncio.run(enqueue_batch(config, in_flight, "hold"))
        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(1)
            asyncio.run(wait_active(redis_server.dsn, in_flight, limit_s=120))
            assert orch.process is not None
            rss = current_rss_mb(orch.process.pid)
            orch.kill()  # the jobs sleep for an hour; nothing more to measure
    return {f"orchestrator_rss_mb_{in_flight}_in_flight": rss}


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(workdir: Path, args: argparse.Namespace, languages: list[str]) -> dict[str, float]:
    figures = producer_and_latency(
        workdir / "producer", args.jobs, args.latency_jobs, args.concurrency, args.pending_jobs
    )
    for workload in WORKLOADS:
        for processes in (1, 2):
            figures |= drain_python(
                workdir / f"drain-{workload}-{processes}",
                args.jobs,
                args.max_in_flight,
                workload,
                processes,
            )
    figures |= in_flight_rss(workdir / "in-flight", args.in_flight)
    for language in languages:
        figures |= drain_only(workdir / language, language, args.jobs, args.max_in_flight)
    return figures


def cell(value: float) -> str:
    """Two decimals, four for figures under 1 (CPU ms per job)."""
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def redis_version() -> str:
    out = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return next((w.removeprefix("v=") for w in out.split() if w.startswith("v=")), out.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000, help="no-op jobs drained per run")
    parser.add_argument("--latency-jobs", type=int, default=500, help="jobs timed for idle pickup")
    parser.add_argument("--max-in-flight", type=int, default=256, help="runner max_in_flight")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="tasks of the concurrent enqueue figure"
    )
    parser.add_argument(
        "--pending-jobs", type=int, default=100_000, help="jobs queued for Redis memory per job"
    )
    parser.add_argument(
        "--in-flight", type=int, default=10_000, help="jobs in flight for the orchestrator RSS"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--languages",
        default="typescript,rust",
        help="other runner languages whose drain rate is measured ('' for none)",
    )
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    out_dir = root / "bench-results"
    out_dir.mkdir(exist_ok=True)
    binary = find_rrq_binary()
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{version}; Python {platform.python_version()}; {os.cpu_count()} cores; "
        f"Redis {redis_version()}; {args.jobs} jobs/run, {args.runs} runs, "
        f"max_in_flight={args.max_in_flight} per runner process, "
        f"{args.concurrency} enqueue tasks, {args.pending_jobs} pending jobs, "
        f"{args.in_flight} in flight, {args.latency_jobs} pickups"
    )

    languages = [lang for lang in args.languages.split(",") if lang]
    runs = []
    for i in range(args.runs):
        runs.append(run_once(out_dir / f"run-{i}", args, languages))
    print(f"\n{'figure':<40}{'median':>12}{'min':>12}{'max':>12}")
    summary = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        shown = (summary[key]["median"], min(values), max(values))
        cells = "".join(f"{cell(v):>12}" for v in shown)
        print(f"{key:<40}{cells}")
    result = {"version": version, "settings": vars(args), "runs": runs, "summary": summary}
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out_dir / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
