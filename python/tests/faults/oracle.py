"""The oracle of the fault rows: logs outside Redis, and the checker.

- The producer appends ``<job_id> ack_ok|ack_err|ack_unknown <t>`` lines to its
  own file (:class:`Producer`).
- The handler (``oracle_handlers``) appends ``start``/``end`` lines
  (:class:`HandlerLog` reads them and lets a test wait on them).
- :class:`TerminalMonitor` counts terminal transitions from the ``done``
  channel that every terminal transition publishes on.
- :func:`check` reads all of it plus RRQ's own API once the system is quiet
  and returns the checker's one-line JSON record (docs/guarantees.md, "How it is proved").
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from rrq.client import RRQClient
from rrq.exceptions import DuplicateJobError
from rrq.job import JobStatus

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
_POLL = 0.02


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()


class Producer:
    """Enqueues through a real client and logs what it saw, one line per call."""

    def __init__(self, client: RRQClient, log: Path) -> None:
        self.client = client
        self.log = log

    async def enqueue(self, job_id: str, options: Mapping[str, Any], fn: str = "work") -> str:
        """Logs ``ack_ok``, ``ack_dup`` (the id exists), ``ack_err`` or ``ack_unknown``."""
        try:
            await self.client.enqueue(fn, {**options, "job_id": job_id})
        except DuplicateJobError:
            verdict = "ack_dup"
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            verdict = "ack_unknown"
        except Exception:
            verdict = "ack_err"
        else:
            verdict = "ack_ok"
        _append(self.log, f"{job_id} {verdict} {time.time():.6f}")
        return verdict

    async def enqueue_retrying(
        self, job_id: str, options: Mapping[str, Any], fn: str = "work", attempts: int = 5
    ) -> str:
        """Retries a connection error with the same ``job_id`` until the answer is known.

        ``ack_dup`` after an ``ack_unknown`` means the first attempt committed:
        the checker counts the job as ``recovered``.
        """
        verdict = "ack_unknown"
        for _ in range(attempts):
            verdict = await self.enqueue(job_id, options, fn)
            if verdict != "ack_unknown":
                break
        return verdict

    def acks(self) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = defaultdict(list)
        if self.log.exists():
            for line in self.log.read_text(encoding="utf-8").splitlines():
                job, verdict, _ = line.split()
                seen[job].append(verdict)
        return seen


@dataclass
class Event:
    kind: str
    job: str
    attempt: int
    pid: int
    t: float
    how: str = ""


class HandlerLog:
    """Reads the handler's oracle log; waits on it with bounded condition polls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def events(self) -> list[Event]:
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) < 5:
                continue  # a line being written
            how = parts[5] if len(parts) > 5 else ""
            out.append(
                Event(parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4]), how)
            )
        return out

    def running(self, at: float | None = None) -> dict[tuple[str, int], Event]:
        """Attempts started (by ``at``) and not ended (by ``at``): key (job, attempt)."""
        live: dict[tuple[str, int], Event] = {}
        for e in self.events():
            if at is not None and e.t > at:
                continue
            key = (e.job, e.attempt)
            if e.kind == "start":
                live[key] = e
            else:
                live.pop(key, None)
        return live

    def in_flight_on(self, pids: Iterable[int], at: float) -> set[tuple[str, int]]:
        """Attempts the failed component held at ``at``: started on ``pids`` and not ended by then.

        Includes attempts its runners logged after ``at``: those were claimed and
        dispatched before the fault, so they are in flight on it too.
        """
        wanted = set(pids)
        ended = {(e.job, e.attempt) for e in self.events() if e.kind == "end" and e.t <= at}
        return {
            (e.job, e.attempt)
            for e in self.events()
            if e.kind == "start" and e.pid in wanted and (e.job, e.attempt) not in ended
        }

    def wait(self, condition: Callable[[list[Event]], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.events()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout}s")
            time.sleep(_POLL)  # a bounded poll of a file that has no event

    def wait_running(
        self, count: int, pids: Iterable[int] | None = None, timeout: float = 20
    ) -> None:
        wanted = None if pids is None else set(pids)

        def enough(_: list[Event]) -> bool:
            live = self.running()
            return sum(1 for e in live.values() if wanted is None or e.pid in wanted) >= count

        self.wait(enough, f"{count} running attempts", timeout)


class TerminalMonitor:
    """Counts publications on ``rrq:{q}:done:<id>`` (one per terminal transition)."""

    def __init__(self, dsn: str) -> None:
        self.counts: Counter[str] = Counter()
        self._redis = redis.Redis.from_url(dsn)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe(**{"rrq:*:done:*": self._on})
        self._thread = self._pubsub.run_in_thread(
            sleep_time=0.05, daemon=True, exception_handler=self._on_error
        )

    @staticmethod
    def _on_error(exc: BaseException, pubsub: Any, thread: Any) -> None:
        # Redis restarts in F6-F8: keep the thread; the next read reconnects
        # and resubscribes. Nothing is published while Redis is down.
        if not isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise exc
        time.sleep(0.05)

    def _on(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        job = channel.split(":done:", 1)[1]
        self.counts[job] += 1

    def stop(self) -> None:
        self._thread.stop()
        self._thread.join(5)
        self._pubsub.close()
        self._redis.close()


@dataclass
class Fault:
    """When a fault ended and which attempts it hit (its budget K)."""

    end: float
    budget: int
    affected: set[tuple[str, int]] = field(default_factory=set)


async def wait_quiet(client: RRQClient, job_ids: Iterable[str], timeout: float) -> None:
    """Waits until every job that exists is terminal (bounded)."""
    pending = set(job_ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for job in list(pending):
            status = await client.get_job_status(job)
            if status is None or status.status in TERMINAL:
                pending.discard(job)
        if pending:
            await asyncio.sleep(0.1)


async def check(
    row: str,
    client: RRQClient,
    producer: Producer,
    handler: HandlerLog,
    monitor: TerminalMonitor | None,
    *,
    faults: list[Fault] | None = None,
    dead_pids: Mapping[int, float] | None = None,
    quiet_timeout: float = 30.0,
    extra_jobs: Iterable[str] = (),
) -> dict[str, Any]:
    """Waits for quiet, computes the checker record, prints it as one JSON line."""
    faults = faults or []
    dead = dict(dead_pids or {})
    acks = producer.acks()
    events = handler.events()
    started_ids = {e.job for e in events}
    known = set(acks) | started_ids | set(extra_jobs)
    await wait_quiet(client, known, quiet_timeout)
    await asyncio.sleep(0.3)  # let the last done publications reach the monitor
    events = handler.events()

    acked = {j for j, v in acks.items() if "ack_ok" in v}
    # Enqueues whose answer was lost: no ack, or a retry's "exists" after an ack_unknown.
    unknown = {
        j for j, v in acks.items() if j not in acked and ("ack_unknown" in v or "ack_dup" not in v)
    }
    statuses = {}
    for job in known:
        statuses[job] = await client.get_job_status(job)

    recovered = {j for j in unknown if statuses.get(j) is not None}
    lost = sorted(
        j
        for j in acked | recovered
        if statuses[j] is None or statuses[j].status not in TERMINAL  # type: ignore[union-attr]
    )
    stuck = sorted(j for j, s in statuses.items() if s is not None and s.status not in TERMINAL)
    double_terminal = sorted(j for j, n in (monitor.counts if monitor else {}).items() if n > 1)

    by_job: dict[str, dict[int, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        by_job[e.job][e.attempt].append(e)
    dup_exec = 0
    concurrent = 0
    for attempts in by_job.values():
        designed = sum(1 for evs in attempts.values() for e in evs if e.how == "fail")
        starts = sum(1 for evs in attempts.values() for e in evs if e.kind == "start")
        dup_exec += max(0, starts - 1 - designed)
        spans = []
        for evs in attempts.values():
            start = min((e.t for e in evs if e.kind == "start"), default=None)
            if start is None:
                continue
            ends = [e.t for e in evs if e.kind == "end"]
            pid = next(e.pid for e in evs if e.kind == "start")
            end = min(ends) if ends else dead.get(pid, math.inf)
            spans.append((start, end))
        spans.sort()
        concurrent += sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])

    recovery: dict[str, float | None] = {"first_completion": None, "drained": None}
    if faults:
        fault_end = max(f.end for f in faults)
        after = [e.t for e in events if e.kind == "end" and e.t >= fault_end]
        if after:
            recovery = {
                "first_completion": round(min(after) - fault_end, 3),
                "drained": round(max(after) - fault_end, 3),
            }
    record = {
        "row": row,
        "acked": len(acked),
        "lost": len(lost),
        "double_terminal": len(double_terminal),
        "dup_exec": dup_exec,
        "concurrent_dup": concurrent,
        "recovered": len(recovered),
        "unexpected": len(started_ids - set(acks) - set(extra_jobs)),
        "recovery_s": recovery,
        "stuck": len(stuck),
        "budget": sum(f.budget for f in faults),
        "detail": {"lost": lost[:10], "double_terminal": double_terminal[:10], "stuck": stuck[:10]},
    }
    if lost:
        # What a rare loss looked like, so a failed CI run can be diagnosed afterwards.
        record["lost_trace"] = {
            job: {
                "acks": [
                    line
                    for line in producer.log.read_text(encoding="utf-8").splitlines()
                    if line.split()[0] == job
                ],
                "status": None if statuses[job] is None else str(statuses[job].status),  # type: ignore[union-attr]
                "events": [
                    (e.kind, e.attempt, e.pid, round(e.t, 3), e.how) for e in events if e.job == job
                ],
                "faults_at": [round(f.end, 3) for f in faults],
            }
            for job in lost[:5]
        }
    print("CHECKER " + json.dumps(record, sort_keys=True))
    return record


def assert_pass(record: Mapping[str, Any], *, dup_budget: int, concurrent_budget: int = 0) -> None:
    """The pass rule: nothing lost, stuck or finalized twice; duplicates within budget."""
    assert record["lost"] == 0, record
    assert record["double_terminal"] == 0, record
    assert record["stuck"] == 0, record
    assert record["unexpected"] == 0, record
    assert record["dup_exec"] <= dup_budget, record
    assert record["concurrent_dup"] <= concurrent_budget, record
