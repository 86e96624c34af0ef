"""The producer client: enqueue jobs, read their status, wait for their result."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

import redis.asyncio as aioredis

from rrq import _tracing, _wire
from rrq.config import ClientConfig, load_config
from rrq.exceptions import (
    DuplicateJobError,
    InvalidOptionError,
    InvalidParamsError,
    JobNotFoundError,
    PayloadTooLargeError,
)
from rrq.job import JobResult
from rrq.store import EnqueueArgs, Store, done_channel

__all__ = ["ENQUEUE_OPTIONS", "RRQClient", "uuid7"]

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

# How many job id -> queue entries the client remembers for its own jobs.
_QUEUE_CACHE_SIZE: Final = 10_000


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms timestamp, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def _redis_from_dsn(dsn: str) -> aioredis.Redis:
    # redis-py knows unix://; redis+unix:// is the same thing in the Rust world.
    if dsn.startswith("redis+unix://"):
        dsn = "unix://" + dsn.removeprefix("redis+unix://")
    return aioredis.Redis.from_url(dsn)


def _seconds_to_ms(name: str, value: object, *, positive: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptionError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "positive" if positive else "non-negative"
        raise InvalidOptionError(f"{name} must be a finite {bound} number, got {value!r}")
    return round(value * 1000)


def _datetime_to_ms(value: object) -> int:
    if not isinstance(value, datetime):
        raise InvalidOptionError(f"defer_until must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC
    ms = math.floor(value.timestamp() * 1000)
    if ms < 0:
        raise InvalidOptionError(f"defer_until must not be before 1970, got {value!r}")
    return ms


def _nonempty_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(f"{name} must be a non-empty string, got {value!r}")
    return value


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
        self._job_queues: OrderedDict[str, str] = OrderedDict()

    @property
    def store(self) -> Store:
        """The Redis store (connects lazily)."""
        if self._store is None:
            self._redis = _redis_from_dsn(self.config.redis_dsn)
            self._store = Store(self._redis)
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
        redis, self._redis, self._store = self._redis, None, None
        if redis is not None:
            await redis.aclose()

    # --- enqueue ------------------------------------------------------------

    def _build_args(self, function_name: object, options: Mapping[str, Any]) -> EnqueueArgs:
        """Validates everything before anything is written."""
        if not isinstance(options, Mapping):
            raise InvalidOptionError(f"options must be a mapping, got {type(options).__name__}")
        unknown = sorted(str(key) for key in options if key not in ENQUEUE_OPTIONS)
        if unknown:
            raise InvalidOptionError(
                f"unknown enqueue option(s): {', '.join(unknown)}; "
                f"known options are {', '.join(sorted(ENQUEUE_OPTIONS))}"
            )
        function = _nonempty_str("function_name", function_name)

        params = options.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParamsError(f"params must be a dict, got {type(params).__name__}")
        try:
            params_json = json.dumps(
                params, allow_nan=False, ensure_ascii=False, separators=(",", ":")
            )
        except ValueError as exc:  # allow_nan=False, or a circular reference
            raise InvalidParamsError(
                f"params are not JSON-serializable: {exc} (NaN and Infinity are not JSON)"
            ) from exc
        except TypeError as exc:
            raise InvalidParamsError(f"params are not JSON-serializable: {exc}") from exc
        size = len(params_json.encode("utf-8"))
        limit = self.config.max_payload_bytes
        if size > limit:
            raise PayloadTooLargeError(
                f"params are {size} bytes of JSON, the limit (max_payload_bytes) is {limit}",
                size=size,
                limit=limit,
            )

        queue = options.get("queue_name")
        queue = _nonempty_str(
            "queue_name", self.config.default_queue_name if queue is None else queue
        )
        if "{" in queue or "}" in queue:
            raise InvalidOptionError(f"queue_name must not contain braces, got {queue!r}")
        job_id = options.get("job_id")
        job_id = uuid7() if job_id is None else _nonempty_str("job_id", job_id)

        max_retries = options.get("max_retries")
        if max_retries is None:
            max_retries = self.config.default_max_retries
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidOptionError(
                f"max_retries must be a non-negative integer, got {max_retries!r}"
            )

        def ms(name: str, *, positive: bool) -> int:
            value = options.get(name)
            return 0 if value is None else _seconds_to_ms(name, value, positive=positive)

        job_timeout_ms = ms("job_timeout_seconds", positive=True)
        result_ttl_ms = ms("result_ttl_seconds", positive=True)
        defer_ms = ms("defer_by_seconds", positive=False)
        defer_until = options.get("defer_until")
        if defer_until is not None and options.get("defer_by_seconds") is not None:
            raise InvalidOptionError("pass either defer_by_seconds or defer_until, not both")
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

    async def enqueue(self, function_name: str, options: Mapping[str, Any] | None = None) -> str:
        """Enqueues a job and returns its id.

        ``options``: ``params`` (dict, default ``{}``), ``queue_name``, ``job_id``,
        ``max_retries``, ``job_timeout_seconds``, ``result_ttl_seconds``,
        ``defer_by_seconds``, ``defer_until`` (aware datetime; naive is UTC).
        Raises InvalidOptionError, InvalidParamsError, PayloadTooLargeError
        (nothing written), or DuplicateJobError when an explicit ``job_id``
        already exists in any queue.
        """
        args = self._build_args(function_name, options if options is not None else {})
        store = self.store
        if (options or {}).get("job_id") is not None:
            others = [q for q in await store.queues() if q != args.queue_name]
            found = await store.find_status(args.job_id, others)
            if found is not None:
                queue, number = found
                raise DuplicateJobError(args.job_id, _wire.job_status_from_number(number), queue)
        register = args.queue_name not in self._registered_queues
        tracer = _tracing.get_tracer()
        if tracer is None:
            reply = await store.enqueue(args, register_queue=register)
        else:
            with tracer.enqueue_span(args.function_name, args.queue_name) as carrier:
                args = dataclasses.replace(
                    args,
                    trace_parent=carrier.get("traceparent", ""),
                    trace_state=carrier.get("tracestate", ""),
                )
                reply = await store.enqueue(args, register_queue=register)
        self._registered_queues.add(args.queue_name)
        if not reply.created:
            status = _wire.job_status_from_number(reply.value)
            raise DuplicateJobError(args.job_id, status, args.queue_name)
        self._remember(args.job_id, args.queue_name)
        return args.job_id

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
        found = await store.find_job(job_id, await store.queues())
        if found is not None:
            self._remember(job_id, found[0])
        return found

    async def get_job_status(self, job_id: str) -> JobResult | None:
        """The job's current record, or None when no such job exists (or it expired)."""
        found = await self._locate(job_id)
        return None if found is None else _wire.job_result_from_hash(found[1])

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
            pubsub = store.redis.pubsub()
            try:
                await pubsub.subscribe(done_channel(queue, job_id))
                while True:
                    fields = await store.get_job(queue, job_id)
                    if fields is None:
                        raise JobNotFoundError(job_id)
                    result = _wire.job_result_from_hash(fields)
                    if result.status.is_terminal:
                        return result
                    await self._next_message(pubsub)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @staticmethod
    async def _next_message(pubsub: aioredis.client.PubSub) -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                return
