"""The Redis contract on the Python side (docs/redis-schema.md).

This is the only module that builds Redis key names and runs the Lua scripts.
The scripts are package data (``rrq/lua/*.lua``), copied verbatim from
``rust/rrq-store/lua`` by ``make gen``; they run with EVALSHA and are loaded
again when Redis answers NOSCRIPT.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NoReturn, TypeVar, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from rrq._script_link import ScriptLink
from rrq.exceptions import (
    InvalidArgumentError,
    InvalidParamsError,
    PayloadTooLargeError,
    RRQError,
)

__all__ = [
    "QUEUES_KEY",
    "SCRIPT_ERRORS",
    "EnqueueArgs",
    "EnqueueReply",
    "Store",
    "active_key",
    "cancel_channel",
    "debounce_key",
    "debounce_key_prefix",
    "dlq_key",
    "done_channel",
    "due_key",
    "job_key",
    "job_key_prefix",
    "rate_limit_key",
    "rule_key",
    "script_error",
    "unique_key",
    "wake_channel",
]

QUEUES_KEY: Final = "rrq:queues"


def _queue_prefix(queue: str) -> str:
    return f"rrq:{{{queue}}}"


def job_key_prefix(queue: str) -> str:
    """``rrq:{<queue>}:job:``, the prefix of every job hash of a queue."""
    return f"{_queue_prefix(queue)}:job:"


def job_key(queue: str, job_id: str) -> str:
    """``rrq:{<queue>}:job:<id>``: the job record."""
    return job_key_prefix(queue) + job_id


def due_key(queue: str) -> str:
    """``rrq:{<queue>}:due``: waiting job ids scored by run_at_ms."""
    return f"{_queue_prefix(queue)}:due"


def active_key(queue: str) -> str:
    """``rrq:{<queue>}:active``: active job ids scored by lease deadline."""
    return f"{_queue_prefix(queue)}:active"


def dlq_key(queue: str) -> str:
    """``rrq:{<queue>}:dlq``: dead-lettered job ids scored by time of death."""
    return f"{_queue_prefix(queue)}:dlq"


def unique_key(queue: str, key: str) -> str:
    """``rrq:{<queue>}:unique:<key>``: id of the job holding a unique key."""
    return f"{_queue_prefix(queue)}:unique:{key}"


def rate_limit_key(queue: str, key: str) -> str:
    """``rrq:{<queue>}:rate_limit:<key>``: set while a rate-limit window is closed."""
    return f"{_queue_prefix(queue)}:rate_limit:{key}"


def debounce_key_prefix(queue: str) -> str:
    """``rrq:{<queue>}:debounce:``, the prefix of every debounce pointer of a queue."""
    return f"{_queue_prefix(queue)}:debounce:"


def debounce_key(queue: str, key: str) -> str:
    """``rrq:{<queue>}:debounce:<key>``: the job waiting in an open debounce window."""
    return debounce_key_prefix(queue) + key


def rule_key(rule: str, queue: str, key: str) -> str:
    """The Redis key of an enqueue rule (``unique``, ``rate_limit`` or ``debounce``)."""
    if rule == "unique":
        return unique_key(queue, key)
    if rule == "rate_limit":
        return rate_limit_key(queue, key)
    if rule == "debounce":
        return debounce_key(queue, key)
    raise ValueError(f"unknown enqueue rule {rule!r}")


def cancel_channel(queue: str) -> str:
    """``rrq:{<queue>}:cancel``: ids of running jobs whose cancellation was requested."""
    return f"{_queue_prefix(queue)}:cancel"


def wake_channel(queue: str) -> str:
    """``rrq:{<queue>}:wake``: published when a job of the queue becomes due."""
    return f"{_queue_prefix(queue)}:wake"


def done_channel_prefix(queue: str) -> str:
    """``rrq:{<queue>}:done:``."""
    return f"{_queue_prefix(queue)}:done:"


def done_channel(queue: str, job_id: str) -> str:
    """``rrq:{<queue>}:done:<id>``: published on the job's terminal transition."""
    return done_channel_prefix(queue) + job_id


