"""One lean, pipelined Redis connection for the producer's script calls.

redis-py 8 spends about 130 µs of client CPU on every command (two timeout
wrappers, a pool checkout and release, event dispatch, metrics hooks), where
the socket and the event loop need about 40 µs: a sequential enqueue was bound
by it (docs/performance.md). This link sends a loaded script's ``EVALSHA``
straight to the socket and matches replies to calls in order, so any number of
concurrent callers share one connection and their calls pipeline. Everything
else (registration, script loading, reads, Pub/Sub) stays on redis-py.

Failure semantics are redis-py's: a lost connection fails every call in
flight with :class:`redis.exceptions.ConnectionError` (a write's reply may
have been lost after it committed: the caller decides whether to repeat it),
and the next call connects again. Error replies come back as redis-py's
exception types (``NoScriptError`` for ``NOSCRIPT``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rrq._resp import pack_args

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

NAME = "rrq-producer-scripts"  # the connection's CLIENT SETNAME


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


def _deliver(parser: hiredis.Reader, connection: _Connection) -> None:
    """Hands every complete reply in ``parser`` to the next call in line."""
    while (reply := parser.gets()) is not False:
        if not connection.pending:
            raise RedisConnectionError("Redis sent a reply nobody asked for")
        waiter = connection.pending.popleft()
        if waiter.done():  # its caller was cancelled
            continue
        if isinstance(reply, ResponseError):
            waiter.set_exception(reply)
        else:
            waiter.set_result(reply)


@dataclass
class _Connection:
    """An open socket, its reader task and the calls awaiting replies, in order."""

    writer: asyncio.StreamWriter
    loop: asyncio.AbstractEventLoop
    pending: deque[asyncio.Future[Any]] = field(default_factory=deque)
    reader_task: asyncio.Task[None] | None = None
    broken: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """Fails every call in flight with ``error`` and closes the socket."""
        if self.broken is None:
            self.broken = error
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(self.broken)
        self.writer.close()


class ScriptLink:
    """Pipelined calls over one connection, opened on first use and again after a loss."""

    def __init__(
        self,
        open_streams: Callable[[], Awaitable[Streams]],
        setup: list[tuple[Any, ...]],
        timeout: float | None,
        connect_timeout: float | None = None,
    ) -> None:
        self._open_streams = open_streams
        self._setup = setup  # AUTH, SELECT: sent first on every new connection
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def for_pool(cls, pool: ConnectionPool) -> ScriptLink | None:
        """A link to the server ``pool`` connects to, or None when the pool's
        connections need more than a plain socket (TLS, a credential provider)."""
        kwargs = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None:
            return None
        open_streams: Callable[[], Awaitable[Streams]]
        kind = pool.connection_class  # a subclass of redis-py's (rrq._resp packs for it)
        if issubclass(kind, SSLConnection):
            return None  # TLS stays with redis-py
        if issubclass(kind, UnixDomainSocketConnection):
            path = kwargs["path"]

            def open_streams() -> Awaitable[Streams]:
                return asyncio.open_unix_connection(path)

        elif issubclass(kind, Connection):
            host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))

            def open_streams() -> Awaitable[Streams]:
                return asyncio.open_connection(host, port)

        else:
            return None
        setup: list[tuple[Any, ...]] = []
        password, username = kwargs.get("password"), kwargs.get("username")
        if password is not None:
            setup.append(("AUTH", password) if username is None else ("AUTH", username, password))
        if int(kwargs.get("db") or 0) != 0:
            setup.append(("SELECT", int(kwargs["db"])))
        setup.append(("CLIENT", "SETNAME", NAME))  # so CLIENT LIST shows what it is
        timeout = kwargs.get("socket_timeout")
        # redis-py's rule: the connect timeout, else the socket timeout.
        connect_timeout = kwargs.get("socket_connect_timeout") or timeout
        return cls(
            open_streams,
            setup,
            float(timeout) if timeout else None,
            float(connect_timeout) if connect_timeout else None,
        )

    async def execute(self, *args: Any) -> Any:  # noqa: ANN401 - a Redis reply
        """Sends one command and returns its reply (an error reply raises)."""
        connection = self._connection
        if (
            connection is None
            or connection.broken is not None
            or connection.loop is not asyncio.get_running_loop()  # a client reused by a new loop
        ):
            connection = await self._connect()
        return await self._call(connection, args)

    async def _call(self, connection: _Connection, args: tuple[Any, ...]) -> Any:  # noqa: ANN401
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        connection.pending.append(waiter)
        connection.writer.write(pack_args(args))
        # A cancelled caller leaves its future in line: the reader drops its
        # reply when it comes, so later replies still meet their callers.
        if self._timeout is None:
            return await waiter
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except TimeoutError:
            error = RedisTimeoutError(f"no reply from Redis within {self._timeout}s")
            connection.fail(error)  # the link is stuck: calls behind this one would wait too
            raise error from None

    async def _connect(self) -> _Connection:
        async with self._connecting:
            loop = asyncio.get_running_loop()
            current = self._connection
            if current is not None and current.broken is None and current.loop is loop:
                return current  # another caller connected meanwhile
            try:
                async with asyncio.timeout(self._connect_timeout):
                    reader, writer = await self._open_streams()
            except TimeoutError:  # before OSError: it is one
                raise RedisTimeoutError(
                    f"no connection to Redis within {self._connect_timeout}s"
                ) from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            connection = _Connection(writer, loop)
            connection.reader_task = loop.create_task(self._read_replies(reader, connection))
            try:
                for command in self._setup:
                    await self._call(connection, command)
            except BaseException as exc:  # a refused AUTH, a cancelled caller
                connection.fail(RedisConnectionError(f"connection setup failed: {exc}"))
                raise
            self._connection = connection
            return connection

    @staticmethod
    async def _read_replies(reader: asyncio.StreamReader, connection: _Connection) -> None:
        parser = hiredis.Reader(replyError=_reply_error)
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                _deliver(parser, connection)
            connection.fail(RedisConnectionError("Connection closed by server."))
        except (OSError, RedisConnectionError, hiredis.ProtocolError) as exc:
            error = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
            connection.fail(error)
        except asyncio.CancelledError:
            connection.fail(RedisConnectionError("the connection was closed"))
            raise

    async def aclose(self) -> None:
        """Closes the connection; calls in flight fail, a later call reconnects."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.fail(RedisConnectionError("the connection was closed"))
        if connection.reader_task is not None:
            connection.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connection.reader_task
        with contextlib.suppress(OSError):
            await connection.writer.wait_closed()
