"""The producer client: enqueue jobs, read their status, wait for their result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, NoReturn, Self

import redis.asyncio as aioredis

from rrq import _tracing, _wire
from rrq._dsn import UNPARSEABLE, redact_dsn
from rrq._limits import MAX_DURATION_MS, MAX_RETRIES
from rrq._resp import use_fast_packing
from rrq._waiting import DoneSubscriptions
from rrq.config import ClientConfig, load_config
from rrq.exceptions import (
    ConfigError,
    DuplicateJobError,
    InvalidOptionError,
    InvalidParamsError,
    JobNotFoundError,
    PayloadTooLargeError,
)
from rrq.job import JobResult
from rrq.store import (
    ENQUEUE_EXISTS,
    ENQUEUE_EXISTS_IN_QUEUE,
    ENQUEUE_RATE_LIMITED,
    EnqueueArgs,
    EnqueueReply,
    Keys,
    Store,
)

__all__ = [
    "DEBOUNCE_OPTIONS",
    "ENQUEUE_MANY_CHUNK",
    "ENQUEUE_OPTIONS",
    "RATE_LIMIT_OPTIONS",
    "UNIQUE_OPTIONS",
    "RRQClient",
    "ulid",
]

ENQUEUE_OPTIONS: Final = frozenset(
    {
        "params",
        "queue_name",
        "job_id",
        "max_retries",
        "job_timeout_seconds",
        "result_ttl_seconds",
        "defer_by_seconds",
        "defer_until",
    }
)

# The options of each enqueue rule, and the method that takes them.
UNIQUE_OPTIONS: Final = frozenset({"unique_ttl_seconds"})
RATE_LIMIT_OPTIONS: Final = frozenset({"rate_limit_key", "rate_limit_seconds"})
DEBOUNCE_OPTIONS: Final = frozenset(
    {"debounce_key", "debounce_seconds", "debounce_max_wait_seconds"}
)
_RULE_OF_OPTION: Final[Mapping[str, str]] = {
    **dict.fromkeys(UNIQUE_OPTIONS, "unique"),
    **dict.fromkeys(RATE_LIMIT_OPTIONS, "rate_limit"),
    **dict.fromkeys(DEBOUNCE_OPTIONS, "debounce"),
}
_METHOD_OF_RULE: Final[Mapping[str, str]] = {
    "": "enqueue",
    "unique": "enqueue_with_unique_key",
    "rate_limit": "enqueue_with_rate_limit",
    "debounce": "enqueue_with_debounce",
}
_OPTIONS_OF_RULE: Final[Mapping[str, frozenset[str]]] = {
    "": ENQUEUE_OPTIONS,
    "unique": ENQUEUE_OPTIONS | UNIQUE_OPTIONS,
    "rate_limit": ENQUEUE_OPTIONS | RATE_LIMIT_OPTIONS,
    "debounce": (ENQUEUE_OPTIONS - {"job_id"}) | DEBOUNCE_OPTIONS,
}

# dlq_requeue / dlq_purge work in batches of this many entries per script call.
DLQ_BATCH: Final = 100

_CANCEL_REASON: Final = "cancelled on request"

# Jobs per enqueue.lua call in enqueue_many(): a call holds Redis for its
# whole run (about 10 µs a job), so chunks keep other clients waiting briefly.
ENQUEUE_MANY_CHUNK: Final = 500

# How many job id -> queue entries the client remembers for its own jobs.
_QUEUE_CACHE_SIZE: Final = 10_000


_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# A random byte -> one of the 32 characters: 256 = 8 x 32, so each is equally
# likely and a byte gives 5 random bits. bytes.translate runs in C; bit
# arithmetic on a 128-bit int cost 3-4 us per id.
_RANDOM_CHAR: Final = bytes(_CROCKFORD.encode()[b % 32] for b in range(256))
_stamp: tuple[int, str] = (-1, "")  # (ms, its 10 characters): ids of one ms share it


def _ulid_stamp() -> str:
    global _stamp  # noqa: PLW0603 - a one-entry cache; a race only recomputes it
    ms = time.time_ns() // 1_000_000
    if _stamp[0] != ms:
        _stamp = (ms, "".join(_CROCKFORD[(ms >> shift) & 31] for shift in range(45, -1, -5)))
    return _stamp[1]


def ulid() -> str:
    """A new job id: a ULID, 48-bit Unix ms timestamp then 80 random bits, as
    26 Crockford base32 characters, so ids sort by the millisecond they were
    made. Ten characters shorter than a UUID: the id is stored twice for every
    waiting job (docs/redis-schema.md), and that is most of a backlog's memory."""
    return _ulid_stamp() + os.urandom(16).translate(_RANDOM_CHAR).decode()


