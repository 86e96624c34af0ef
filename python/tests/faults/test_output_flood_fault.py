"""F40: a handler floods its stdout and stderr while the orchestrator's own
stderr is a pipe nobody reads. Scheduling never stops, the orchestrator's
memory stays bounded, and what was dropped is counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import python_env
from rrq.client import RRQClient
from rrq.job import JobStatus

from .conftest import ORACLE_SETTINGS, Harness
from .oracle import Producer
from .test_runner_faults import wait_terminal

FLOOD_SETTINGS = "faults.flood_handlers:settings"
MIB = 1024 * 1024
LINE_CAP = 16 * 1024  # rrq::output::MAX_LINE_BYTES
QUEUE_LINES = 8192  # rrq::output's queue, in lines
SHORT_LINES = 400_000
# Nobody reads stderr: past its pipe (64 KiB) and the queue, short lines are dropped.
DROPPED_AT_LEAST = SHORT_LINES - QUEUE_LINES - 1024
# Measured VmHWM after this row: about 12 MiB (the fix bounds what the
# forwarding and the stderr queue hold to a few MiB). Before it, a blocked
# stderr froze the orchestrator; a 300 MB line once took it to 328 MB.
HWM_BOUND_KIB = 64 * 1024


def check_json(binary: str, config: Path) -> tuple[int, dict[str, Any]]:
    """``rrq check --json``: exit status and the document."""
    done = subprocess.run(
        [binary, "check", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


async def wait_serving(binary: str, config: Path, timeout: float) -> dict[str, Any]:
    """The orchestrator's heartbeat once it serves (bounded poll of
    ``rrq check``: its stderr is not read, so there is no log line to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        code, doc = await asyncio.to_thread(check_json, binary, config)
        if code == 0 and doc.get("serving", 0) >= 1:
            return doc
        if time.monotonic() > deadline:
            raise TimeoutError(f"no orchestrator serving within {timeout}s: {code} {doc}")
        await asyncio.sleep(0.2)


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def start_unread(harness: Harness, config: Path) -> subprocess.Popen[bytes]:
    """The orchestrator with stdout and stderr on pipes this test never reads
    (64 KiB of log fills them)."""
    return subprocess.Popen(
        [harness.binary, "worker", "run", "--config", str(config)],
        cwd=harness.dir,
        env=python_env({"RRQ_ORACLE_LOG": str(harness.oracle.path), "RUST_LOG": "info"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def test_f40_output_flood_with_an_unread_stderr(
    harness: Harness, producer: Producer, fault_client: RRQClient
) -> None:
    config = harness.write_config(pool_size=2, max_in_flight=2)
    config.write_text(config.read_text().replace(ORACLE_SETTINGS, FLOOD_SETTINGS))
    proc = start_unread(harness, config)
    try:
        await wait_serving(harness.binary, config, 30)
        # 100 lines of 1 MiB (100 MiB over the runner's two pipes), then
        # 400,000 short lines (25 MiB): more lines than the stderr queue holds.
        await producer.enqueue(
            "f40-flood",
            {
                "params": {"lines": 100, "line_bytes": MIB, "short_lines": SHORT_LINES},
                "max_retries": 0,
            },
            fn="flood",
        )
        await asyncio.to_thread(
            harness.oracle.wait,
            lambda events: any(e.kind == "start" and e.job == "f40-flood" for e in events),
            "the flood's start",
            60,
        )
        work = [f"f40-work-{i}" for i in range(5)]
        for job in work:
            await producer.enqueue(job, {"params": {"sleep_ms": 10}, "max_retries": 0})
        for job in [*work, "f40-flood"]:
            await wait_terminal(fault_client, job, 40)
            status = await fault_client.get_job_status(job)
            assert status is not None, job
            assert status.status == JobStatus.COMPLETED, (job, status)

        # The next heartbeat carries the counters; `rrq check` still finds us.
        deadline = time.monotonic() + 30
        while True:
            code, doc = await asyncio.to_thread(check_json, harness.binary, config)
            orch = (doc.get("orchestrators") or [{}])[0]
            if code == 0 and orch.get("output_lines_dropped", 0) >= DROPPED_AT_LEAST:
                break
            assert time.monotonic() < deadline, doc
            await asyncio.sleep(0.2)
        assert orch["output_lines_cut"] == 100, orch
        # Nobody reads stderr: past its pipe and the queue, short lines are dropped.
        assert orch["output_bytes_dropped"] >= 100 * (MIB - 1 - LINE_CAP), orch
        assert proc.poll() is None, "the orchestrator exited"
        hwm = vm_hwm_kib(proc.pid)
        print(
            f"F40: 5/5 jobs done during a 100 MiB flood; VmHWM {hwm} KiB; "
            f"lines cut {orch['output_lines_cut']}, "
            f"lines dropped {orch['output_lines_dropped']}, "
            f"bytes dropped {orch['output_bytes_dropped']}, "
            f"log lines dropped {orch['log_lines_dropped']}"
        )
        assert hwm < HWM_BOUND_KIB, f"orchestrator VmHWM {hwm} KiB"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
