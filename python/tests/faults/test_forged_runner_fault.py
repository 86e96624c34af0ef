"""F32: a forged runner on the runner port (issue 13, item 6).

While jobs run and wait, a local process (as our uid, then as uid 65534 when
``setpriv`` can switch to it) dials the ``python`` runner port and sends hellos
it has no right to: no token, a wrong one, a near miss of the external token,
another runner's spawn token, another runner's external token, and a live
python process's own spawn token (copied from /proc while that process is
connected). Each also pipelines a forged success for a running job.

Pass: every one ends with UNAUTHENTICATED before any hello_ack or execute;
the oracle shows every attempt ran in a spawned python runner (none lost,
none unexpected, no duplicate) and no job's result is the forged one; the
refusal log lines never contain a presented token. A stream holding runner
``other``'s real external token is admitted as ``other`` only, and gets none
of ``python``'s jobs (the token's scope).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import EXTERNAL_TOKEN, SRC_DIR, TESTS_DIR, python_env
from rrq.client import RRQClient
from rrq.v1 import runner_pb2 as pb

from .conftest import ORACLE_SETTINGS, Harness, config_text
from .forged_runner import FORGED_RESULT
from .oracle import Producer, TerminalMonitor, assert_pass, check
from .test_runner_faults import EOF, FakeRunner, hello, runner_addr

OTHER_TOKEN_ENV = "RRQ_F32_OTHER_TOKEN"  # noqa: S105 - a variable name
OTHER_TOKEN = "f32-other-runner-external-token-0123456789"  # noqa: S105 - a test secret
JOBS = 30


def other_runner_table() -> str:
    cmd = [sys.executable, "-m", "rrq.runner_cli", "--settings", ORACLE_SETTINGS]
    return f"""
[rrq.runners.other]
type = "socket"
cmd = [{", ".join(f'"{part}"' for part in cmd)}]
pool_size = 1
max_in_flight = 2
cwd = "{TESTS_DIR}"
token_env = "{OTHER_TOKEN_ENV}"