def _ulids(count: int) -> list[str]:
    """``count`` new ULIDs from one read of the random source (enqueue_many)."""
    stamp = _ulid_stamp()
    random = os.urandom(16 * count).translate(_RANDOM_CHAR).decode()
    return [stamp + random[i : i + 16] for i in range(0, 16 * count, 16)]


def _redis_from_dsn(dsn: str) -> aioredis.Redis:
    # redis-py knows unix://; redis+unix:// is the same thing in the Rust world.
    if dsn.startswith("redis+unix://"):
        dsn = "unix://" + dsn.removeprefix("redis+unix://")
    try:
        redis = aioredis.Redis.from_url(dsn)
    except ValueError:
        # redis-py's message may quote a piece of the DSN (a bad port, the
        # db), and a DSN that does not parse cannot be redacted reliably: say
        # which scheme it had, and drop the original error.
        shown = redact_dsn(dsn)
        scheme = "unknown" if shown == UNPARSEABLE else shown.partition("://")[0]
        raise ConfigError(
            f"redis_dsn is not a valid Redis DSN (scheme {scheme}; the rest is not shown, "
            "it may contain a password)"
        ) from None
    use_fast_packing(redis.connection_pool)
    return redis


_MAX_SECONDS: Final = MAX_DURATION_MS // 1000


def _shown(value: object) -> str:
    """``value`` for an error message; a huge int is not printed whole."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {value.bit_length() * 3 // 10} digits"
    return repr(value)


def _seconds_to_ms(name: str, value: object, *, positive: bool) -> int:
    """``value`` seconds as whole ms, within 0 (0.001 when ``positive``) and
    MAX_DURATION_MS; anything else is an InvalidOptionError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"{name} must be a number of seconds, got {value!r}", option=name)
    # Compared before any float conversion: 10**400 is out of range, not an OverflowError.
    in_range = (value >= 0 if isinstance(value, int) else math.isfinite(value) and value >= 0) and (
        value <= _MAX_SECONDS
    )
    if not in_range or (positive and value == 0):
        bound = "positive" if positive else "non-negative"
        raise InvalidOptionError(
            f"{name} must be a finite {bound} number of seconds, at most {_MAX_SECONDS:,} "
            f"(3,650 days), got {_shown(value)}",
            option=name,
        )
    ms = round(value * 1000)
    if positive and ms == 0:
        raise InvalidOptionError(f"{name} must be at least 0.001, got {value!r}", option=name)
    return ms


def _datetime_to_ms(value: object) -> int:
    if not isinstance(value, datetime):
        raise InvalidOptionError(
            f"defer_until must be a datetime, got {value!r}", option="defer_until"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC
    ms = math.floor(value.timestamp() * 1000)
    if ms < 0:
        raise InvalidOptionError(
            f"defer_until must not be before 1970, got {value!r}", option="defer_until"
        )
    # enqueue.lua checks this against Redis's clock; this copy catches it
    # before a round trip (a producer's clock is only an estimate of Redis's).
    if ms > time.time() * 1000 + MAX_DURATION_MS:
        raise InvalidOptionError(
            f"defer_until must be at most 3,650 days from now, got {value!r}",
            option="defer_until",
        )
    return ms


def _nonempty_str(name: str, value: object) -> str:
    """A non-empty string that has a UTF-8 form (Redis stores bytes: a lone
    surrogate, as ``surrogateescape`` makes, has none)."""
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{name} must be a non-empty string, got {value!r}", option=name)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidOptionError(
                f"{name} must be valid Unicode text; it holds a lone surrogate at index "
                f"{exc.start}: {value!r}",
                option=name,
            ) from None
    return value


def _refuse_debounce_job_id() -> NoReturn:
    raise InvalidOptionError(
        "job_id cannot be combined with enqueue_with_debounce(): the debounce "
        "window decides the job id",
        option="job_id",
    )


