"""An in-repo TCP fault proxy (asyncio, in a background thread with its own loop).

Put it between two components (orchestrator↔Redis, producer↔Redis,
runner↔orchestrator) and switch its mode from the test:

- ``pass``: forward both ways;
- ``latency=ms``: delay every chunk by ``ms`` milliseconds;
- ``blackhole``: a network partition: keep the sockets open and forward
  nothing until the mode changes, then deliver what was held, in order. This
  is what TCP does across a partition shorter than its retransmission timeout
  (bytes are retransmitted, never silently dropped); dropping them instead
  would desynchronise any request/reply protocol in a way no real network can;
- ``reset``: close every connection with ``SO_LINGER 0`` (an RST), and new ones at once;
- ``close_after=N``: forward N more client→server bytes per connection, then reset it;
- ``slice=N``: forward in chunks of at most N bytes.

``reset_after_request(n)`` arms a one-shot fault for F11: the next ``n``
client→server chunks are forwarded and then the connection is reset before
any reply can reach the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Self


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "pass"
        self.arg = 0
        self.resets = 0  # connections reset by the proxy
        self._armed = 0  # one-shot "reset after request" faults left
        self._marker = b""
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._healed: asyncio.Event | None = None  # set unless blackholed; created on the loop

    # --- control (called from the test thread) -----------------------------

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def set_mode(self, mode: str) -> None:
        """``"pass"``, ``"latency=50"``, ``"blackhole"``, ``"reset"``, ``"close_after=100"``..."""
        name, _, value = mode.partition("=")
        if name not in {"pass", "latency", "blackhole", "reset", "close_after", "slice"}:
            raise ValueError(f"unknown proxy mode {mode!r}")
        arg = int(value) if value else 0

        def apply() -> None:
            self.mode, self.arg = name, arg
            assert self._healed is not None
            if name == "blackhole":
                self._healed.clear()
            else:
                self._healed.set()
            for conn in list(self._conns):
                conn.budget = arg if name == "close_after" else -1
                if name == "reset":
                    conn.reset()

        self._loop.call_soon_threadsafe(apply)

    def reset_after_request(self, marker: bytes = b"", count: int = 1) -> None:
        """Reset the next ``count`` connections once a request containing ``marker`` passed."""

        def arm() -> None:
            self._armed += count
            self._marker = marker

        self._loop.call_soon_threadsafe(arm)

    @property
    def armed(self) -> int:
        return self._armed

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                conn.reset()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop's side ---------------------------------------------------

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _rst(writer)
            self.resets += 1
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        conn = _Conn(self, writer, up_writer)
        conn.budget = self.arg if self.mode == "close_after" else -1
        self._conns.add(conn)
        try:
            await asyncio.gather(
                self._pump(conn, reader, up_writer, upstream=True),
                self._pump(conn, up_reader, writer, upstream=False),
            )
        finally:
            self._conns.discard(conn)
            conn.reset()

    async def _pump(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while not conn.closed:
                size = self.arg if self.mode == "slice" and self.arg > 0 else 65536
                data = await reader.read(size)
                if not data:
                    break
                if self.mode == "blackhole":
                    # Hold this chunk (and, by not reading, everything behind
                    # it) until the partition heals.
                    assert self._healed is not None
                    await self._healed.wait()
                    if conn.is_closed():  # reset while held
                        break
                if self.mode == "latency":
                    await asyncio.sleep(self.arg / 1000)
                if upstream and conn.budget >= 0:
                    data = data[: conn.budget]
                    conn.budget -= len(data)
                writer.write(data)
                await writer.drain()
                if upstream and conn.budget == 0:
                    self.resets += 1
                    conn.reset()
                    break
                if upstream and self._armed > 0 and self._marker in data:
                    # The request reached the server; drop the connection before the reply.
                    self._armed -= 1
                    self.resets += 1
                    conn.reset(client_only=True)
                    break
        conn.reset()


class _Conn:
    def __init__(
        self, proxy: FaultProxy, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.budget = -1
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def reset(self, *, client_only: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        _rst(self.client)
        if client_only:
            # Let the server finish the request it already has, then close politely.
            self.server.close()
        else:
            _rst(self.server)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
