"""F41: a runner that stops answering (frozen with SIGSTOP) is declared lost
after runner_heartbeat_timeout_seconds, its process group is killed, the
supervisor starts a replacement, and its job runs again elsewhere, once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from rrq.client import RRQClient
from rrq.job import JobStatus

from .conftest import TIMINGS, Harness
from .oracle import Producer
from .test_process_faults import wait_dead
from .test_runner_faults import wait_terminal


async def test_f41_a_frozen_runner_is_killed_and_replaced(
    harness: Harness, producer: Producer, fault_client: RRQClient
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=2, max_in_flight=1))
    before = set(harness.runner_pids(orch))
    assert len(before) == 2, before
    release = harness.dir / "release-f41"
    await producer.enqueue(
        "f41-frozen", {"params": {"hold_until_file": str(release)}, "max_retries": 3}
    )
    harness.oracle.wait_running(1, timeout=20)
    first = next(e for e in harness.oracle.events() if e.job == "f41-frozen")
    assert first.pid in before

    frozen_at = time.monotonic()
    os.kill(first.pid, signal.SIGSTOP)
    # Declared lost after the heartbeat timeout, then killed: not 60 s later.
    timeout = float(TIMINGS["runner_heartbeat_timeout_seconds"])
    await asyncio.to_thread(wait_dead, [first.pid], timeout + 10)
    killed_after = time.monotonic() - frozen_at

    # A replacement process connects (a third "runner connected" line).
    assert orch.log is not None
    await asyncio.to_thread(orch.log.wait_for, orch.RUNNER_CONNECTED, count=3, timeout=20)
    after = set(harness.runner_pids(orch))
    assert first.pid not in after
    assert len(after) == 2, after
    assert after - before, (before, after)

    release.touch()
    await wait_terminal(fault_client, "f41-frozen", 30)
    status = await fault_client.get_job_status("f41-frozen")
    assert status is not None
    assert status.status == JobStatus.COMPLETED, status
    starts = [e for e in harness.oracle.events() if e.kind == "start" and e.job == "f41-frozen"]
    # Attempt 1 on the frozen process, attempt 2 once, on another one.
    assert [(e.attempt, e.pid == first.pid) for e in starts] == [(1, True), (2, False)], starts
    assert "killed the lost runner's process group" in orch.log.text()
    print(
        f"F41: frozen runner pid {first.pid} gone {killed_after:.1f}s after SIGSTOP "
        f"(heartbeat timeout {timeout:g}s); replacement {sorted(after - before)}; "
        "job completed on attempt 2 elsewhere, 2 starts in all"
    )