def _check_option_names(rule: str, options: Mapping[str, Any]) -> None:
    """Rejects unknown options, and rule options given to the wrong method."""
    method = _METHOD_OF_RULE[rule]
    if not isinstance(options, Mapping):
        raise InvalidOptionError(
            f"options must be a mapping, got {type(options).__name__}", option="options"
        )
    allowed = _OPTIONS_OF_RULE[rule]
    if allowed.issuperset(options):  # the common case: one set test, no lists
        if rule == "debounce" and "job_id" in options:
            _refuse_debounce_job_id()
        return
    foreign = sorted(str(k) for k in options if k in _RULE_OF_OPTION and k not in allowed)
    if foreign:
        key = foreign[0]
        owner = _METHOD_OF_RULE[_RULE_OF_OPTION[key]]
        combined = " (one call applies at most one of the unique, rate-limit and debounce rules)"
        raise InvalidOptionError(
            f"{key} is an option of {owner}(), not of {method}()" + (combined if rule else ""),
            option=key,
        )
    if rule == "debounce" and "job_id" in options:
        _refuse_debounce_job_id()
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise InvalidOptionError(
            f"unknown {method}() option(s): {', '.join(unknown)}; "
            f"known options are {', '.join(sorted(allowed))}",
            option=unknown[0],
        )


def _naming_entry(
    index: int, exc: InvalidParamsError | PayloadTooLargeError
) -> InvalidParamsError | PayloadTooLargeError:
    """``exc``, raised for ``params_list[index]`` of an ``enqueue_many``, saying so."""
    message = f"params_list[{index}]: {exc}"
    if isinstance(exc, PayloadTooLargeError):
        return PayloadTooLargeError(message, size=exc.size, limit=exc.limit)
    return InvalidParamsError(message)


def _has_job_id(options: Mapping[str, Any]) -> bool:
    return options.get("job_id") is not None


