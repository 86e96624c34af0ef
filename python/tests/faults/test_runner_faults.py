"""F2, F13, F14: runner processes that die, hang, or misbehave on the wire."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from conftest import EXTERNAL_TOKEN
from rrq.client import RRQClient
from rrq.job import JobStatus
from rrq.testing import Orchestrator
from rrq.v1 import runner_pb2 as pb
from rrq.v1 import runner_pb2_grpc as pb_grpc

from .conftest import Harness
from .oracle import Fault, Producer, TerminalMonitor, assert_pass, check
from .test_process_faults import wait_dead

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined] # missing from the grpc stubs


def runner_addr(orch: Orchestrator) -> str:
    """The ``python`` runner listener, from the ready line ``listen=[python=HOST:PORT]``."""
    assert orch.log is not None
    line = orch.log.wait_for(Orchestrator.READY)
    match = re.search(r"listen=\[[^\]]*python=([\d.]+:\d+)", line)
    assert match, line
    return match.group(1)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def assert_alive(orch: Orchestrator, pid: int) -> None:
    assert orch.process is not None
    assert orch.process.pid == pid
    assert orch.process.poll() is None, "the orchestrator exited"


async def wait_terminal(client: RRQClient, job: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = await client.get_job_status(job)
        if status is not None and status.status in {
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job} not terminal within {timeout}s: {status}")
        await asyncio.sleep(0.05)  # a bounded poll: no per-job event to wait on


# --- F2 ----------------------------------------------------------------------


async def test_f2_poison_pill(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=2, max_in_flight=4))
    assert orch.process is not None
    orch_pid = orch.process.pid
    await producer.enqueue("f2-poison", {"params": {}, "max_retries": 2}, fn="poison")
    others = []
    for i in range(20):
        job = f"f2-{i}"
        await producer.enqueue(job, {"params": {"sleep_ms": 100 + 20 * i}, "max_retries": 5})
        others.append(job)
    await wait_terminal(fault_client, "f2-poison", 30)

    # The budget: the other jobs in flight on each process the poison pill killed.
    kills = [e for e in harness.oracle.events() if e.kind == "start" and e.job == "f2-poison"]
    affected: set[tuple[str, int]] = set()
    for kill in kills:
        affected |= {
            (j, a) for j, a in harness.oracle.in_flight_on([kill.pid], kill.t) if j != "f2-poison"
        }
    record = await check(
        "F2",
        fault_client,
        producer,
        harness.oracle,
        monitor,
        faults=[Fault(max(k.t for k in kills), len(affected), affected)],
        dead_pids={k.pid: k.t for k in kills},
    )
    assert_pass(record, dup_budget=len(affected))
    starts = [e for e in harness.oracle.events() if e.kind == "start" and e.job == "f2-poison"]
    assert [e.attempt for e in starts] == [1, 2, 3], starts
    assert len({e.pid for e in starts}) == 3, "each attempt ran on a fresh runner process"
    poison = await fault_client.get_job_status("f2-poison")
    assert poison is not None
    assert poison.status == JobStatus.FAILED, poison
    assert poison.last_error_type == "RunnerLost", poison
    assert poison.attempt == 3, poison
    dlq = {j.job_id for j in await fault_client.dlq_list()}
    assert "f2-poison" in dlq, dlq
    for job in others:
        status = await fault_client.get_job_status(job)
        assert status is not None
        assert status.status == JobStatus.COMPLETED, status
    assert_alive(orch, orch_pid)
    assert orch.log is not None
    restarts = orch.log.count(r"restarting runner process")
    print(f"F2 starts={len(starts)} collateral={len(affected)} runner_restarts={restarts}")
    assert restarts == 3, f"one restart per poisoned attempt, got {restarts}"


# --- F13 ---------------------------------------------------------------------


async def test_f13_runner_hangs_ignoring_cancel(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    # One slot per process: a hung process holds its only slot until it is killed.
    orch = harness.orchestrator(
        harness.write_config(pool_size=2, max_in_flight=1, cancel_grace_seconds=2)
    )
    assert orch.process is not None
    assert orch.log is not None
    orch_pid = orch.process.pid
    options = {"params": {}, "max_retries": 1, "job_timeout_seconds": 2}
    await producer.enqueue("f13-hang", options, fn="spin")
    await asyncio.to_thread(
        harness.oracle.wait,
        lambda evs: any(e.job == "f13-hang" for e in evs),
        "the hanging job's start",
        10,
    )
    hung_pid = next(e.pid for e in harness.oracle.events() if e.job == "f13-hang")
    dead_1 = asyncio.create_task(asyncio.to_thread(wait_dead, [hung_pid], 15))
    others = []
    enqueued = time.time()
    for i in range(10):
        job = f"f13-{i}"
        await producer.enqueue(job, {"params": {"sleep_ms": 200}, "max_retries": 3})
        others.append(job)

    # The first replacement: a third "runner connected" line, from a new pid.
    await asyncio.to_thread(orch.log.wait_for, Orchestrator.RUNNER_CONNECTED, 3, 15)
    replaced_at = time.time()
    await asyncio.to_thread(
        harness.oracle.wait,
        lambda evs: any(e.job == "f13-hang" and e.attempt == 2 for e in evs),
        "the hanging job's retry",
        10,
    )
    hang = [e for e in harness.oracle.events() if e.job == "f13-hang"]
    dead_2 = asyncio.create_task(asyncio.to_thread(wait_dead, [hang[1].pid], 15))
    await wait_terminal(fault_client, "f13-hang", 30)
    status = await fault_client.get_job_status("f13-hang")
    assert status is not None
    # Attempt 1's timeout in Redis time: started (enqueued; the runners were idle) -> error.
    assert status.enqueued_at is not None
    first = status.errors[0]
    t1 = first.at.timestamp() - status.enqueued_at.timestamp()
    print(f"F13 status={status.status} errors={[(e.attempt, e.error_type) for e in status.errors]}")
    print(
        f"F13 attempt-1 timeout at T={t1:.3f}s; "
        f"replaced {replaced_at - first.at.timestamp():.3f}s later"
    )
    assert first.error_type == "JobTimeout", status.errors
    assert abs(t1 - 2.0) <= 1.0, t1
    assert replaced_at - first.at.timestamp() <= 2 + 2, "runner not replaced within grace + 2 s"
    assert hung_pid not in harness.runner_pids(orch)

    dead = {**await dead_1, **await dead_2}
    record = await check(
        "F13", fault_client, producer, harness.oracle, monitor, quiet_timeout=30, dead_pids=dead
    )
    # The policy: max_retries 1 -> two attempts, both time out, then FAILED.
    status = await fault_client.get_job_status("f13-hang")
    assert status is not None
    assert status.status == JobStatus.FAILED, status
    assert status.last_error_type == "JobTimeout", status
    assert status.attempt == 2, status
    assert [e.error_type for e in status.errors] == ["JobTimeout", "JobTimeout"], status.errors
    assert status.started_at is not None
    t2 = status.errors[-1].at.timestamp() - status.started_at.timestamp()
    assert abs(t2 - 2.0) <= 1.0, t2
    # One designed re-execution (the timed-out attempt 1 ran again as attempt 2). The
    # orchestrator holds the retry back until the cancel grace is over and the hung
    # process is killed, so the two attempts never overlap.
    gap = hang[1].t - dead[hung_pid]
    print(f"F13 attempt 2 started {gap:.3f}s after attempt 1's process died")
    assert gap >= 0, gap
    assert_pass(record, dup_budget=1, concurrent_budget=0)
    assert orch.log.count(r"killed its process") == 2
    # Other jobs ran on the healthy process at full speed while the other one hung.
    events = harness.oracle.events()
    for job in others:
        starts = [e for e in events if e.kind == "start" and e.job == job]
        ends = [e for e in events if e.kind == "end" and e.job == job]
        assert len(starts) == 1, (job, starts)
        assert len(ends) == 1, (job, ends)
        assert starts[0].pid != hung_pid
        assert ends[0].t - starts[0].t <= 0.2 + 0.3, (job, ends[0].t - starts[0].t)
    drained = max(e.t for e in events if e.kind == "end" and e.job in others) - enqueued
    print(f"F13 other jobs drained {drained:.3f}s after enqueue (10 x 0.2 s on one slot)")
    assert drained <= 10 * 0.2 + 1.5, drained
    assert_alive(orch, orch_pid)


# --- F14 ---------------------------------------------------------------------


def hello(**overrides: object) -> pb.RunnerMessage:
    fields: dict[str, object] = {
        "protocol_version": 1,
        "runner_name": "python",
        "language": "fake",
        "handlers": [],
        "max_in_flight": 1,
        "pid": os.getpid(),
        # The token the rows' configs accept from external runners (token_env).
        "process_token": EXTERNAL_TOKEN,
    }
    fields.update(overrides)
    return pb.RunnerMessage(hello=pb.RunnerHello(**fields))  # type: ignore[arg-type]


class FakeRunner:
    """One raw ``Connect`` stream driven message by message."""

    def __init__(self, addr: str) -> None:
        self.channel = grpc.aio.insecure_channel(
            addr,
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
            ],
        )
        connect: Any = pb_grpc.RunnerServiceStub(self.channel).Connect
        self.call: Any = connect()  # no request iterator: driven with write()/read()
        self._writing = asyncio.Lock()  # one write at a time on a grpc.aio stream

    async def send(self, message: pb.RunnerMessage) -> None:
        async with self._writing:
            await self.call.write(message)

    async def read(self, timeout: float = 10) -> pb.OrchestratorMessage:
        message: pb.OrchestratorMessage = await asyncio.wait_for(self.call.read(), timeout)
        assert message is not EOF, "the stream ended without a status"
        return message

    async def status(self, timeout: float = 10) -> grpc.StatusCode:
        """Reads until the stream ends; returns its status code."""
        try:
            while True:
                message = await asyncio.wait_for(self.call.read(), timeout)
                if message is EOF:
                    break
        except grpc.aio.AioRpcError as e:
            return e.code()
        code: grpc.StatusCode = await self.call.code()
        return code

    async def close(self) -> None:
        await self.channel.close(None)


async def rejected(addr: str, first: pb.RunnerMessage) -> grpc.StatusCode:
    runner = FakeRunner(addr)
    try:
        await runner.send(first)
        return await runner.status()
    finally:
        await runner.close()


async def test_f14_malformed_runner_messages(
    harness: Harness, producer: Producer, fault_client: RRQClient, monitor: TerminalMonitor
) -> None:
    orch = harness.orchestrator(harness.write_config(pool_size=1, max_in_flight=2), runners=1)
    assert orch.process is not None
    assert orch.log is not None
    orch_pid = orch.process.pid
    addr = runner_addr(orch)

    # (1)-(3): a bad first message ends the stream with a typed status.
    codes = {
        "not_hello": await rejected(addr, pb.RunnerMessage(heartbeat=pb.Heartbeat(in_flight=0))),
        "protocol_99": await rejected(addr, hello(protocol_version=99)),
        "unknown_runner": await rejected(addr, hello(runner_name="no-such-runner")),
    }
    print(f"F14 hello statuses {codes}")
    assert codes == {
        "not_hello": grpc.StatusCode.INVALID_ARGUMENT,
        "protocol_99": grpc.StatusCode.FAILED_PRECONDITION,
        "unknown_runner": grpc.StatusCode.UNAUTHENTICATED,
    }
    assert_alive(orch, orch_pid)

    # (4): a session that sends junk after a valid hello, while a real runner works.
    rss_before = vm_rss_kib(orch_pid)
    bad = FakeRunner(addr)
    await bad.send(hello(handlers=["work"], max_in_flight=2))
    ack = await bad.read()
    assert ack.WhichOneof("kind") == "hello_ack", ack
    jobs = []
    for i in range(20):
        job = f"f14-{i}"
        await producer.enqueue(job, {"params": {"sleep_ms": 100}, "max_retries": 3})
        jobs.append(job)

    answered: list[str] = []
    big = "e" * (1024 * 1024)

    async def answer() -> None:
        """Answers every execute: the first with a 1 MB error, the rest twice (a duplicate)."""
        while True:
            try:
                message = await bad.call.read()
            except grpc.aio.AioRpcError:
                return
            if message is EOF:
                return
            if message.WhichOneof("kind") != "execute":
                continue
            for r in message.execute.requests:
                if not answered:
                    outcome = pb.Outcome(
                        job_id=r.job_id,
                        attempt=r.attempt,
                        failure=pb.Failure(
                            kind=pb.FAILURE_KIND_HANDLER_ERROR, error_type="Huge", message=big
                        ),
                    )
                    batch = [outcome]
                else:
                    ok = pb.Outcome(
                        job_id=r.job_id,
                        attempt=r.attempt,
                        success=pb.Success(result_json='{"fake": true}'),
                    )
                    batch = [ok, ok]
                answered.append(r.job_id)
                for o in batch:
                    await bad.send(pb.RunnerMessage(outcomes=pb.OutcomeBatch(outcomes=[o])))

    answering = asyncio.create_task(answer())
    unknown = pb.Outcome(job_id="f14-no-such-job", attempt=1, success=pb.Success(result_json="1"))
    await bad.send(pb.RunnerMessage(outcomes=pb.OutcomeBatch(outcomes=[unknown])))
    burst = time.monotonic()
    for _ in range(10_000):
        await bad.send(pb.RunnerMessage(heartbeat=pb.Heartbeat(in_flight=0)))
    burst_s = time.monotonic() - burst
    record = await check("F14", fault_client, producer, harness.oracle, monitor)
    rss_after = vm_rss_kib(orch_pid)
    async with bad._writing:
        await bad.call.done_writing()
    await asyncio.wait_for(answering, 10)
    await bad.close()
    print(
        f"F14 fake answered {len(answered)} executes; 10k heartbeats in {burst_s:.2f}s; "
        f"RSS {rss_before} -> {rss_after} KiB"
    )
    assert answered, "the fake runner was never sent a job"
    assert_pass(record, dup_budget=0)
    for job in jobs:
        status = await fault_client.get_job_status(job)
        assert status is not None
        assert status.status == JobStatus.COMPLETED, status
    real = {e.job for e in harness.oracle.events() if e.kind == "end"}
    assert real, "the real runner completed nothing"
    assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)
    assert_alive(orch, orch_pid)

    # (5): a frame over the decode limit closes only that stream, with a typed status.
    huge = FakeRunner(addr)
    try:
        await huge.send(hello())
        assert (await huge.read()).WhichOneof("kind") == "hello_ack"
        giant = pb.Outcome(
            job_id="f14-giant",
            attempt=1,
            failure=pb.Failure(message="g" * (65 * 1024 * 1024)),
        )
        await huge.send(pb.RunnerMessage(outcomes=pb.OutcomeBatch(outcomes=[giant])))
        code = await huge.status()
    finally:
        await huge.close()
    print(f"F14 oversize frame status {code}")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
    assert_alive(orch, orch_pid)
    await producer.enqueue("f14-after", {"params": {"sleep_ms": 10}})
    await wait_terminal(fault_client, "f14-after", 10)
    after = await fault_client.get_job_status("f14-after")
    assert after is not None
    assert after.status == JobStatus.COMPLETED, after