[rrq.runners.other.env]
PYTHONPATH = "{os.pathsep.join([str(SRC_DIR), str(TESTS_DIR)])}"
"""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def can_switch_to_nobody() -> bool:
    """True when we may run the forged runner as uid 65534: root, ``setpriv``,
    and a checkout that uid can read (a clone under a 0700 directory, such as
    ``mktemp -d`` makes, is not: the module would not import as that uid)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import faults.forged_runner"],
        cwd=TESTS_DIR,
        env=python_env(),
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def knock(addr: str, cases: list[dict[str, str]], *, as_nobody: bool) -> dict[str, Any]:
    """Runs forged_runner in its own process (as uid 65534 if asked)."""
    prefix = NOBODY if as_nobody else []
    env = python_env()
    # The forged process knows nothing the tests' runners know.
    for name in list(env):
        if name.startswith("RRQ_"):
            del env[name]
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "faults.forged_runner", addr, json.dumps(cases)],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.quick
async def test_f32_forged_runner(
    harness: Harness,
    producer: Producer,
    fault_client: RRQClient,
    monitor: TerminalMonitor,
    tmp_path: Path,
) -> None:
    config = harness.dir / "rrq-f32.toml"
    config.write_text(
        config_text(harness.redis.dsn, pool_size=2, max_in_flight=4) + other_runner_table(),
        encoding="utf-8",
    )
    orch = harness.orchestrator(config, start=False)
    orch.env[OTHER_TOKEN_ENV] = OTHER_TOKEN
    orch.start()
    orch.wait_for_runners(3)
    assert orch.log is not None
    addr = runner_addr(orch)

    spawned = {pid: environ(pid) for pid in harness.runner_pids(orch)}
    python_pids = {p for p, e in spawned.items() if e.get("RRQ_RUNNER_NAME") == "python"}
    [other_pid] = [p for p, e in spawned.items() if e.get("RRQ_RUNNER_NAME") == "other"]
    assert len(python_pids) == 2, spawned.keys()
    python_token = spawned[min(python_pids)]["RRQ_RUNNER_TOKEN"]
    other_spawn_token = spawned[other_pid]["RRQ_RUNNER_TOKEN"]
    for env in spawned.values():
        # Runners never see the external tokens of the orchestrator.
        assert EXTERNAL_TOKEN not in env.values()
        assert OTHER_TOKEN not in env.values()
        assert env.get("RRQ_RUNNER_SPAWNED") == "1"

    # 8 jobs run (2 runners x 4 slots) and hold; 22 wait for a slot.
    release = tmp_path / "release"
    jobs = []
    for i in range(JOBS):
        job = f"f32-{i}"
        await producer.enqueue(job, {"params": {"hold_until_file": str(release)}})
        jobs.append(job)
    await asyncio.to_thread(harness.oracle.wait_running, 8, python_pids, 30)
    running = sorted({job for job, _ in harness.oracle.running()})

    near_miss = EXTERNAL_TOKEN[:-1] + ("x" if EXTERNAL_TOKEN[-1] != "x" else "y")
    cases = [
        {"name": "no_token", "runner": "python", "token": ""},
        {"name": "wrong_token", "runner": "python", "token": "made-up-token-0123456789abcdef"},
        {"name": "near_miss", "runner": "python", "token": near_miss},
        {"name": "other_runner_spawn_token", "runner": "python", "token": other_spawn_token},
        {"name": "other_runner_external_token", "runner": "python", "token": OTHER_TOKEN},
        {"name": "live_process_token_reused", "runner": "python", "token": python_token},
    ]
    for case in cases:
        case["job"] = running[0]
    runs = {"local": knock(addr, cases, as_nobody=False)}
    if can_switch_to_nobody():
        runs["uid_65534"] = knock(addr, cases, as_nobody=True)
        assert runs["uid_65534"]["uid"]["code"] == "65534"
    else:
        print(
            "F32: uid 65534 cannot be used here (not root, no setpriv, or an unreadable checkout)"
        )
    print(f"F32 forged hellos {json.dumps(runs, sort_keys=True)}")
    for who, results in runs.items():
        for case in cases:
            got = results[case["name"]]
            assert (got["acks"], got["executes"]) == (0, 0), (who, case, got)
            # The client may see INTERNAL ("Internal error from Core") instead:
            # grpc-core's view when the refusal races the pipelined outcome
            # still being written. The orchestrator's log below is the truth.
            assert got["code"] in {"UNAUTHENTICATED", "INTERNAL"}, (who, case, got)
        assert "UNAUTHENTICATED" in {r["code"] for r in results.values()}, results
    refusals = len(cases) * len(runs)
    orch.log.wait_for("runner refused", refusals)

    # Out of scope: other's real external token admits a stream as `other`
    # only; it registers python's handler and still gets none of its jobs.
    scoped = FakeRunner(addr)
    await scoped.send(hello(runner_name="other", process_token=OTHER_TOKEN, handlers=["work"]))
    ack = await scoped.read()
    assert ack.WhichOneof("kind") == "hello_ack", ack
    scoped_executes: list[pb.ExecutionRequest] = []

    async def collect() -> None:
        while True:
            try:
                message = await scoped.call.read()
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                return  # closed by us at the end (grpc reports it as a cancel)
            if message is EOF:
                return
            scoped_executes.extend(message.execute.requests)

    reader = asyncio.create_task(collect())

    release.touch()
    record = await check("F32", fault_client, producer, harness.oracle, monitor, quiet_timeout=60)
    await scoped.close()
    await reader
    assert scoped_executes == [], [r.job_id for r in scoped_executes]
    assert_pass(record, dup_budget=0)
    started = {e.pid for e in harness.oracle.events() if e.kind == "start"}
    assert started <= python_pids, (started, python_pids)
    for job in jobs:
        status = await fault_client.get_job_status(job)
        assert status is not None, job
        assert isinstance(status.result, dict), (job, status)
        assert status.result.get("job") == job, (job, status)
        assert status.result != json.loads(FORGED_RESULT)

    log = orch.log.text()
    for case in cases:
        if case["token"]:
            assert case["token"] not in log, f"{case['name']}: a log line shows the token"
    assert log.count("runner refused") == refusals, log
