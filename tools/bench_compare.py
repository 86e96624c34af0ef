"""RRQ against its peers: BullMQ, SAQ and arq, same workloads, same machine, same run.

Run with `make bench-compare`. Installs the pinned peer versions into
.rrq/bench-peers/ (a virtualenv for SAQ and arq, an npm folder for BullMQ),
then measures for RRQ and each peer, each against its own private Redis:

- sequential enqueue from one process (`--jobs` no-op jobs, one awaited call each);
- drain of those jobs by one worker process at its best concurrency setting
  (the best of `--concurrency`; for RRQ the best of `--max-in-flight`), from
  the first handler start to the last handler end;
- idle pickup latency (enqueue call -> handler start) p50 and p99 over
  `--latency-jobs` jobs, one at a time.

Prints a table with RRQ/peer ratios (above 1 means RRQ is better: higher rate,
lower latency) and writes bench-results/bench-compare.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

from rrq.testing import Orchestrator, RedisServer, find_rrq_binary

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / ".rrq" / "bench-peers"

# Pinned peer versions.
ARQ_VERSION = "0.26.3"
SAQ_VERSION = "0.26.4"
TYPING_EXTENSIONS_VERSION = "4.12.2"  # SAQ imports it without declaring it
BULLMQ_VERSION = "5.34.10"

# One Python script serves both Python peers: `peer.py <arq|saq> <mode> <dsn> <n> <concurrency>`.
# Modes: enqueue (prints seconds), drain (prints the drain window in seconds),
# pickup (prints latencies in ms, one per line).
PY_PEER = r"""
import asyncio, os, sys, time
import redis.asyncio as aioredis

peer, mode, dsn = sys.argv[1:4]
n, concurrency = int(sys.argv[4]), int(sys.argv[5])
STATE = {"count": 0, "first": None, "last": 0.0}
DONE = asyncio.Event()
PUSH = aioredis.Redis.from_url(dsn)


async def noop(ctx, **kwargs):
    now = time.time()
    if STATE["first"] is None:
        STATE["first"] = now
    STATE["count"] += 1
    STATE["last"] = time.time()
    if STATE["count"] >= n:
        DONE.set()


async def started_at(ctx, **kwargs):
    await PUSH.rpush("bench:pickup", repr(time.time()))


async def run_arq():
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker
    settings = RedisSettings.from_dsn(dsn)
    pool = await create_pool(settings)
    worker = Worker(functions=[noop, started_at], redis_settings=settings, max_jobs=concurrency,
                    handle_signals=False, poll_delay=0.5, keep_result=0)
    return pool, worker, (lambda name: pool.enqueue_job(name)), worker.async_run, worker.close


async def run_saq():
    from saq import Queue, Worker
    queue = Queue.from_url(dsn)
    await queue.connect()
    worker = Worker(queue, functions=[noop, started_at], concurrency=concurrency)
    return queue, worker, (lambda name: queue.enqueue(name)), worker.start, worker.stop


async def main():
    _, worker, enqueue, start, stop = await (run_arq() if peer == "arq" else run_saq())
    if mode == "enqueue":
        t0 = time.perf_counter()
        for _ in range(n):
            await enqueue("noop")
        print(time.perf_counter() - t0)
        return
    task = asyncio.create_task(start())
    if mode == "drain":
        await DONE.wait()
        print(STATE["last"] - STATE["first"])
    else:
        await asyncio.sleep(1.0)  # the worker is up and idle
        for _ in range(n):
            sent = time.time()
            await enqueue("started_at")
            _, value = await PUSH.blpop("bench:pickup", timeout=10)
            print((float(value) - sent) * 1000)
    sys.stdout.flush()
    os._exit(0)  # the figures are out; a worker's orderly shutdown is not measured

asyncio.run(main())
"""

JS_PEER = r"""
const { Queue, Worker } = require('bullmq');
const [mode, host, port, nText, concText] = process.argv.slice(2);
const n = Number(nText), concurrency = Number(concText);
const connection = { host, port: Number(port), maxRetriesPerRequest: null };
const Redis = require('ioredis');

