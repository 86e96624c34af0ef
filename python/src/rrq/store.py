"""The Redis contract on the Python side (docs/redis-schema.md).

This is the only module that builds Redis key names and runs the Lua scripts.
The scripts are package data (``rrq/lua/*.lua``), copied verbatim from
``rust/rrq-store/lua`` by ``make gen``; they run with EVALSHA and are loaded
again when Redis answers NOSCRIPT.
"""

from __future__ import annotations

import importlib.resources
import re
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
    InvalidOptionError,
    InvalidParamsError,
    PayloadTooLargeError,
    RRQError,
)

__all__ = [
    "DEFAULT_KEYS",
    "QUEUES_KEY",
    "SCRIPT_ERRORS",
    "EnqueueArgs",
    "EnqueueReply",
    "Keys",
    "Store",
    "active_key",
    "cancel_channel",
    "check_key_prefix",
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

DEFAULT_PREFIX: Final = "rrq"
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_key_prefix(prefix: object) -> str:
    """``prefix`` when it is a valid key prefix, else InvalidOptionError.

    1 to 64 characters of ASCII letters, digits, ``_ - . :``: no braces (they
    would change the Redis Cluster hash slot), no glob characters (channel
    patterns are built from it).
    """
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidOptionError(
            "key_prefix must be 1 to 64 characters of letters, digits, '_', '-', '.' "
            f"and ':', got {prefix!r}",
            option="key_prefix",
        )
    return prefix


class Keys:
    """Every key and channel name of one namespace: a key prefix in one database.

    Keys live in a database, so applications apart by database or by prefix
    never share a key. Pub/Sub channels are server-wide, whatever the
    database, so every channel name carries the database as well as the
    prefix: ``<prefix>:db<N>:{<queue>}:wake``. See docs/redis-schema.md.
    """

    __slots__ = ("_channels", "_keys", "db", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX, db: int = 0) -> None:
        self.prefix = check_key_prefix(prefix)
        self.db = db
        self._keys = f"{prefix}:"
        self._channels = f"{prefix}:db{db}:"

    @property
    def queues(self) -> str:
        """``<prefix>:queues``: every queue a producer has used."""
        return f"{self._keys}queues"

    @property
    def ids(self) -> str:
        """``<prefix>:ids``: job id -> record key, for ids the producer chose."""
        return f"{self._keys}ids"

    def queue_of_job_key(self, key: str, job_id: str) -> str | None:
        """The queue of a record key ``<prefix>:{<queue>}:job:<id>``, if it is one."""
        head, tail = f"{self._keys}{{", f"}}:job:{job_id}"
        if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
            return key[len(head) : -len(tail)]
        return None

    def job_prefix(self, queue: str) -> str:
        """``<prefix>:{<queue>}:job:``, the prefix of every job hash of a queue."""
        return f"{self._keys}{{{queue}}}:job:"

    def job(self, queue: str, job_id: str) -> str:
        """``<prefix>:{<queue>}:job:<id>``: the job record."""
        return f"{self._keys}{{{queue}}}:job:{job_id}"

    def due(self, queue: str) -> str:
        """``<prefix>:{<queue>}:due``: waiting job ids scored by run_at_ms."""
        return f"{self._keys}{{{queue}}}:due"

    def active(self, queue: str) -> str:
        """``<prefix>:{<queue>}:active``: active job ids scored by lease deadline."""
        return f"{self._keys}{{{queue}}}:active"

    def dlq(self, queue: str) -> str:
        """``<prefix>:{<queue>}:dlq``: dead-lettered job ids scored by time of death."""
        return f"{self._keys}{{{queue}}}:dlq"

    def unique(self, queue: str, key: str) -> str:
        """``<prefix>:{<queue>}:unique:<key>``: id of the job holding a unique key."""
        return f"{self._keys}{{{queue}}}:unique:{key}"

    def rate_limit(self, queue: str, key: str) -> str:
        """``<prefix>:{<queue>}:rate_limit:<key>``: set while a rate-limit window is closed."""
        return f"{self._keys}{{{queue}}}:rate_limit:{key}"

    def debounce_prefix(self, queue: str) -> str:
        """``<prefix>:{<queue>}:debounce:``, the prefix of every debounce pointer."""
        return f"{self._keys}{{{queue}}}:debounce:"

    def debounce(self, queue: str, key: str) -> str:
        """``<prefix>:{<queue>}:debounce:<key>``: the job waiting in an open window."""
        return self.debounce_prefix(queue) + key

    def rule(self, rule: str, queue: str, key: str) -> str:
        """The key of an enqueue rule (``unique``, ``rate_limit`` or ``debounce``)."""
        if rule == "unique":
            return self.unique(queue, key)
        if rule == "rate_limit":
            return self.rate_limit(queue, key)
        if rule == "debounce":
            return self.debounce(queue, key)
        raise ValueError(f"unknown enqueue rule {rule!r}")

    def cancel_channel(self, queue: str) -> str:
        """``<prefix>:db<N>:{<queue>}:cancel``: ids of running jobs to cancel."""
        return f"{self._channels}{{{queue}}}:cancel"

    def wake_channel(self, queue: str) -> str:
        """``<prefix>:db<N>:{<queue>}:wake``: published when a job becomes due."""
        return f"{self._channels}{{{queue}}}:wake"

    def done_channel_prefix(self, queue: str) -> str:
        """``<prefix>:db<N>:{<queue>}:done:``."""
        return f"{self._channels}{{{queue}}}:done:"

    def done_channel(self, queue: str, job_id: str) -> str:
        """``<prefix>:db<N>:{<queue>}:done:<id>``: published on the job's terminal transition."""
        return self.done_channel_prefix(queue) + job_id


# The default namespace (prefix ``rrq``, database 0), for tools and tests
# that build key names without a client.
DEFAULT_KEYS: Final = Keys()
QUEUES_KEY: Final = DEFAULT_KEYS.queues
job_key_prefix = DEFAULT_KEYS.job_prefix
job_key = DEFAULT_KEYS.job
due_key = DEFAULT_KEYS.due
active_key = DEFAULT_KEYS.active
dlq_key = DEFAULT_KEYS.dlq
unique_key = DEFAULT_KEYS.unique
rate_limit_key = DEFAULT_KEYS.rate_limit
debounce_key_prefix = DEFAULT_KEYS.debounce_prefix
debounce_key = DEFAULT_KEYS.debounce
rule_key = DEFAULT_KEYS.rule
cancel_channel = DEFAULT_KEYS.cancel_channel
wake_channel = DEFAULT_KEYS.wake_channel
done_channel_prefix = DEFAULT_KEYS.done_channel_prefix
done_channel = DEFAULT_KEYS.done_channel


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
    # The producer chose job_id: register it in the id registry, so that it
    # names at most one job across every queue of the prefix.
    registered_id: bool = False


# enqueue.lua's reply codes.
ENQUEUE_EXISTS: Final = 0
ENQUEUE_CREATED: Final = 1
ENQUEUE_UNIQUE_HELD: Final = 2
ENQUEUE_RATE_LIMITED: Final = 3
ENQUEUE_DEBOUNCED: Final = 4
ENQUEUE_EXISTS_IN_QUEUE: Final = 5
# The registry names a record in another queue: call again, passing it.
_ENQUEUE_ASK: Final = 6
# Rounds a registered id may take before the answer is a protocol error (the
# registry may name another record each time: one expiring, another producer).
_REGISTRY_ROUNDS: Final = 3


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
    its record expired), RATE_LIMITED (nothing written), DEBOUNCED (the
    waiting ``job_id`` took the new params; ``value`` is its new run time) or
    EXISTS_IN_QUEUE (a registered id is held by a job of ``queue``; ``value``
    is its status number).
    """

    code: int
    job_id: str
    value: int
    # EXISTS_IN_QUEUE: the queue of the job that holds the id.
    queue: str = ""

    @property
    def created(self) -> bool:
        """True when this call wrote a new job."""
        return self.code == ENQUEUE_CREATED


_T = TypeVar("_T")


class Store:
    """Key layout and scripts over one redis-py asyncio client."""

    def __init__(self, redis: aioredis.Redis, keys: Keys = DEFAULT_KEYS) -> None:
        self.redis = redis
        self.keys = keys
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
        self,
        args: EnqueueArgs,
        more: Sequence[tuple[str, str]],
        *,
        register_queue: bool,
        holder: str | None = None,
    ) -> list[Any]:
        """enqueue.lua for ``args`` and the ``more`` (id, params) pairs, preceded by
        ``SADD <prefix>:queues`` when asked; its raw reply."""
        before: list[tuple[str, Sequence[Any]]] = []
        if register_queue:
            before.append(("SADD", (self.keys.queues, args.queue_name)))
        keys, argv = _enqueue_call(self.keys, args, holder)
        for job_id, params_json in more:
            argv += [job_id, params_json]
        return await self._run("enqueue", keys, argv, before=before)

    async def enqueue(self, args: EnqueueArgs, *, register_queue: bool) -> EnqueueReply:
        """Writes a job (enqueue.lua), preceded by ``SADD <prefix>:queues`` when asked.

        A registered id whose registry entry names a record in another queue
        takes a second round, passing that record's key to the script.
        """
        holder: str | None = None
        for _ in range(_REGISTRY_ROUNDS):
            code, second, value = await self._run_enqueue(
                args, (), register_queue=register_queue, holder=holder
            )
            code = int(code)
            if code == _ENQUEUE_ASK:
                holder = _text(second)
                continue
            if code == ENQUEUE_EXISTS_IN_QUEUE and holder is not None:
                queue = self.keys.queue_of_job_key(holder, args.job_id)
                return EnqueueReply(code, args.job_id, int(value), queue or "")
            return EnqueueReply(code, _text(second), int(value))
        raise RRQError(
            f"enqueue of {args.job_id!r}: the id registry named another record "
            f"in each of {_REGISTRY_ROUNDS} rounds"
        )

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
        members = await self._read(lambda: self.redis.smembers(self.keys.queues))
        return sorted(_text(m) for m in members)

    async def find_registered_job(self, job_id: str) -> tuple[str, dict[bytes, bytes]] | None:
        """(queue, job hash) of a job whose id the producer chose, through the id
        registry: one round trip however many queues there are."""
        key = await self._read(lambda: self.redis.hget(self.keys.ids, job_id))
        queue = None if key is None else self.keys.queue_of_job_key(_text(key), job_id)
        if queue is None:
            return None
        fields = await self.get_job(queue, job_id)
        return None if fields is None else (queue, fields)

    async def find_job(
        self, job_id: str, queues: Sequence[str]
    ) -> tuple[str, dict[bytes, bytes]] | None:
        """(queue, job hash) of the first queue holding ``job_id``, in one round trip."""
        if not queues:
            return None
        replies = await self._read_pipelined(
            [("HGETALL", self.keys.job(queue, job_id)) for queue in queues]
        )
        for queue, fields in zip(queues, replies, strict=True):
            if fields:
                return queue, fields
        return None

    async def get_job(self, queue: str, job_id: str) -> dict[bytes, bytes] | None:
        """The job hash, or None when it does not exist."""
        fields = await self._read(lambda: self.redis.hgetall(self.keys.job(queue, job_id)))
        return cast("dict[bytes, bytes]", fields) or None

    async def claim(self, queue: str, *, owner: str, lease_ms: int, max_jobs: int = 1) -> list[Any]:
        """Runs claim.lua (used by tests that play the orchestrator)."""
        return await self._run(
            "claim",
            [
                self.keys.due(queue),
                self.keys.active(queue),
                self.keys.job_prefix(queue),
                self.keys.debounce_prefix(queue),
            ],
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
            self.keys.wake_channel(queue),
            self.keys.done_channel_prefix(queue),
        ]
        for s in settles:
            args += [s.job_id, s.attempt, s.owner, s.action, s.payload, s.error_type]
            args += [s.retry_delay_ms, s.traceback]
        keys = [
            self.keys.due(queue),
            self.keys.active(queue),
            self.keys.dlq(queue),
            self.keys.job_prefix(queue),
        ]
        flat = await self._run("settle", keys, args)
        return [list(flat[i : i + 3]) for i in range(0, len(flat), 3)]

    async def cancel(
        self, queue: str, job_id: str, *, reason: str, default_result_ttl_ms: int
    ) -> tuple[int, int]:
        """Runs cancel.lua: ``(code, status)``; 1 cancelled, 2 requested, 0 finished, -1 unknown."""
        code, status = await self._run(
            "cancel",
            [self.keys.job(queue, job_id), self.keys.due(queue)],
            [
                job_id,
                reason,
                default_result_ttl_ms,
                self.keys.done_channel(queue, job_id),
                self.keys.cancel_channel(queue),
            ],
        )
        return int(code), int(status)

    async def dlq_entries(self, queue: str, start: int, count: int) -> list[tuple[str, float]]:
        """``count`` dead-letter entries from position ``start`` (oldest first), with scores."""
        entries = cast(
            "list[tuple[bytes, float]]",
            await self._read(
                lambda: self.redis.zrange(
                    self.keys.dlq(queue), start, start + count - 1, withscores=True
                )
            ),
        )
        return [(_text(member), float(score)) for member, score in entries]

    async def dlq_size(self, queue: str) -> int:
        """Number of dead-letter entries of the queue."""
        return int(await self._read(lambda: self.redis.zcard(self.keys.dlq(queue))))

    async def dlq_prune(self, queue: str, job_ids: Sequence[str]) -> None:
        """Removes dead-letter entries (whose record expired)."""
        if job_ids:
            await self.redis.zrem(self.keys.dlq(queue), *job_ids)

    async def get_jobs(self, queue: str, job_ids: Sequence[str]) -> list[dict[bytes, bytes] | None]:
        """The job hashes of ``job_ids`` in one round trip (None for a missing one)."""
        if not job_ids:
            return []
        replies = await self._read_pipelined(
            [("HGETALL", self.keys.job(queue, job_id)) for job_id in job_ids]
        )
        return [cast("dict[bytes, bytes]", fields) or None for fields in replies]

    async def dlq_queues_of(self, job_ids: Sequence[str], queues: Sequence[str]) -> dict[str, str]:
        """job id -> the queue whose dead-letter queue holds it, in one round trip."""
        if not job_ids or not queues:
            return {}
        pairs = [(job_id, queue) for job_id in job_ids for queue in queues]
        replies = await self._read_pipelined(
            [("ZSCORE", self.keys.dlq(queue), job_id) for job_id, queue in pairs]
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
            [self.keys.dlq(queue), self.keys.due(queue), self.keys.job_prefix(queue)],
            [self.keys.wake_channel(queue), max(batch, 1), *job_ids],
        )
        return int(requeued), int(pruned)

    async def dlq_purge(self, queue: str, job_ids: Sequence[str] = (), *, batch: int = 0) -> int:
        """Runs dlq_purge.lua on ``job_ids``, or on the oldest ``batch`` entries when none."""
        if not job_ids and batch < 1:
            return 0
        removed = await self._run(
            "dlq_purge",
            [self.keys.dlq(queue), self.keys.job_prefix(queue)],
            [max(batch, 1), *job_ids],
        )
        return int(cast("int", removed))


def _enqueue_call(
    names: Keys, args: EnqueueArgs, holder: str | None = None
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of enqueue.lua for ``args``; ``holder`` is the record key
    the id registry named in an earlier round."""
    queue = args.queue_name
    keys = [names.job(queue, args.job_id), names.due(queue)]
    if args.rule:
        keys += [names.rule(args.rule, queue, args.rule_key), names.job_prefix(queue)]
    if args.registered_id:  # after the rule's keys: KEYS[3] or KEYS[5]
        keys.append(names.ids)
        if holder is not None:
            keys.append(holder)
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
        names.wake_channel(queue),
        args.rule,
        args.rule_key,
        args.rule_window_ms,
        args.debounce_max_wait_ms,
    ]
    return keys, argv


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