class RRQClient:
    """Enqueues jobs and reads their status.

    ``config`` may be the ``[rrq]`` table's keys (``{"redis_dsn": ...}``) or
    ``{"rrq": {...}}``; with neither it and ``config_path``, the configuration
    comes from ``$RRQ_CONFIG`` or ``./rrq.toml`` when present, else the
    defaults. ``$RRQ_REDIS_DSN`` overrides ``redis_dsn``. The constructor does
    no I/O: the Redis connection opens on first use.
    """

    def __init__(
        self, config_path: str | None = None, config: Mapping[str, Any] | None = None
    ) -> None:
        self.config: ClientConfig = load_config(config_path, config)
        self._redis: aioredis.Redis | None = None
        self._store: Store | None = None
        self._registered_queues: set[str] = set()
        self._done = DoneSubscriptions()
        self._job_queues: OrderedDict[str, str] = OrderedDict()

    @property
    def store(self) -> Store:
        """The Redis store (connects lazily)."""
        if self._store is None:
            self._redis = _redis_from_dsn(self.config.redis_dsn)
            db = int(self._redis.connection_pool.connection_kwargs.get("db", 0) or 0)
            self._store = Store(self._redis, Keys(self.config.key_prefix, db))
        return self._store

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the Redis connections; the client reconnects if used again."""
        redis, self._redis, store, self._store = self._redis, None, self._store, None
        await self._done.close()
        if store is not None:
            await store.aclose()
        if redis is not None:
            await redis.aclose()

    # --- enqueue ------------------------------------------------------------

    def _params_json(self, params: object) -> str:
        """A job's params as the JSON text stored, checked against the payload limit."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParamsError(f"params must be a dict, got {type(params).__name__}")
        try:
            params_json = json.dumps(
                params, allow_nan=False, ensure_ascii=False, separators=(",", ":")
            )
            size = len(params_json.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
            raise InvalidParamsError(f"params are not valid UTF-8 text: {exc}") from exc
        except ValueError as exc:  # allow_nan=False, or a circular reference
            raise InvalidParamsError(
                f"params are not JSON-serializable: {exc} (NaN and Infinity are not JSON)"
            ) from exc
        except TypeError as exc:
            raise InvalidParamsError(f"params are not JSON-serializable: {exc}") from exc
        except RecursionError as exc:
            raise InvalidParamsError("params are nested too deeply to encode as JSON") from exc
        limit = self.config.max_payload_bytes
        if size > limit:
            raise PayloadTooLargeError(
                f"params are {size} bytes of JSON, the limit (max_payload_bytes) is {limit}",
                size=size,
                limit=limit,
            )
        return params_json

    def _build_args(
        self, rule: str, function_name: object, options: Mapping[str, Any]
    ) -> EnqueueArgs:
        """Validates everything before anything is written.

        ``rule`` is '' (plain enqueue), 'unique', 'rate_limit' or 'debounce';
        the rule's key and window are filled in by the caller.
        """
        _check_option_names(rule, options)
        function = _nonempty_str("function_name", function_name)

        params_json = self._params_json(options.get("params", {}))
        limit = self.config.max_payload_bytes

        queue = options.get("queue_name")
        queue = _nonempty_str(
            "queue_name", self.config.default_queue_name if queue is None else queue
        )
        if "{" in queue or "}" in queue:
            raise InvalidOptionError(
                f"queue_name must not contain braces, got {queue!r}", option="queue_name"
            )
        job_id = options.get("job_id")
        job_id = ulid() if job_id is None else _nonempty_str("job_id", job_id)

        max_retries = options.get("max_retries")
        if max_retries is None:
            max_retries = self.config.default_max_retries
        if (
            isinstance(max_retries, bool)
            or not isinstance(max_retries, int)
            or not 0 <= max_retries <= MAX_RETRIES
        ):
            raise InvalidOptionError(
                f"max_retries must be an integer from 0 to {MAX_RETRIES:,}, "
                f"got {_shown(max_retries)}",
                option="max_retries",
            )

        def ms(name: str, *, positive: bool) -> int:
            value = options.get(name)
            return 0 if value is None else _seconds_to_ms(name, value, positive=positive)

        job_timeout_ms = ms("job_timeout_seconds", positive=True)
        result_ttl_ms = ms("result_ttl_seconds", positive=True)
        defer_ms = ms("defer_by_seconds", positive=False)
        defer_until = options.get("defer_until")
        if defer_until is not None and options.get("defer_by_seconds") is not None:
            raise InvalidOptionError(
                "pass either defer_by_seconds or defer_until, not both", option="defer_until"
            )
        run_at_ms = 0 if defer_until is None else _datetime_to_ms(defer_until)

        return EnqueueArgs(
            job_id=job_id,
            function_name=function,
            queue_name=queue,
            params_json=params_json,
            max_retries=max_retries,
            job_timeout_ms=job_timeout_ms,
            result_ttl_ms=result_ttl_ms,
            defer_ms=defer_ms,
            run_at_ms=run_at_ms,
            max_params_bytes=limit,
        )

    async def _submit(self, args: EnqueueArgs, *, explicit_id: bool) -> EnqueueReply:
        """Runs enqueue.lua for validated args (inside a PRODUCER span when tracing)."""
        store = self.store
        if explicit_id:
            # A chosen id names one job across every queue: enqueue.lua checks
            # the id registry and writes the job in one step.
            args = dataclasses.replace(args, registered_id=True)
        register = args.queue_name not in self._registered_queues
        tracer = _tracing.get_tracer()
        if tracer is None:
            reply = await store.enqueue(args, register_queue=register)
        else:
            with tracer.enqueue_span(args.function_name, args.queue_name, args.job_id) as span:
                carrier = span.carrier
                args = dataclasses.replace(
                    args,
                    trace_parent=carrier.get("traceparent", ""),
                    trace_state=carrier.get("tracestate", ""),
                )
                reply = await store.enqueue(args, register_queue=register)
                if reply.job_id and reply.job_id != args.job_id:
                    span.set_job_id(reply.job_id)  # the unique holder or the debounced job
        self._registered_queues.add(args.queue_name)
        if reply.code == ENQUEUE_EXISTS:
            status = _wire.job_status_from_number(reply.value)
            raise DuplicateJobError(args.job_id, status, args.queue_name)
        if reply.code == ENQUEUE_EXISTS_IN_QUEUE:
            status = _wire.job_status_from_number(reply.value)
            raise DuplicateJobError(args.job_id, status, reply.queue)
        if reply.job_id:
            self._remember(reply.job_id, args.queue_name)
        return reply

    async def enqueue(self, function_name: str, options: Mapping[str, Any] | None = None) -> str:
        """Enqueues a job and returns its id.

        ``options``: ``params`` (dict, default ``{}``), ``queue_name``, ``job_id``,
        ``max_retries``, ``job_timeout_seconds``, ``result_ttl_seconds``,
        ``defer_by_seconds``, ``defer_until`` (aware datetime; naive is UTC).
        Raises InvalidOptionError, InvalidParamsError, PayloadTooLargeError
        (nothing written), or DuplicateJobError when an explicit ``job_id``
        already exists in any queue.
        """
        opts = options if options is not None else {}
        args = self._build_args("", function_name, opts)
        reply = await self._submit(args, explicit_id=_has_job_id(opts))
        return reply.job_id

    async def enqueue_many(
        self,
        function_name: str,
        params_list: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Enqueues one job per entry of ``params_list``; returns their ids in order.

        ``options`` are those of :meth:`enqueue` except ``params`` (each job's
        params are its entry of ``params_list``) and ``job_id`` (every job gets
        a new ULID), and apply to every job. Every entry is validated as
        :meth:`enqueue` validates its params before anything is written; then
        the jobs are written by one ``enqueue.lua`` call per
        :data:`ENQUEUE_MANY_CHUNK` jobs, so a batch costs Redis one script call
        and the client one round trip per chunk. Each job is written atomically
        on its own; the batch as a whole is not atomic.
        """
        opts = dict(options) if options is not None else {}
        for name in ("params", "job_id"):
            if name in opts:
                raise InvalidOptionError(
                    f"{name} is not an option of enqueue_many(): "
                    + (
                        "each job's params are its entry of params_list"
                        if name == "params"
                        else "every job gets a new id"
                    ),
                    option=name,
                )
        candidate: object = params_list
        if isinstance(candidate, str | bytes) or not isinstance(candidate, Sequence):
            raise InvalidParamsError(
                f"params_list must be a sequence of dicts, got {type(params_list).__name__}"
            )
        if not params_list:
            self._build_args("", function_name, opts)  # the options are still checked
            return []
        # The options are checked once; each entry's params as enqueue() checks them.
        more = params_list[1:]
        encoded: list[str] = []
        try:
            shared = self._build_args("", function_name, {**opts, "params": params_list[0]})
            encoded.append(shared.params_json)
            # extend() keeps what it appended before an entry raised: the
            # length is then the failing entry's index, at no cost per entry.
            encoded.extend(map(self._params_json, more))
        except (InvalidParamsError, PayloadTooLargeError) as exc:
            raise _naming_entry(len(encoded), exc) from exc
        jobs = list(zip([shared.job_id, *_ulids(len(more))], encoded, strict=True))
        queue = shared.queue_name

        def send(start: int) -> asyncio.Task[list[EnqueueReply]]:
            (job_id, params_json), *more = jobs[start : start + ENQUEUE_MANY_CHUNK]
            first = dataclasses.replace(shared, job_id=job_id, params_json=params_json)
            register = queue not in self._registered_queues
            return asyncio.ensure_future(
                self.store.enqueue_many(first, more, register_queue=register)
            )

        ids: list[str] = []

        def collect(replies: list[EnqueueReply]) -> None:
            for reply in replies:
                if reply.code == ENQUEUE_EXISTS:  # a ULID collision: not expected
                    status = _wire.job_status_from_number(reply.value)
                    raise DuplicateJobError(reply.job_id, status, queue)
                self._remember(reply.job_id, queue)
                ids.append(reply.job_id)
            self._registered_queues.add(queue)

        # Two chunks in flight: the client packs the next one while Redis runs
        # the script of the last, and neither waits for the other.
        sent: deque[asyncio.Task[list[EnqueueReply]]] = deque()
        try:
            for start in range(0, len(jobs), ENQUEUE_MANY_CHUNK):
                sent.append(send(start))
                if len(sent) == 2:
                    collect(await sent.popleft())
            while sent:
                collect(await sent.popleft())
        finally:
            for task in sent:  # after an error: let the one still in flight end
                with contextlib.suppress(Exception):
                    await task
        return ids

    async def enqueue_with_unique_key(
        self,
        function_name: str,
        unique_key: str,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Enqueues a job unless ``unique_key`` is held; returns the holder's id.

        The first call writes the job and holds ``unique_key`` (per queue) for
        ``unique_ttl_seconds`` (default ``default_unique_job_lock_ttl_seconds``,
        6 hours); within that time every further call writes nothing and returns
        the first job's id, even after that job finished. The check and the
        write are one script, so concurrent calls from any number of processes
        produce exactly one job. ``options`` are those of :meth:`enqueue` plus
        ``unique_ttl_seconds``.
        """
        opts = options if options is not None else {}
        args = self._build_args("unique", function_name, opts)
        key = _nonempty_str("unique_key", unique_key)
        ttl = opts.get("unique_ttl_seconds")
        if ttl is None:
            ttl = self.config.default_unique_job_lock_ttl_seconds
        ttl_ms = _seconds_to_ms("unique_ttl_seconds", ttl, positive=True)
        args = dataclasses.replace(args, rule="unique", rule_key=key, rule_window_ms=ttl_ms)
        reply = await self._submit(args, explicit_id=_has_job_id(opts))
        return reply.job_id

    async def enqueue_with_rate_limit(
        self, function_name: str, options: Mapping[str, Any]
    ) -> str | None:
        """Enqueues a job unless its rate-limit window is closed; returns its id or None.

        Required options: ``rate_limit_key`` (per queue) and ``rate_limit_seconds``.
        The first call in a window writes the job and closes the window for
        ``rate_limit_seconds``; calls inside it return None and write nothing.
        Other options are those of :meth:`enqueue`.
        """
        opts = options if options is not None else {}
        args = self._build_args("rate_limit", function_name, opts)
        key = _nonempty_str("rate_limit_key", opts.get("rate_limit_key"))
        if opts.get("rate_limit_seconds") is None:
            raise InvalidOptionError("rate_limit_seconds is required", option="rate_limit_seconds")
        window_ms = _seconds_to_ms("rate_limit_seconds", opts["rate_limit_seconds"], positive=True)
        args = dataclasses.replace(args, rule="rate_limit", rule_key=key, rule_window_ms=window_ms)
        reply = await self._submit(args, explicit_id=_has_job_id(opts))
        if reply.code == ENQUEUE_RATE_LIMITED:
            return None
        return reply.job_id

    async def enqueue_with_debounce(self, function_name: str, options: Mapping[str, Any]) -> str:
        """Enqueues a debounced job: only the last call in a window runs.

        Required options: ``debounce_key`` (per queue) and ``debounce_seconds``;
        optional ``debounce_max_wait_seconds`` (at least ``debounce_seconds``).
        The first call opens a window and writes a job due ``debounce_seconds``
        later; each further call while that job has not started gives it the new
        params and moves its run time to ``debounce_seconds`` after the call,
        but never past ``debounce_max_wait_seconds`` after the first call. Every
        call in a window returns the same job id. Once the job starts it is
        never changed: the next call opens a new window with a new job. Other
        options are those of :meth:`enqueue` except ``job_id``.
        """
        opts = options if options is not None else {}
        args = self._build_args("debounce", function_name, opts)
        key = _nonempty_str("debounce_key", opts.get("debounce_key"))
        if opts.get("debounce_seconds") is None:
            raise InvalidOptionError("debounce_seconds is required", option="debounce_seconds")
        window_ms = _seconds_to_ms("debounce_seconds", opts["debounce_seconds"], positive=True)
        max_wait_ms = 0
        if opts.get("debounce_max_wait_seconds") is not None:
            max_wait_ms = _seconds_to_ms(
                "debounce_max_wait_seconds", opts["debounce_max_wait_seconds"], positive=True
            )
            if max_wait_ms < window_ms:
                raise InvalidOptionError(
                    "debounce_max_wait_seconds must be at least debounce_seconds, got "
                    f"{opts['debounce_max_wait_seconds']!r} < {opts['debounce_seconds']!r}",
                    option="debounce_max_wait_seconds",
                )
        args = dataclasses.replace(
            args,
            rule="debounce",
            rule_key=key,
            rule_window_ms=window_ms,
            debounce_max_wait_ms=max_wait_ms,
        )
        reply = await self._submit(args, explicit_id=False)
        return reply.job_id

    # --- status -------------------------------------------------------------

    def _remember(self, job_id: str, queue: str) -> None:
        self._job_queues[job_id] = queue
        self._job_queues.move_to_end(job_id)
        while len(self._job_queues) > _QUEUE_CACHE_SIZE:
            self._job_queues.popitem(last=False)

    async def _locate(self, job_id: str) -> tuple[str, dict[bytes, bytes]] | None:
        """The job's queue and record: the cached queue first, else every queue."""
        store = self.store
        queue = self._job_queues.get(job_id)
        if queue is not None:
            fields = await store.get_job(queue, job_id)
            if fields is not None:
                return queue, fields
        found = await store.find_registered_job(job_id)
        if found is None:
            found = await store.find_job(job_id, await store.queues())
        if found is not None:
            self._remember(job_id, found[0])
        return found

    async def get_job_status(self, job_id: str) -> JobResult | None:
        """The job's current record, or None when no such job exists (or it expired)."""
        found = await self._locate(job_id)
        return None if found is None else _wire.job_result_from_hash(found[1], job_id, found[0])

    async def wait_for_result(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the public API takes a timeout
    ) -> JobResult:
        """Waits until the job is terminal (COMPLETED, FAILED or CANCELLED).

        Subscribes to the job's done channel before reading its status, so a
        transition between the two cannot be missed, and then waits for the
        message without polling. Raises JobNotFoundError for an unknown id and
        TimeoutError when ``timeout`` seconds pass first.
        """
        async with asyncio.timeout(timeout):
            found = await self._locate(job_id)
            if found is None:
                raise JobNotFoundError(job_id)
            queue = found[0]
            store = self.store
            channel = store.keys.done_channel(queue, job_id)
            async with self._done.subscribed(store.redis, channel) as pubsub:
                while True:
                    fields = await store.get_job(queue, job_id)
                    if fields is None:
                        raise JobNotFoundError(job_id)
                    result = _wire.job_result_from_hash(fields, job_id, queue)
                    if result.status.is_terminal:
                        return result
                    await self._done.wait_message(pubsub)

    # --- cancellation -------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        """Cancels a job that has not finished; returns whether it will end CANCELLED.

        A waiting job (PENDING or RETRYING) becomes CANCELLED at once and never
        runs. A running job is marked ``cancel_requested`` and its orchestrator
        cancels the handler; the job then ends CANCELLED (or COMPLETED, if the
        handler finished first). Both return True; ``wait_for_result`` waiters
        wake when the job ends. A finished job is left as it is: False. Raises
        JobNotFoundError for an unknown (or expired) id.
        """
        _nonempty_str("job_id", job_id)
        found = await self._locate(job_id)
        if found is None:
            raise JobNotFoundError(job_id)
        queue = found[0]
        code, _status = await self.store.cancel(
            queue,
            job_id,
            reason=_CANCEL_REASON,
            default_result_ttl_ms=round(self.config.default_result_ttl_seconds * 1000),
        )
        if code == -1:  # expired between the lookup and the script
            raise JobNotFoundError(job_id)
        return code > 0

    # --- dead-letter queue --------------------------------------------------

    async def _dlq_queues(self, queue_name: str | None) -> list[str]:
        if queue_name is not None:
            return [_nonempty_str("queue_name", queue_name)]
        return await self.store.queues()

    async def _dlq_live(self, queue: str, limit: int) -> list[tuple[float, JobResult]]:
        """The oldest ``limit`` dead-letter entries of a queue whose record still exists.

        Entries whose record expired are removed on the way.
        """
        store = self.store
        live: list[tuple[float, JobResult]] = []
        start = 0
        while len(live) < limit:
            entries = await store.dlq_entries(queue, start, limit - len(live))
            if not entries:
                break
            records = await store.get_jobs(queue, [job_id for job_id, _ in entries])
            expired = []
            for (job_id, score), fields in zip(entries, records, strict=True):
                if fields is None:
                    expired.append(job_id)
                else:
                    live.append((score, _wire.job_result_from_hash(fields, job_id, queue)))
            await store.dlq_prune(queue, expired)
            start += len(entries) - len(expired)  # pruned entries no longer take a position
        return live

    async def dlq_list(self, queue_name: str | None = None, limit: int = 100) -> list[JobResult]:
        """Dead-lettered jobs, oldest death first (newest last), at most ``limit``.

        ``queue_name`` None means every queue in ``rrq:queues``; the queues'
        entries are merged by time of death. Entries whose record expired
        (after ``dlq_retention_seconds``) are skipped and removed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidOptionError(f"limit must be a positive integer, got {limit!r}")
        merged: list[tuple[float, JobResult]] = []
        for queue in await self._dlq_queues(queue_name):
            merged += await self._dlq_live(queue, limit)
        merged.sort(key=lambda entry: entry[0])
        return [result for _, result in merged[:limit]]

    async def dlq_inspect(self, job_id: str) -> JobResult | None:
        """The dead-lettered job's record, or None when it is not in a dead-letter queue."""
        _nonempty_str("job_id", job_id)
        store = self.store
        queues = await store.queues()
        where = await store.dlq_queues_of([job_id], queues)
        queue = where.get(job_id)
        if queue is None:
            return None
        fields = await store.get_job(queue, job_id)
        if fields is None:
            await store.dlq_prune(queue, [job_id])
            return None
        return _wire.job_result_from_hash(fields, job_id, queue)

    async def _dlq_targets(
        self, job_ids: Sequence[str], queue_name: str | None
    ) -> dict[str, list[str]]:
        """queue -> the given ids in its dead-letter queue (ids in none are dropped)."""
        ids = [_nonempty_str("job_ids[]", job_id) for job_id in job_ids]
        where = await self.store.dlq_queues_of(ids, await self._dlq_queues(queue_name))
        by_queue: dict[str, list[str]] = {}
        for job_id in dict.fromkeys(ids):
            queue = where.get(job_id)
            if queue is not None:
                by_queue.setdefault(queue, []).append(job_id)
        return by_queue

    async def dlq_requeue(
        self, job_ids: Sequence[str] | None = None, *, queue_name: str | None = None
    ) -> int:
        """Moves dead-lettered jobs back to their original queue; returns how many.

        With ``job_ids``: those (ids not dead-lettered are ignored); else every
        dead-letter entry of ``queue_name``, or of every queue when it is None.
        A requeued job is PENDING with attempt 0, so it has a fresh retry
        budget; its error history is kept. Works in batches of 100 per script
        call, and only on the entries present when the call started (a job
        that dies again meanwhile is not requeued twice).
        """
        store = self.store
        requeued = 0
        if job_ids is not None:
            if isinstance(job_ids, str):
                raise InvalidOptionError("job_ids must be a list of ids, not a string")
            for queue, ids in (await self._dlq_targets(job_ids, queue_name)).items():
                for i in range(0, len(ids), DLQ_BATCH):
                    done, _pruned = await store.dlq_requeue(queue, ids[i : i + DLQ_BATCH])
                    requeued += done
            return requeued
        for queue in await self._dlq_queues(queue_name):
            remaining = await store.dlq_size(queue)
            while remaining > 0:
                batch = min(DLQ_BATCH, remaining)
                done, _pruned = await store.dlq_requeue(queue, batch=batch)
                requeued += done
                remaining -= batch
        return requeued

    async def dlq_purge(
        self, job_ids: Sequence[str] | None = None, *, queue_name: str | None = None
    ) -> int:
        """Deletes dead-lettered jobs for good; returns how many entries were removed.

        With ``job_ids``: those; else every dead-letter entry of ``queue_name``,
        or of every queue when it is None (in batches of 100).
        """
        store = self.store
        removed = 0
        if job_ids is not None:
            if isinstance(job_ids, str):
                raise InvalidOptionError("job_ids must be a list of ids, not a string")
            for queue, ids in (await self._dlq_targets(job_ids, queue_name)).items():
                for i in range(0, len(ids), DLQ_BATCH):
                    removed += await store.dlq_purge(queue, ids[i : i + DLQ_BATCH])
            return removed
        for queue in await self._dlq_queues(queue_name):
            remaining = await store.dlq_size(queue)
            while remaining > 0:
                batch = min(DLQ_BATCH, remaining)
                removed += await store.dlq_purge(queue, batch=batch)
                remaining -= batch
        return removed