async function main() {
  const queue = new Queue('bench', { connection });
  const opts = { removeOnComplete: true, removeOnFail: true };
  if (mode === 'enqueue') {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await queue.add('noop', {}, opts);
    console.log((performance.now() - t0) / 1000);
    await queue.close();
    return;
  }
  const push = new Redis(connection);
  const waiter = new Redis(connection);  // BLPOP blocks its connection
  let count = 0, first = null, last = 0, resolve;
  const done = new Promise((r) => { resolve = r; });
  const worker = new Worker('bench', async (job) => {
    if (job.name === 'started_at') {
      await push.rpush('bench:pickup', String((performance.timeOrigin + performance.now()) / 1000));
      return;
    }
    const now = Date.now() / 1000;
    if (first === null) first = now;
    count += 1; last = Date.now() / 1000;
    if (count >= n) resolve();
  }, { connection, concurrency });
  await worker.waitUntilReady();
  if (mode === 'drain') {
    await done;
    console.log(last - first);
  } else {
    await new Promise((r) => setTimeout(r, 1000));
    for (let i = 0; i < n; i++) {
      const sent = (performance.timeOrigin + performance.now()) / 1000;
      await queue.add('started_at', {}, opts);
      const [, value] = await waiter.blpop('bench:pickup', 10);
      console.log((Number(value) - sent) * 1000);
    }
  }
  await worker.close(); await queue.close(); push.disconnect(); waiter.disconnect();
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
"""


def install_peers() -> tuple[Path, Path]:
    """The peers' virtualenv Python and npm folder, installed once per pinned version."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    venv = PEERS_DIR / "venv"
    python = venv / "bin" / "python"
    stamp = PEERS_DIR / "installed.json"
    wanted = {
        "arq": ARQ_VERSION,
        "saq": SAQ_VERSION,
        "typing_extensions": TYPING_EXTENSIONS_VERSION,
        "bullmq": BULLMQ_VERSION,
    }
    if not stamp.exists() or json.loads(stamp.read_text()) != wanted:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        packages = [f"arq=={ARQ_VERSION}", f"saq=={SAQ_VERSION}"]
        packages.append(f"typing_extensions=={TYPING_EXTENSIONS_VERSION}")
        subprocess.run([*pip, *packages], check=True)
        node = PEERS_DIR / "node"
        node.mkdir(exist_ok=True)
        npm = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(node)]
        subprocess.run([*npm, f"bullmq@{BULLMQ_VERSION}"], check=True)
        stamp.write_text(json.dumps(wanted))
    (PEERS_DIR / "peer.py").write_text(textwrap.dedent(PY_PEER))
    (PEERS_DIR / "node" / "peer.js").write_text(JS_PEER)
    return python, PEERS_DIR / "node"


def peer_cmd(peer: str, python: Path, node_dir: Path, mode: str, redis: RedisServer) -> list[str]:
    if peer == "bullmq":
        return ["node", str(node_dir / "peer.js"), mode, "127.0.0.1", str(redis.port)]
    return [str(python), str(PEERS_DIR / "peer.py"), peer, mode, redis.dsn]


def run_peer(cmd: list[str], n: int, concurrency: int) -> list[float]:
    out = subprocess.run(
        [*cmd, str(n), str(concurrency)], check=False, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr[-2000:]}")
    return [float(line) for line in out.stdout.split()]


def measure_peer(
    peer: str, python: Path, node_dir: Path, workdir: Path, args: argparse.Namespace
) -> dict[str, float]:
    figures: dict[str, float] = {}
    best = 0.0
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        with RedisServer(workdir / f"{peer}-{concurrency}", tcp=True) as redis:
            (seconds,) = run_peer(peer_cmd(peer, python, node_dir, "enqueue", redis), args.jobs, 1)
            figures["enqueue_seq_jobs_per_s"] = max(
                figures.get("enqueue_seq_jobs_per_s", 0.0), args.jobs / seconds
            )
            cmd = peer_cmd(peer, python, node_dir, "drain", redis)
            (window,) = run_peer(cmd, args.jobs, concurrency)
            rate = args.jobs / window
            if rate > best:
                best = rate
                figures["drain_concurrency"] = concurrency
    figures["drain_noop_jobs_per_s"] = best
    with RedisServer(workdir / f"{peer}-pickup", tcp=True) as redis:
        cmd = peer_cmd(peer, python, node_dir, "pickup", redis)
        latencies = run_peer(cmd, args.latency_jobs, int(figures["drain_concurrency"]))
    figures["pickup_p50_ms"] = bench.percentile(latencies, 0.50)
    figures["pickup_p99_ms"] = bench.percentile(latencies, 0.99)
    return figures


