"""RRQ benchmark: drain throughput, enqueue rate, idle pickup latency, memory.

Run with `make bench`. Each figure is measured against a private Redis and the
real orchestrator and runner processes; nothing is asserted, the numbers are
printed as a table and written to bench-results/bench.json. The Python runner
gets every figure; the TypeScript and Rust runners (their conformance fixture
programs, handler `echo`) get the drain rate and their memory.
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
from rrq.testing import Orchestrator, RedisServer, find_rrq_binary

HANDLERS = """
import time

from rrq.registry import Registry
from rrq.runner import ExecutionRequest
from rrq.runner_settings import PythonRunnerSettings


async def noop(request: ExecutionRequest) -> None:
    return None


async def started_at(request: ExecutionRequest) -> float:
    return time.time()


registry = Registry()
registry.register("noop", noop)
registry.register("started_at", started_at)
settings = PythonRunnerSettings(registry=registry)
"""


ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "conformance-tests" / "runners"


def write_config(
    workdir: Path,
    dsn: str,
    max_in_flight: int,
    cmd: list[str] | None = None,
    cwd: Path | None = None,
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
        pool_size = 1
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


async def enqueue_many(config: Path, count: int, function: str) -> tuple[list[str], float]:
    async with RRQClient(config_path=str(config)) as client:
        started = time.perf_counter()
        ids = [await client.enqueue(function, {"params": {}}) for _ in range(count)]
        return ids, time.perf_counter() - started


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
    started = [int(row[0]) for row in rows]
    finished = [int(row[1]) for row in rows]
    if any(int(row[2]) != 4 for row in rows):
        raise RuntimeError("not every benchmark job completed")
    return float(max(finished) - min(started))


async def wait_drained(dsn: str) -> None:
    r = aioredis.Redis.from_url(dsn)
    try:
        # 20,000 done channels would cost more than the drain; a benchmark may poll.
        while await r.zcard("rrq:{default}:due") + await r.zcard("rrq:{default}:active"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
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
        config = write_config(workdir, redis_server.dsn, max_in_flight, cmd, folder)
        ids, _ = asyncio.run(enqueue_many(config, jobs, "echo"))
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


def run_once(workdir: Path, jobs: int, max_in_flight: int, latency_jobs: int) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    with RedisServer(workdir / "redis") as redis_server:
        config = write_config(workdir, redis_server.dsn, max_in_flight)
        ids, enqueue_s = asyncio.run(enqueue_many(config, jobs, "noop"))
        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(1)
            asyncio.run(wait_drained(redis_server.dsn))
            window_ms = asyncio.run(drain_window_ms(redis_server.dsn, ids))
            latencies = pickup_latencies_sync(config, latency_jobs)
            assert orch.process is not None
            runners = child_pids(orch.process.pid)
            figures = {
                "python_drain_jobs_per_s": jobs / (window_ms / 1000),
                "enqueue_jobs_per_s": jobs / enqueue_s,
                "pickup_p50_ms": percentile(latencies, 0.50),
                "pickup_p99_ms": percentile(latencies, 0.99),
                "pickup_max_ms": max(latencies),
                "orchestrator_peak_rss_mb": peak_rss_mb(orch.process.pid),
                "python_runner_peak_rss_mb": max(
                    (peak_rss_mb(p) for p in runners), default=float("nan")
                ),
            }
            orch.stop()
    return figures


def pickup_latencies_sync(config: Path, count: int) -> list[float]:
    return asyncio.run(pickup_latencies(config, count))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000, help="no-op jobs drained per run")
    parser.add_argument("--latency-jobs", type=int, default=300, help="jobs timed for idle pickup")
    parser.add_argument("--max-in-flight", type=int, default=256, help="runner max_in_flight")
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
        f"{args.jobs} jobs/run, {args.runs} runs, 1 Python runner process, "
        f"max_in_flight={args.max_in_flight}"
    )

    languages = [lang for lang in args.languages.split(",") if lang]
    runs = []
    for i in range(args.runs):
        figures = run_once(out_dir / f"run-{i}", args.jobs, args.max_in_flight, args.latency_jobs)
        for language in languages:
            figures |= drain_only(
                out_dir / f"run-{i}-{language}", language, args.jobs, args.max_in_flight
            )
        runs.append(figures)
    print(f"\n{'figure':<28}{'median':>12}{'min':>12}{'max':>12}")
    summary = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key:<28}{summary[key]['median']:>12.2f}{min(values):>12.2f}{max(values):>12.2f}")
    result = {"version": version, "settings": vars(args), "runs": runs, "summary": summary}
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out_dir / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