# The error codes of docs/redis-schema.md ("Error codes"), the one source.
SCRIPT_ERRORS: Final[Mapping[str, type[RRQError]]] = {
    "RRQ_PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "RRQ_INVALID_PARAMS": InvalidParamsError,
    "RRQ_INVALID_ARGUMENT": InvalidArgumentError,
}


def script_error(exc: ResponseError) -> RRQError | None:
    """The typed error for a script's ``RRQ_<CODE> message`` reply, or None."""
    text = str(exc)
    code, _, message = text.partition(" ")
    error_type = SCRIPT_ERRORS.get(code)
    if error_type is None:
        return None
    return error_type(message or code)


def _raise_script_error(exc: ResponseError) -> NoReturn:
    """Raises a script's error reply as its typed RRQ error, else as it is."""
    typed = script_error(exc)
    if typed is not None:
        raise typed from exc
    raise exc


def _load_script(name: str) -> str:
    return importlib.resources.files("rrq").joinpath("lua", f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class EnqueueArgs:
    """ARGV of enqueue.lua, already validated by the client."""

    job_id: str
    function_name: str
    queue_name: str
    params_json: str
    max_retries: int
    job_timeout_ms: int
    result_ttl_ms: int
    defer_ms: int
    run_at_ms: int
    max_params_bytes: int
    trace_parent: str = ""
    trace_state: str = ""
    # At most one rule: '' (none), 'unique', 'rate_limit' or 'debounce'.
    rule: str = ""
    rule_key: str = ""
    rule_window_ms: int = 0
    debounce_max_wait_ms: int = 0


# enqueue.lua's reply codes.
ENQUEUE_EXISTS: Final = 0
ENQUEUE_CREATED: Final = 1
ENQUEUE_UNIQUE_HELD: Final = 2
ENQUEUE_RATE_LIMITED: Final = 3
ENQUEUE_DEBOUNCED: Final = 4


class SettleArgs(NamedTuple):
    """One settle of a ``settle.lua`` batch (see the script's header)."""

    job_id: str
    attempt: int
    owner: str
    action: str
    payload: str = ""
    error_type: str = ""
    retry_delay_ms: int = 0
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class EnqueueReply:
    """enqueue.lua's answer ``{code, job_id, value}``.

    ``code`` is one of the ``ENQUEUE_*`` constants: CREATED (``value`` is the
    run time in ms), EXISTS (the id existed; ``value`` is its status number),
    UNIQUE_HELD (``job_id`` holds the key; ``value`` its status number, 0 when
    its record expired), RATE_LIMITED (nothing written) or DEBOUNCED (the
    waiting ``job_id`` took the new params; ``value`` is its new run time).
    """

    code: int
    job_id: str
    value: int

    @property
    def created(self) -> bool:
        """True when this call wrote a new job."""
        return self.code == ENQUEUE_CREATED


_T = TypeVar("_T")


class Store:
    """Key layout and scripts over one redis-py asyncio client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._scripts: dict[str, AsyncScript] = {}
        self._loaded: set[str] = set()
        # Loaded scripts' EVALSHA go through this lean connection when the
        # server is reachable by a plain socket (most of an enqueue's client
        # time was redis-py's per-command machinery); None: redis-py for all.
        self._link = ScriptLink.for_pool(redis.connection_pool)

    async def aclose(self) -> None:
        """Closes the store's own connection (the redis-py client is the caller's)."""
        if self._link is not None:
            await self._link.aclose()

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self.redis.register_script(_load_script(name))
            self._scripts[name] = script
        return script

    async def _read(self, op: Callable[[], Awaitable[_T]]) -> _T:
        """Runs a read, and once more if its pooled connection had died (Redis
        restarted since it was last used): a read is safe to repeat."""
        try:
            return await op()
        except RedisConnectionError:
            await self._drop_idle_connections()
            return await op()

    async def _read_pipelined(self, commands: Sequence[tuple[str, ...]]) -> list[Any]:
        """Read-only commands in one round trip, as :meth:`_read`."""

        async def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute()
            return replies

        return await self._read(run)

    async def _drop_idle_connections(self) -> None:
        # After a Redis restart every idle pooled connection is dead; drop
        # them all at once rather than fail once per connection.
        await self.redis.connection_pool.disconnect(inuse_connections=False)

    async def _run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[str | int],
        *,
        before: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> list[Any]:
        """Runs a script in one pipeline after the ``before`` commands.

        The first call per script lets redis-py check/load it (SCRIPT EXISTS);
        later calls send EVALSHA alone and retry once with loading on NOSCRIPT
        (Redis restarted or SCRIPT FLUSH).
        """
        script = self._script(name)
        if not before and name in self._loaded:
            # The common case, one loaded script: a plain EVALSHA skips the
            # pipeline's bookkeeping (a third of a sequential enqueue's time).
            try:
                direct: list[Any] = await (
                    self.redis.evalsha(script.sha, len(keys), *keys, *args)
                    if self._link is None
                    else self._link.execute("EVALSHA", script.sha, len(keys), *keys, *args)
                )
            except NoScriptError:
                self._loaded.discard(name)  # reloaded below
            except RedisConnectionError:
                await self._drop_idle_connections()
                raise
            except ResponseError as exc:
                _raise_script_error(exc)
            else:
                return direct
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for command, command_args in before:
                pipe.execute_command(command, *command_args)
            if name in self._loaded and attempt == 0:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            else:
                await script(keys=list(keys), args=list(args), client=pipe)
            # raise_on_error=False keeps each reply's own error (redis-py would
            # otherwise prefix the message with the pipeline position).
            try:
                replies = await pipe.execute(raise_on_error=False)
            except RedisConnectionError:
                # Not repeated here: a write whose reply was lost may have
                # committed (the caller retries with the same job_id).
                await self._drop_idle_connections()
                raise
            for reply in replies:
                if isinstance(reply, NoScriptError):
                    break
                if isinstance(reply, ResponseError):
                    _raise_script_error(reply)
            else:
                self._loaded.add(name)
                result: list[Any] = replies[-1]  # every script returns an array
                return result
            self._loaded.discard(name)
        raise RRQError(f"script {name} could not be loaded")  # pragma: no cover

    async def _run_enqueue(
        self, args: EnqueueArgs, more: Sequence[tuple[str, str]], *, register_queue: bool
    ) -> list[Any]:
        """enqueue.lua for ``args`` and the ``more`` (id, params) pairs, preceded by
        ``SADD rrq:queues`` when asked; its raw reply."""
        before: list[tuple[str, Sequence[Any]]] = []
        if register_queue:
            before.append(("SADD", (QUEUES_KEY, args.queue_name)))
        keys, argv = _enqueue_call(args)
        for job_id, params_json in more:
            argv += [job_id, params_json]
        return await self._run("enqueue", keys, argv, before=before)

    async def enqueue(self, args: EnqueueArgs, *, register_queue: bool) -> EnqueueReply:
        """Writes a job (enqueue.lua), preceded by ``SADD rrq:queues`` when asked."""
        code, job_id, value = await self._run_enqueue(args, (), register_queue=register_queue)
        return EnqueueReply(int(code), _text(job_id), int(value))

    async def enqueue_many(
        self, first: EnqueueArgs, more: Sequence[tuple[str, str]], *, register_queue: bool
    ) -> list[EnqueueReply]:
        """Writes ``first`` and the ``more`` jobs, pairs of (job id, params JSON)
        sharing every other argument of ``first``, in one ``enqueue.lua`` call.

        Each job is written atomically on its own (one reply each, in order);
        ``first`` must carry no rule. Preceded by ``SADD rrq:queues`` when asked.
        """
        if not more:  # a single job answers as enqueue() does
            return [await self.enqueue(first, register_queue=register_queue)]
        run_at, *statuses = await self._run_enqueue(first, more, register_queue=register_queue)
        ids = [first.job_id, *(job_id for job_id, _ in more)]
        return [
            EnqueueReply(ENQUEUE_EXISTS, job_id, int(status))
            if status
            else EnqueueReply(ENQUEUE_CREATED, job_id, int(run_at))
            for job_id, status in zip(ids, statuses, strict=True)
        ]

    async def queues(self) -> list[str]:
        """Every registered queue name, sorted."""
        members = await self._read(lambda: self.redis.smembers(QUEUES_KEY))
        return sorted(_text(m) for m in members)

    async def find_status(self, job_id: str, queues: Sequence[str]) -> tuple[str, int] | None:
        """(queue, status number) of the first queue holding ``job_id``, in one round trip."""
        if not queues:
            return None
        replies = await self._read_pipelined(
            [("HGET", job_key(queue, job_id), "status") for queue in queues]
        )
        for queue, status in zip(queues, replies, strict=True):
            if status is not None:
                return queue, int(status)
        return None

    async def find_job(
        self, job_id: str, queues: Sequence[str]
    ) -> tuple[str, dict[bytes, bytes]] | None:
        """(queue, job hash) of the first queue holding ``job_id``, in one round trip."""
        if not queues:
            return None
        replies = await self._read_pipelined(
            [("HGETALL", job_key(queue, job_id)) for queue in queues]
        )
        for queue, fields in zip(queues, replies, strict=True):
            if fields:
                return queue, fields
        return None

    async def get_job(self, queue: str, job_id: str) -> dict[bytes, bytes] | None:
        """The job hash, or None when it does not exist."""
        fields = await self._read(lambda: self.redis.hgetall(job_key(queue, job_id)))
        return cast("dict[bytes, bytes]", fields) or None

    async def claim(self, queue: str, *, owner: str, lease_ms: int, max_jobs: int = 1) -> list[Any]:
        """Runs claim.lua (used by tests that play the orchestrator)."""
        return await self._run(
            "claim",
            [due_key(queue), active_key(queue), job_key_prefix(queue), debounce_key_prefix(queue)],
            [max_jobs, owner, lease_ms],
        )

    async def settle(
        self,
        queue: str,
        job_id: str,
        *,
        attempt: int,
        owner: str,
        action: str,
        payload: str = "",
        error_type: str = "",
        traceback: str = "",
        retry_delay_ms: int = 0,
        default_result_ttl_ms: int = 86_400_000,
        dlq_retention_ms: int = 604_800_000,
    ) -> list[Any]:
        """One settle through settle.lua: ``[applied, status, run_at_or_attempt]``."""
        settle = SettleArgs(
            job_id, attempt, owner, action, payload, error_type, retry_delay_ms, traceback
        )
        replies = await self.settle_batch(
            queue,
            [settle],
            default_result_ttl_ms=default_result_ttl_ms,
            dlq_retention_ms=dlq_retention_ms,
        )
        return replies[0]

    async def settle_batch(
        self,
        queue: str,
        settles: Sequence[SettleArgs],
        *,
        default_result_ttl_ms: int = 86_400_000,
        dlq_retention_ms: int = 604_800_000,
    ) -> list[list[Any]]:
        """Runs settle.lua on a batch of one queue's settles, as the orchestrator
        does (used by tests that play the orchestrator): one reply per settle."""
        args: list[Any] = [
            default_result_ttl_ms,
            dlq_retention_ms,
            wake_channel(queue),
            done_channel_prefix(queue),
        ]
        for s in settles:
            args += [s.job_id, s.attempt, s.owner, s.action, s.payload, s.error_type]
            args += [s.retry_delay_ms, s.traceback]
        keys = [due_key(queue), active_key(queue), dlq_key(queue), job_key_prefix(queue)]
        flat = await self._run("settle", keys, args)
        return [list(flat[i : i + 3]) for i in range(0, len(flat), 3)]

    async def cancel(
        self, queue: str, job_id: str, *, reason: str, default_result_ttl_ms: int
    ) -> tuple[int, int]:
        """Runs cancel.lua: ``(code, status)``; 1 cancelled, 2 requested, 0 finished, -1 unknown."""
        code, status = await self._run(
            "cancel",
            [job_key(queue, job_id), due_key(queue)],
            [
                job_id,
                reason,
                default_result_ttl_ms,
                done_channel(queue, job_id),
                cancel_channel(queue),
            ],
        )
        return int(code), int(status)

    async def dlq_entries(self, queue: str, start: int, count: int) -> list[tuple[str, float]]:
        """``count`` dead-letter entries from position ``start`` (oldest first), with scores."""
        entries = cast(
            "list[tuple[bytes, float]]",
            await self._read(
                lambda: self.redis.zrange(dlq_key(queue), start, start + count - 1, withscores=True)
            ),
        )
        return [(_text(member), float(score)) for member, score in entries]

    async def dlq_size(self, queue: str) -> int:
        """Number of dead-letter entries of the queue."""
        return int(await self._read(lambda: self.redis.zcard(dlq_key(queue))))

    async def dlq_prune(self, queue: str, job_ids: Sequence[str]) -> None:
        """Removes dead-letter entries (whose record expired)."""
        if job_ids:
            await self.redis.zrem(dlq_key(queue), *job_ids)

    async def get_jobs(self, queue: str, job_ids: Sequence[str]) -> list[dict[bytes, bytes] | None]:
        """The job hashes of ``job_ids`` in one round trip (None for a missing one)."""
        if not job_ids:
            return []
        replies = await self._read_pipelined(
            [("HGETALL", job_key(queue, job_id)) for job_id in job_ids]
        )
        return [cast("dict[bytes, bytes]", fields) or None for fields in replies]

    async def dlq_queues_of(self, job_ids: Sequence[str], queues: Sequence[str]) -> dict[str, str]:
        """job id -> the queue whose dead-letter queue holds it, in one round trip."""
        if not job_ids or not queues:
            return {}
        pairs = [(job_id, queue) for job_id in job_ids for queue in queues]
        replies = await self._read_pipelined(
            [("ZSCORE", dlq_key(queue), job_id) for job_id, queue in pairs]
        )
        found: dict[str, str] = {}
        for (job_id, queue), score in zip(pairs, replies, strict=True):
            if score is not None:
                found.setdefault(job_id, queue)
        return found

    async def dlq_requeue(
        self, queue: str, job_ids: Sequence[str] = (), *, batch: int = 0
    ) -> tuple[int, int]:
        """Runs dlq_requeue.lua on ``job_ids``, or on the oldest ``batch`` entries when none."""
        if not job_ids and batch < 1:
            return 0, 0
        requeued, pruned = await self._run(
            "dlq_requeue",
            [dlq_key(queue), due_key(queue), job_key_prefix(queue)],
            [wake_channel(queue), max(batch, 1), *job_ids],
        )
        return int(requeued), int(pruned)

    async def dlq_purge(self, queue: str, job_ids: Sequence[str] = (), *, batch: int = 0) -> int:
        """Runs dlq_purge.lua on ``job_ids``, or on the oldest ``batch`` entries when none."""
        if not job_ids and batch < 1:
            return 0
        removed = await self._run(
            "dlq_purge",
            [dlq_key(queue), job_key_prefix(queue)],
            [max(batch, 1), *job_ids],
        )
        return int(cast("int", removed))


def _enqueue_call(args: EnqueueArgs) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of enqueue.lua for ``args``."""
    queue = args.queue_name
    keys = [job_key(queue, args.job_id), due_key(queue)]
    if args.rule:
        keys += [rule_key(args.rule, queue, args.rule_key), job_key_prefix(queue)]
    argv: list[str | int] = [
        args.job_id,
        args.function_name,
        queue,
        args.params_json,
        args.max_retries,
        args.job_timeout_ms,
        args.result_ttl_ms,
        args.defer_ms,
        args.run_at_ms,
        args.trace_parent,
        args.trace_state,
        args.max_params_bytes,
        wake_channel(queue),
        args.rule,
        args.rule_key,
        args.rule_window_ms,
        args.debounce_max_wait_ms,
    ]
    return keys, argv


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
