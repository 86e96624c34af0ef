"""F29's reference model: what each Lua script of one queue must do, in plain Python.

The model is written from docs/redis-schema.md and the header of each script in
``rust/rrq-store/lua/`` (KEYS, ARGV, reply, guarantee), not from their bodies'
control flow. It holds the whole expected content of the Redis database of one
queue: job records, the ``due``/``active``/``dlq`` sorted sets, the rule keys
and ``rrq:queues``, each key with its expiry time. Time is an integer number of
milliseconds that only the test moves (Redis runs under a frozen libfaketime
clock), so every expiry and every score is exact.

Each operation mutates the model and returns the reply the script must give,
normalized the way :func:`normalize` normalizes a real reply. :meth:`LuaModel.snapshot`
renders the expected database in the shape of the test's real SCAN snapshot.

Redis expiry rule used throughout: a key whose expiry time is ``t`` still
exists at ``now == t`` and is gone once ``now > t``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from rrq._limits import MAX_DURATION_MS, MAX_RETRIES
from rrq.store import (
    DEFAULT_KEYS,
    QUEUES_KEY,
    active_key,
    debounce_key,
    dlq_key,
    due_key,
    job_key,
    job_key_prefix,
    rate_limit_key,
    unique_key,
)

PENDING: Final = 1
ACTIVE: Final = 2
RETRYING: Final = 3
COMPLETED: Final = 4
FAILED: Final = 5
CANCELLED: Final = 6
WAITING: Final = frozenset({PENDING, RETRYING})
TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})
MAX_ERRORS: Final = 100
SETTLE_ACTIONS: Final = frozenset({"complete", "retry", "fail", "cancel", "release"})

# Script bugs F29 found that are not fixed yet, by id. The property runs
# tolerate them (the model does what the script does today, so the runs keep
# hunting for new bugs) and f29_regressions.json replays each strictly as an
# xfail(strict=True) case. Remove an id once its script is fixed.
#
# None open. Fixed on 2026-11-28 (their cases now replay as plain regressions):
# debounce-foreign-job (a debounce call took over a job its window had not
# opened) and debounce-pointer-ttl (the pointer expired while its job waited).
KNOWN_BUGS: Final[frozenset[str]] = frozenset()

# The typed errors rrq.store raises for the scripts' error codes, by class name.
PAYLOAD_TOO_LARGE: Final = "PayloadTooLargeError"
INVALID_PARAMS: Final = "InvalidParamsError"
INVALID_ARGUMENT: Final = "InvalidArgumentError"

# A key in a snapshot: (redis type, PTTL (-1 = no expiry), value).
# Values: hash -> dict[str, Any] (errors_json decoded), zset -> dict[str, int],
# string -> str, set -> tuple of sorted members.
Entry = tuple[str, int, Any]
Snapshot = dict[str, Entry]


class ScriptError(Exception):
    """The script must answer with an error reply (nothing written)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def normalize(value: Any) -> Any:
    """bytes -> str, lists/tuples -> lists, recursively (the shape replies are compared in)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    return value


@dataclass
class Job:
    """One job record (``rrq:{q}:job:<id>``)."""

    id: str
    function_name: str
    queue_name: str
    params_json: str
    status: int
    attempt: int
    max_retries: int
    enqueued_at_ms: int
    run_at_ms: int | None  # None: not stored, the job was due when enqueued
    job_timeout_ms: int = 0
    result_ttl_ms: int = 0
    trace_parent: str = ""
    trace_state: str = ""
    rule: str = ""
    rule_key: str = ""
    lease_owner: str | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    cancel_requested: bool = False
    last_error: str | None = None
    last_error_type: str | None = None
    errors: list[dict[str, Any]] | None = None
    result_json: str | None = None
    expire_at: int | None = None  # absolute ms; None = no TTL

    def fields(self) -> dict[str, Any]:
        """The hash as Redis must hold it (errors_json as its decoded list)."""
        out: dict[str, Any] = {  # id and queue are in the key, not in the hash
            "function_name": self.function_name,
            "params_json": self.params_json,
            "status": str(self.status),
            "max_retries": str(self.max_retries),
            "enqueued_at_ms": str(self.enqueued_at_ms),
        }
        optional: dict[str, Any] = {  # left out at their defaults
            "attempt": str(self.attempt) if self.attempt > 0 else None,
            "run_at_ms": _opt(self.run_at_ms),
            "job_timeout_ms": str(self.job_timeout_ms) if self.job_timeout_ms > 0 else None,
            "result_ttl_ms": str(self.result_ttl_ms) if self.result_ttl_ms > 0 else None,
            "trace_parent": self.trace_parent or None,
            "trace_state": self.trace_state or None,
            "lease_owner": self.lease_owner,
            "started_at_ms": _opt(self.started_at_ms),
            "finished_at_ms": _opt(self.finished_at_ms),
            "cancel_requested": "1" if self.cancel_requested else None,
            "last_error": self.last_error,
            "last_error_type": self.last_error_type,
            "errors_json": self.errors,
            "result_json": self.result_json,
        }
        if self.rule:
            optional[f"{self.rule}_key"] = self.rule_key
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


def _opt(value: int | None) -> str | None:
    return None if value is None else str(value)


@dataclass
class RuleKey:
    """A unique / rate-limit string key, or a debounce pointer hash."""

    job_id: str
    expire_at: int
    first_at_ms: int = 0  # debounce only


@dataclass
class EnqueueCall:
    """The arguments of one ``enqueue.lua`` call (rrq.store.EnqueueArgs, minus the queue)."""

    job_id: str
    function_name: str = "work"
    params_json: str = "{}"
    max_retries: int = 0
    job_timeout_ms: int = 0
    result_ttl_ms: int = 0
    defer_ms: int = 0
    run_at_ms: int = 0
    max_params_bytes: int = 64
    trace_parent: str = ""
    trace_state: str = ""
    rule: str = ""
    rule_key: str = ""
    rule_window_ms: int = 0
    debounce_max_wait_ms: int = 0
    # The producer chose the id: the registry is passed (KEYS[3] or KEYS[5]),
    # and ``holder`` is the record key a {6} reply named, passed back.
    registered_id: bool = False
    holder: str | None = None


_JSON_OBJECT_START = re.compile(r"^[ \t\n\v\f\r]*\{")  # Lua's '^%s*{'


@dataclass
class LuaModel:
    """The expected database of one queue."""

    queue: str
    now: int
    jobs: dict[str, Job] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    dlq: dict[str, int] = field(default_factory=dict)
    unique: dict[str, RuleKey] = field(default_factory=dict)
    rate_limit: dict[str, RuleKey] = field(default_factory=dict)
    debounce: dict[str, RuleKey] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)
    # The id registry (rrq:ids): job id -> record key.
    ids: dict[str, str] = field(default_factory=dict)
    # Records of another queue planted by the test (key -> status), so that
    # the registry can name a record this queue does not hold.
    foreign: dict[str, int] = field(default_factory=dict)
    tolerate: frozenset[str] = frozenset()  # ids of KNOWN_BUGS to mimic

    # ------------------------------------------------------------------ time

    def advance(self, ms: int) -> None:
        """Moves the clock forward; records and rule keys past their expiry vanish."""
        assert ms > 0
        self.now += ms
        for table in (self.jobs, self.unique, self.rate_limit, self.debounce):
            for key in [k for k, v in table.items() if not self._alive(v.expire_at)]:
                del table[key]

    def _alive(self, expire_at: int | None) -> bool:
        return expire_at is None or self.now <= expire_at

    def job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def _finish(self, job: Job, status: int, ttl_ms: int) -> None:
        """A terminal transition: status, finished_at_ms, and the record's TTL."""
        job.status = status
        job.finished_at_ms = self.now
        job.expire_at = self.now + ttl_ms

    def _record_error(self, job: Job, message: str, error_type: str, traceback: str) -> None:
        history = list(job.errors or [])
        history.append(
            {
                "attempt": job.attempt,
                "error_type": error_type,
                "message": message,
                "traceback": traceback,
                "at_ms": self.now,
            }
        )
        job.errors = history[-MAX_ERRORS:]
        job.last_error = message
        job.last_error_type = error_type

    @staticmethod
    def _ordered(zset: Mapping[str, int], upto: int | None, limit: int) -> list[str]:
        """ZRANGEBYSCORE -inf upto LIMIT 0 limit (or ZRANGE 0 limit-1 when upto is None)."""
        items = sorted(zset.items(), key=lambda kv: (kv[1], kv[0].encode()))
        ids = [k for k, score in items if upto is None or score <= upto]
        return ids[: max(limit, 0)]

    # ---------------------------------------------------------------- enqueue

    def enqueue(self, call: EnqueueCall) -> list[Any]:
        """enqueue.lua, preceded by ``SADD rrq:queues`` (the producer's registration)."""
        self.queues.add(self.queue)  # the SADD runs before the script, whatever it answers
        self._validate_enqueue(call)
        if call.run_at_ms > self.now + MAX_DURATION_MS:  # checked against Redis TIME
            raise ScriptError(INVALID_ARGUMENT)
        existing = self.jobs.get(call.job_id)
        if existing is not None:
            return [0, call.job_id, existing.status]
        record_key = job_key(self.queue, call.job_id)
        if call.registered_id:
            registered = self.ids.get(call.job_id)
            if registered is not None and registered != record_key:
                if call.holder != registered:
                    return [6, registered, 0]
                status = self.foreign.get(registered)
                if status is not None:
                    return [5, call.job_id, status]
        run_at = max(self.now + call.defer_ms, call.run_at_ms)
        if call.rule == "unique":
            held = self.unique.get(call.rule_key)
            if held is not None:
                holder = self.jobs.get(held.job_id)
                return [2, held.job_id, holder.status if holder else 0]
        elif call.rule == "rate_limit":
            if call.rule_key in self.rate_limit:
                return [3, "", 0]
        elif call.rule == "debounce":
            pointer = self.debounce.get(call.rule_key)
            if pointer is not None:
                waiting = self.jobs.get(pointer.job_id)
                own = waiting is not None and (waiting.rule, waiting.rule_key) == (
                    "debounce",
                    call.rule_key,
                )
                if (
                    waiting is not None
                    and waiting.status == PENDING
                    and waiting.attempt == 0
                    and own
                ):
                    when = self.now + call.rule_window_ms
                    if call.debounce_max_wait_ms > 0:
                        when = min(when, pointer.first_at_ms + call.debounce_max_wait_ms)
                    when = max(when, run_at)
                    waiting.params_json = call.params_json
                    waiting.run_at_ms = when
                    self.due[waiting.id] = when
                    # The window moved: its pointer must outlive it again.
                    pointer.expire_at = when + call.debounce_max_wait_ms + 3_600_000
                    return [4, waiting.id, when]
            first_run = self.now + call.rule_window_ms
            if call.debounce_max_wait_ms > 0:
                first_run = min(first_run, self.now + call.debounce_max_wait_ms)
            run_at = max(first_run, run_at)
        self.jobs[call.job_id] = Job(
            id=call.job_id,
            function_name=call.function_name,
            queue_name=self.queue,
            params_json=call.params_json,
            status=PENDING,
            attempt=0,
            max_retries=call.max_retries,
            enqueued_at_ms=self.now,
            run_at_ms=run_at if run_at != self.now else None,
            job_timeout_ms=call.job_timeout_ms,
            result_ttl_ms=call.result_ttl_ms,
            trace_parent=call.trace_parent,
            trace_state=call.trace_state,
            rule=call.rule,
            rule_key=call.rule_key if call.rule else "",
        )
        self.due[call.job_id] = run_at
        if call.registered_id:
            self.ids[call.job_id] = record_key
        if call.rule == "unique":
            self.unique[call.rule_key] = RuleKey(call.job_id, self.now + call.rule_window_ms)
        elif call.rule == "rate_limit":
            self.rate_limit[call.rule_key] = RuleKey(call.job_id, self.now + call.rule_window_ms)
        elif call.rule == "debounce":
            # PEXPIRE (run_at - now) + max_wait + 1 h: the pointer outlives its window.
            self.debounce[call.rule_key] = RuleKey(
                call.job_id, run_at + call.debounce_max_wait_ms + 3_600_000, first_at_ms=self.now
            )
        return [1, call.job_id, run_at]

    def enqueue_many(self, first: EnqueueCall, more: list[tuple[str, str]]) -> list[Any]:
        """enqueue.lua with more jobs: ``first``'s options shared by (id, params) pairs.

        Every job's params and id are checked before the shared options; then
        each job is enqueued in turn at the same time. Answers ``{run_at, s...}``
        with s 0 for a written job, else the existing job's status.
        """
        self.queues.add(self.queue)
        calls = [first] + [replace(first, job_id=i, params_json=p) for i, p in more]
        for call in calls:
            self._validate_job(call)
        self._validate_enqueue(first)
        if first.run_at_ms > self.now + MAX_DURATION_MS:
            raise ScriptError(INVALID_ARGUMENT)
        if first.rule:
            raise ScriptError(INVALID_ARGUMENT)
        statuses = [0 if r[0] == 1 else r[2] for r in map(self.enqueue, calls)]
        return [max(self.now + first.defer_ms, first.run_at_ms), *statuses]

    @staticmethod
    def _validate_job(call: EnqueueCall) -> None:
        """The script's checks of one job's params and id, in its order."""
        if len(call.params_json.encode()) > call.max_params_bytes:
            raise ScriptError(PAYLOAD_TOO_LARGE)
        if not _JSON_OBJECT_START.match(call.params_json):
            raise ScriptError(INVALID_PARAMS)
        try:
            json.loads(call.params_json)
        except ValueError:
            raise ScriptError(INVALID_PARAMS) from None
        if call.job_id == "":
            raise ScriptError(INVALID_ARGUMENT)

    @classmethod
    def _validate_enqueue(cls, call: EnqueueCall) -> None:
        """The script's checks, in its order: every one before the first write."""
        cls._validate_job(call)
        if call.function_name == "":
            raise ScriptError(INVALID_ARGUMENT)
        numbers = (
            call.max_retries,
            call.job_timeout_ms,
            call.result_ttl_ms,
            call.defer_ms,
            call.run_at_ms,
        )
        if any(n < 0 for n in numbers):
            raise ScriptError(INVALID_ARGUMENT)
        if call.max_retries > MAX_RETRIES or max(numbers[1:4]) > MAX_DURATION_MS:
            raise ScriptError(INVALID_ARGUMENT)
        if call.rule:
            if call.rule not in ("unique", "rate_limit", "debounce") or call.rule_key == "":
                raise ScriptError(INVALID_ARGUMENT)
            if call.rule_window_ms <= 0 or call.debounce_max_wait_ms < 0:
                raise ScriptError(INVALID_ARGUMENT)
            if max(call.rule_window_ms, call.debounce_max_wait_ms) > MAX_DURATION_MS:
                raise ScriptError(INVALID_ARGUMENT)

    # ------------------------------------------------------------------ claim

    def claim(self, owner: str, lease_ms: int, max_jobs: int) -> list[Any]:
        """claim.lua: up to max_jobs due jobs become ACTIVE under (attempt + 1, owner)."""
        reply: list[Any] = [self.now, -1]
        for job_id in self._ordered(self.due, self.now, max_jobs):
            del self.due[job_id]
            job = self.jobs.get(job_id)
            if job is None or job.status not in WAITING:
                continue  # a stale due entry is dropped, never returned
            job.attempt += 1
            job.status = ACTIVE
            job.lease_owner = owner
            job.started_at_ms = self.now
            self.active[job_id] = self.now + lease_ms
            if job.rule == "debounce":
                pointer = self.debounce.get(job.rule_key)
                if pointer is not None and pointer.job_id == job_id:
                    del self.debounce[job.rule_key]  # the window closes when its job starts
            reply.append(
                [
                    job.id,
                    job.attempt,
                    job.function_name,
                    job.params_json,
                    str(job.max_retries),
                    str(job.job_timeout_ms) if job.job_timeout_ms > 0 else "0",
                    str(job.enqueued_at_ms),
                    job.trace_parent,
                    job.trace_state,
                    str(job.enqueued_at_ms if job.run_at_ms is None else job.run_at_ms),
                ]
            )
        if self.due:
            reply[1] = max(0, min(self.due.values()) - self.now)
        return reply

    # ------------------------------------------------------------------ lease

    def holds(self, job_id: str, attempt: int, owner: str) -> bool:
        """The fence: the job is ACTIVE under exactly this attempt and owner."""
        job = self.jobs.get(job_id)
        return (
            job is not None
            and job.status == ACTIVE
            and job.attempt == attempt
            and job.lease_owner == owner
        )

    def renew_lease(self, owner: str, lease_ms: int, pairs: Iterable[tuple[str, int]]) -> list[Any]:
        """renew_lease.lua: extends the leases still held; reports the lost ones."""
        lost: list[str] = []
        cancel: list[str] = []
        for job_id, attempt in pairs:
            if self.holds(job_id, attempt, owner):
                if job_id in self.active:  # ZADD XX
                    self.active[job_id] = self.now + lease_ms
                if self.jobs[job_id].cancel_requested:
                    cancel.append(job_id)
            else:
                lost.append(job_id)
        return [lost, cancel]

    # ----------------------------------------------------------------- settle

    def settle_batch(
        self, settles: list[dict[str, Any]], default_result_ttl_ms: int, dlq_retention_ms: int
    ) -> list[list[Any]]:
        """settle.lua's batch: every action checked first, then each settle in order.

        Each item holds :meth:`settle`'s arguments by name, without the two defaults.
        """
        if any(s["action"] not in SETTLE_ACTIONS for s in settles):
            raise ScriptError(INVALID_ARGUMENT)
        return [
            self.settle(
                **s, default_result_ttl_ms=default_result_ttl_ms, dlq_retention_ms=dlq_retention_ms
            )
            for s in settles
        ]

    def settle(
        self,
        job_id: str,
        attempt: int,
        owner: str,
        action: str,
        payload: str,
        error_type: str,
        traceback: str,
        retry_delay_ms: int,
        default_result_ttl_ms: int,
        dlq_retention_ms: int,
    ) -> list[Any]:
        """settle.lua: apply an attempt's outcome, fenced by (attempt, owner)."""
        if action not in SETTLE_ACTIONS:
            raise ScriptError(INVALID_ARGUMENT)
        job = self.jobs.get(job_id)
        if not self.holds(job_id, attempt, owner):
            return [0, job.status if job else 0, job.attempt if job else 0]
        assert job is not None
        result_ttl = job.result_ttl_ms or default_result_ttl_ms
        self.active.pop(job_id, None)
        # lease_owner stays, naming the owner of the last attempt: the fence also
        # checks the status, and the next claim overwrites it.
        if action == "complete":
            job.result_json = payload
            self._finish(job, COMPLETED, result_ttl)
            return [1, COMPLETED, 0]
        if action in ("retry", "fail"):
            self._record_error(job, payload, error_type, traceback)
            if job.cancel_requested:
                self._finish(job, CANCELLED, result_ttl)
                return [1, CANCELLED, 0]
            if action == "fail" or job.attempt > job.max_retries:
                self.dlq[job_id] = self.now
                self._finish(job, FAILED, dlq_retention_ms)
                return [1, FAILED, 0]
            # A runner's delay is that job's data: clamped, never a batch error.
            delay = min(max(retry_delay_ms, 0), MAX_DURATION_MS)
            return self._wait_again(job, RETRYING, self.now + delay)
        if action == "cancel":
            job.last_error = payload
            job.last_error_type = "Cancelled"
            self._finish(job, CANCELLED, result_ttl)
            return [1, CANCELLED, 0]
        # release: the attempt never happened, unless a cancellation was asked for
        if job.cancel_requested:
            job.last_error = "cancelled while the orchestrator shut down"
            job.last_error_type = "Cancelled"
            self._finish(job, CANCELLED, result_ttl)
            return [1, CANCELLED, 0]
        job.attempt -= 1
        job.started_at_ms = None
        return self._wait_again(job, RETRYING if job.attempt > 0 else PENDING, self.now)

    def _wait_again(self, job: Job, status: int, run_at: int) -> list[Any]:
        job.status = status
        job.run_at_ms = run_at
        self.due[job.id] = run_at
        return [1, status, run_at]

    # ----------------------------------------------------------------- cancel

    def cancel(self, job_id: str, reason: str, default_result_ttl_ms: int) -> list[Any]:
        """cancel.lua: a waiting job ends CANCELLED; a running one gets cancel_requested."""
        job = self.jobs.get(job_id)
        if job is None:
            return [-1, 0]
        if job.status in WAITING:
            self.due.pop(job_id, None)
            job.last_error = reason
            job.last_error_type = "Cancelled"
            self._finish(job, CANCELLED, job.result_ttl_ms or default_result_ttl_ms)
            return [1, CANCELLED]
        if job.status == ACTIVE:
            job.cancel_requested = True
            return [2, ACTIVE]
        return [0, job.status]

    # -------------------------------------------------------------- recovery

    def recover_expired(
        self, max_jobs: int, dlq_retention_ms: int, default_result_ttl_ms: int
    ) -> list[Any]:
        """recover_expired.lua: an expired lease counts as a failed attempt."""
        requeued = dead = cancelled = 0
        for job_id in self._ordered(self.active, self.now, max_jobs):
            del self.active[job_id]
            job = self.jobs.get(job_id)
            if job is None or job.status != ACTIVE:
                continue
            message = (
                f"lease expired: owner {job.lease_owner or '?'} was lost during attempt "
                f"{job.attempt}"
            )
            self._record_error(job, message, "LeaseExpired", "")
            job.lease_owner = None
            if job.cancel_requested:
                self._finish(job, CANCELLED, job.result_ttl_ms or default_result_ttl_ms)
                cancelled += 1
            elif job.attempt > job.max_retries:
                self.dlq[job_id] = self.now
                self._finish(job, FAILED, dlq_retention_ms)
                dead += 1
            else:
                job.status = RETRYING
                job.run_at_ms = self.now
                self.due[job_id] = self.now
                requeued += 1
        return [requeued, dead, cancelled]

    # ------------------------------------------------------------------- DLQ

    def dlq_requeue(self, job_ids: list[str], batch: int) -> list[Any]:
        """dlq_requeue.lua through Store.dlq_requeue (no call at all for no ids and batch 0)."""
        if not job_ids and batch < 1:
            return [0, 0]
        ids = job_ids or self._ordered(self.dlq, None, max(batch, 1))
        requeued = pruned = 0
        for job_id in ids:
            if job_id not in self.dlq:
                continue
            del self.dlq[job_id]
            job = self.jobs.get(job_id)
            if job is None:
                pruned += 1
            elif job.status == FAILED:
                job.status = PENDING
                job.attempt = 0
                job.run_at_ms = self.now
                job.finished_at_ms = None
                job.started_at_ms = None
                job.cancel_requested = False
                job.expire_at = None
                self.due[job_id] = self.now
                requeued += 1
        return [requeued, pruned]

    def dlq_purge(self, job_ids: list[str], batch: int) -> int:
        """dlq_purge.lua through Store.dlq_purge: only FAILED records are deleted."""
        if not job_ids and batch < 1:
            return 0
        ids = job_ids or self._ordered(self.dlq, None, max(batch, 1))
        removed = 0
        for job_id in ids:
            if job_id not in self.dlq:
                continue
            del self.dlq[job_id]
            job = self.jobs.get(job_id)
            if job is not None and job.status == FAILED:
                del self.jobs[job_id]
            removed += 1
        return removed

    # ----------------------------------------------------------- id registry

    def forget_ids(self, pairs: list[tuple[str, str]]) -> int:
        """forget_ids.lua: drop each entry that still names its record, when
        that record does not exist."""
        dropped = 0
        for job_id, key in pairs:
            if self.ids.get(job_id) == key and not self._record_exists(key, job_id):
                del self.ids[job_id]
                dropped += 1
        return dropped

    def _record_exists(self, key: str, job_id: str) -> bool:
        if key == job_key(self.queue, job_id):
            return job_id in self.jobs
        return key in self.foreign

    # -------------------------------------------------------------- snapshot

    def snapshot(self) -> Snapshot:
        """The whole expected database, in the shape of the test's SCAN snapshot."""
        q = self.queue
        snap: Snapshot = {}

        def ttl(expire_at: int | None) -> int:
            return -1 if expire_at is None else expire_at - self.now

        for job in self.jobs.values():
            snap[job_key(q, job.id)] = ("hash", ttl(job.expire_at), job.fields())
        for name, zset in ((due_key(q), self.due), (active_key(q), self.active)):
            if zset:
                snap[name] = ("zset", -1, dict(zset))
        if self.dlq:
            snap[dlq_key(q)] = ("zset", -1, dict(self.dlq))
        for table, key_of in ((self.unique, unique_key), (self.rate_limit, rate_limit_key)):
            for key, held in table.items():
                snap[key_of(q, key)] = ("string", ttl(held.expire_at), held.job_id)
        for key, pointer in self.debounce.items():
            value = {"job_id": pointer.job_id, "first_at_ms": str(pointer.first_at_ms)}
            snap[debounce_key(q, key)] = ("hash", ttl(pointer.expire_at), value)
        if self.queues:
            snap[QUEUES_KEY] = ("set", -1, tuple(sorted(self.queues)))
        if self.ids:
            snap[DEFAULT_KEYS.ids] = ("hash", -1, dict(self.ids))
        for key, status in self.foreign.items():
            snap[key] = ("hash", -1, {"status": str(status)})
        return snap


def is_job_key(queue: str, key: str) -> bool:
    return key.startswith(job_key_prefix(queue))
