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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

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

# Opens a connection with the protocol factory given: loop.create_connection
# or create_unix_connection, bound to the server's address.
Opener = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]

NAME = "rrq-producer-scripts"  # the connection's CLIENT SETNAME


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """An open socket and the calls awaiting replies, in order.

    A protocol rather than a stream reader and its task: replies reach their
    callers from ``data_received`` itself, one event-loop turn sooner (a
    reader task cost a sequential enqueue a third of its loop turns).
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = hiredis.Reader(replyError=_reply_error)
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.WriteTransport | None = None
        self.broken: BaseException | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._watch: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio's classes).
        self.transport = cast("asyncio.WriteTransport", transport)
        self._watch = self.loop.create_task(self._close_with_the_loop())

    async def _close_with_the_loop(self) -> None:
        """Closes the socket when its event loop shuts down: ``asyncio.run``
        cancels every task before it closes the loop, and a transport cannot
        be closed after that."""
        try:
            await asyncio.shield(self.closed)
        except asyncio.CancelledError:
            self.fail(RedisConnectionError("the event loop shut down"))
            raise

    def send(self, waiter: asyncio.Future[Any], command: bytes) -> None:
        """Queues ``waiter`` for the next reply and writes ``command``."""
        if self.broken is not None:
            raise self.broken
        assert self.transport is not None
        self.pending.append(waiter)
        self.transport.write(command)

    def data_received(self, data: bytes) -> None:
        parser, pending = self.parser, self.pending
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if not pending:
                    self.fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                    return
                waiter = pending.popleft()
                if waiter.done():  # its caller was cancelled
                    continue
                if isinstance(reply, ResponseError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(RedisConnectionError(f"Redis sent a malformed reply: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(str(exc) if exc else "Connection closed by server."))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, error: BaseException) -> None:
        """Fails every call in flight with ``error`` and closes the socket."""
        if self.broken is None:
            self.broken = error
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(self.broken)
        if self.transport is not None:
            self.transport.close()


class ScriptLink:
    """Pipelined calls over one connection, opened on first use and again after a loss."""

    def __init__(
        self,
        open_connection: Opener,
        setup: list[tuple[Any, ...]],
        timeout: float | None,
        connect_timeout: float | None = None,
    ) -> None:
        self._open_connection = open_connection
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
        open_connection: Opener
        kind = pool.connection_class  # a subclass of redis-py's (rrq._resp packs for it)
        if issubclass(kind, SSLConnection):
            return None  # TLS stays with redis-py
        if issubclass(kind, UnixDomainSocketConnection):
            path = kwargs["path"]

            def open_connection(
                factory: Callable[[], asyncio.Protocol],
            ) -> Awaitable[tuple[asyncio.BaseTransport, Any]]:
                return asyncio.get_running_loop().create_unix_connection(factory, path)

        elif issubclass(kind, Connection):
            host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))

            def open_connection(
                factory: Callable[[], asyncio.Protocol],
            ) -> Awaitable[tuple[asyncio.BaseTransport, Any]]:
                # asyncio turns Nagle off on TCP sockets: a call is sent at once.
                return asyncio.get_running_loop().create_connection(factory, host, port)

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
            open_connection,
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
        waiter: asyncio.Future[Any] = connection.loop.create_future()
        # hiredis packs in C: a third of the time of a Python packer.
        connection.send(waiter, hiredis.pack_command(args))
        # A cancelled caller leaves its future in line: the connection drops
        # its reply when it comes, so later replies still meet their callers.
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
                    _, connection = await self._open_connection(_Connection)
            except TimeoutError:  # before OSError: it is one
                raise RedisTimeoutError(
                    f"no connection to Redis within {self._connect_timeout}s"
                ) from None
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            assert isinstance(connection, _Connection)
            try:
                for command in self._setup:
                    await self._call(connection, command)
            except BaseException as exc:  # a refused AUTH, a cancelled caller
                connection.fail(RedisConnectionError(f"connection setup failed: {exc}"))
                raise
            self._connection = connection
            return connection

    async def aclose(self) -> None:
        """Closes the connection; calls in flight fail, a later call reconnects."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.loop is not asyncio.get_running_loop():
            return  # its loop's shutdown closed it
        connection.fail(RedisConnectionError("the connection was closed"))
        await connection.closed
