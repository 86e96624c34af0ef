"""Redis's own cost of RRQ's Lua scripts, counted in instructions by callgrind.

Run with `make bench-lua`. Wall-clock timings of a script on a shared 2-core
machine drift by 10-20% between runs; instruction counts do not. This runs a
private redis-server (AOF everysec, as the orchestrator requires) under
`valgrind --tool=callgrind`, counting only while the workload runs, and prints
instructions per job, split by where Redis spends them:

- plain enqueue: `--jobs` single `enqueue.lua` calls, as a producer's
  sequential enqueue makes them;
- drain: `--jobs` waiting jobs claimed `--batch` at a time, three batches in
  flight (the active set past its listpack size, as in a real drain), each
  batch settled `complete` by one `settle.lua` call.

`--lua-dir` points at another copy of the scripts, for an A/B of a change.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import redis

from rrq.store import (
    active_key,
    debounce_key_prefix,
    dlq_key,
    done_channel_prefix,
    due_key,
    job_key,
    job_key_prefix,
    wake_channel,
)
from rrq.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = ROOT / "rust" / "rrq-store" / "lua"
QUEUE = "q"
OWNER = "profile-owner"

# callgrind symbols (redis-server's own) whose inclusive counts split a job's cost.
PARTS = {
    "script_total": "evalGenericCommand",
    "script_lua": "lua_pcall",
    "commands_in_scripts": "scriptCall",
    "command_reply_to_lua": "parseReply",
    "aof_propagation": "propagatePendingCommands",
    "request_parsing": "processMultibulkBuffer",
}


def job_id(n: int) -> str:
    return f"{n:026d}"  # the length of a ULID


def enqueue_argv(jid: str) -> list[object]:
    return [jid, "noop", QUEUE, '{"a":1}', 5, 0, 0, 0, 0, "", "", 1 << 20]


def enqueue_call(sha: str, jid: str, more: list[str]) -> list[object]:
    keys = [job_key(QUEUE, jid), due_key(QUEUE)]
    rule = [wake_channel(QUEUE), "", "", 0, 0]
    return [sha, 2, *keys, *enqueue_argv(jid), *rule, *more]


def plain_enqueue(
    r: redis.Redis, shas: dict[str, str], jobs: int, measure: Callable[[bool], None]
) -> None:
    measure(True)
    for n in range(jobs):
        r.evalsha(*enqueue_call(shas["enqueue"], job_id(n), []))  # type: ignore[arg-type]
    measure(False)


def drain(
    r: redis.Redis, shas: dict[str, str], jobs: int, batch: int, measure: Callable[[bool], None]
) -> None:
    for start in range(0, jobs, 500):
        ids = [job_id(n) for n in range(start, min(jobs, start + 500))]
        more = [x for jid in ids[1:] for x in (jid, '{"a":1}')]
        r.evalsha(*enqueue_call(shas["enqueue"], ids[0], more))  # type: ignore[arg-type]
    claim_keys = [
        due_key(QUEUE),
        active_key(QUEUE),
        job_key_prefix(QUEUE),
        debounce_key_prefix(QUEUE),
    ]
    settle_keys = [due_key(QUEUE), active_key(QUEUE), dlq_key(QUEUE), job_key_prefix(QUEUE)]
    settle_head = [3_600_000, 604_800_000, wake_channel(QUEUE), done_channel_prefix(QUEUE)]

    def claim() -> list[list[object]]:
        reply = r.evalsha(shas["claim"], 4, *claim_keys, batch, OWNER, 30_000)
        return list(reply[2:])

    def settle(jobs: list[list[object]]) -> None:
        args: list[object] = []
        for job in jobs:
            args += [job[0], job[1], OWNER, "complete", '"ok"', "", 0, ""]
        r.evalsha(shas["settle"], 4, *settle_keys, *settle_head, *args)  # type: ignore[arg-type]

    in_flight = [claim() for _ in range(3)]
    # Counted: as many batches claimed as settled, jobs - 3 * batch of each
    # (and one empty claim at the end).
    measure(True)
    while claimed := claim():
        in_flight.append(claimed)
        settle(in_flight.pop(0))
    measure(False)
    for jobs_left in in_flight:
        settle(jobs_left)


def inclusive_counts(out: Path) -> dict[str, int]:
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+\S*?:(\w+) ", line)
        if m and m.group(2) not in counts:
            counts[m.group(2)] = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            counts["total"] = int(line.split()[0].replace(",", ""))
    return counts


def profile(workload: str, lua_dir: Path, jobs: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rrq-lua-profile-") as tmp:
        out = Path(tmp) / "callgrind.out"
        callgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no")
        prefix = (*callgrind, f"--callgrind-out-file={out}")
        with RedisServer(Path(tmp) / "redis", command_prefix=prefix) as server:
            assert server.process is not None
            pid = server.process.pid
            r = redis.Redis(unix_socket_path=str(server.socket_path))
            shas = {
                n: r.script_load((lua_dir / f"{n}.lua").read_text())
                for n in ("enqueue", "claim", "settle")
            }

            def measure(on: bool) -> None:
                subprocess.run(
                    ["callgrind_control", "-i", "on" if on else "off", str(pid)],
                    check=True,
                    capture_output=True,
                )

            if workload == "enqueue":
                plain_enqueue(r, shas, jobs, measure)
            else:
                drain(r, shas, jobs, batch, measure)
            # callgrind writes its counts when Redis exits on its own; the
            # server's stop() would kill it.
            with contextlib.suppress(redis.ConnectionError):  # SHUTDOWN closes it
                r.shutdown(nosave=True)
            server.process.wait(timeout=120)
        counts = inclusive_counts(out)
    measured = jobs if workload == "enqueue" else jobs - 3 * batch
    per_job = {"total": counts["total"] / measured} | {
        part: counts.get(symbol, 0) / measured for part, symbol in PARTS.items()
    }
    # Derived: the Lua interpreter and redis.call's own glue (argument
    # conversion, lookups), and everything outside the script call.
    per_job["lua_code_and_call_glue"] = (
        per_job["script_lua"] - per_job["commands_in_scripts"] - per_job["command_reply_to_lua"]
    )
    per_job["outside_scripts"] = per_job["total"] - per_job["script_total"]
    return per_job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="jobs per claim and per settle")
    parser.add_argument("--lua-dir", type=Path, default=LUA_DIR)
    args = parser.parse_args()
    if args.jobs < 4 * args.batch:
        parser.error("--jobs must be at least 4 batches")
    missing = [
        t
        for t in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-server")
        if shutil.which(t) is None
    ]
    if missing:
        parser.error(
            f"needs {', '.join(missing)} on PATH (Debian: apt-get install valgrind redis-server)"
        )
    print(f"Redis instructions per job (callgrind), scripts from {os.path.relpath(args.lua_dir)}")
    print(f"{'part':24} {'plain enqueue':>14} {'claim+settle':>14}")
    enqueue = profile("enqueue", args.lua_dir, args.jobs, args.batch)
    drained = profile("drain", args.lua_dir, args.jobs, args.batch)
    for part in ["total", *PARTS, "lua_code_and_call_glue", "outside_scripts"]:
        print(f"{part:24} {enqueue[part]:>14,.0f} {drained[part]:>14,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