def measure_rrq(workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, float] = {}
    settings = [int(m) for m in args.max_in_flight.split(",")]
    with RedisServer(workdir / "enqueue", tcp=True) as redis:
        config = bench.write_config(workdir, redis.dsn, settings[0])
        _, seconds = asyncio.run(bench.enqueue_sequential(config, args.jobs, "noop"))
        figures["enqueue_seq_jobs_per_s"] = args.jobs / seconds
    # Like the peers' concurrency: every setting is tried and the best kept.
    for max_in_flight in settings:
        drain = bench.drain_python(
            workdir / f"drain-{max_in_flight}", args.jobs, max_in_flight, "noop", 1
        )
        rate = drain["drain_noop_1p_jobs_per_s"]
        if rate > figures.get("drain_noop_jobs_per_s", 0.0):
            figures["drain_noop_jobs_per_s"] = rate
            figures["drain_concurrency"] = max_in_flight
    with RedisServer(workdir / "pickup", tcp=True) as redis:
        config = bench.write_config(workdir, redis.dsn, settings[0])
        with Orchestrator(find_rrq_binary(), config, cwd=workdir) as orch:
            orch.wait_for_runners(1)
            latencies = asyncio.run(bench.pickup_latencies(config, args.latency_jobs))
            orch.stop()
    figures["pickup_p50_ms"] = bench.percentile(latencies, 0.50)
    figures["pickup_p99_ms"] = bench.percentile(latencies, 0.99)
    return figures


def ratio(figure: str, rrq: float, peer: float) -> float:
    """RRQ/peer, oriented so that above 1 means RRQ is better."""
    if figure.startswith("pickup"):
        return peer / rrq if rrq else float("nan")
    return rrq / peer if peer else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10000, help="jobs enqueued and drained")
    parser.add_argument("--latency-jobs", type=int, default=300, help="jobs timed for pickup")
    parser.add_argument(
        "--max-in-flight", default="256,1024", help="RRQ runner max_in_flight settings tried"
    )
    parser.add_argument(
        "--concurrency", default="16,64,256", help="peer worker concurrency settings tried"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peers", default="bullmq,saq,arq")
    args = parser.parse_args()

    python, node_dir = install_peers()
    out_dir = ROOT / "bench-results"
    peers = [p for p in args.peers.split(",") if p]
    node = subprocess.run(["node", "--version"], check=True, capture_output=True, text=True)
    node_version = node.stdout.strip()
    version = subprocess.run(
        [find_rrq_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{version}; Redis {bench.redis_version()}; arq {ARQ_VERSION}, saq {SAQ_VERSION}, "
        f"bullmq {BULLMQ_VERSION} (Node {node_version}); {os.cpu_count()} cores; "
        f"{args.jobs} jobs, {args.latency_jobs} pickups, {args.runs} runs; "
        f"peer concurrency tried {args.concurrency}, RRQ max_in_flight tried {args.max_in_flight}"
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ["rrq", *peers]}
    for i in range(args.runs):
        workdir = out_dir / f"compare-{i}"
        runs["rrq"].append(measure_rrq(workdir / "rrq", args))
        for peer in peers:
            runs[peer].append(measure_peer(peer, python, node_dir, workdir, args))
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    figures = ["enqueue_seq_jobs_per_s", "drain_noop_jobs_per_s", "pickup_p50_ms", "pickup_p99_ms"]
    header = f"{'figure':<26}{'RRQ':>10}" + "".join(
        f"{peer:>10}{'RRQ/' + peer:>14}" for peer in peers
    )
    print("\n" + header)
    for figure in figures:
        row = f"{figure:<26}{summary['rrq'][figure]:>10.2f}"
        for peer in peers:
            value = summary[peer][figure]
            row += f"{value:>10.2f}{ratio(figure, summary['rrq'][figure], value):>14.2f}"
        print(row)
    print(
        "best concurrency: "
        + ", ".join(f"{name} {int(summary[name]['drain_concurrency'])}" for name in runs)
    )
    print("medians of the runs; RRQ/peer above 1 means RRQ is better (latency: peer/RRQ)")
    result = {"settings": vars(args), "runs": runs, "summary": summary}
    (out_dir / "bench-compare.json").write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out_dir / 'bench-compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
