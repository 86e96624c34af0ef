"""rrq._resp packs commands into the same bytes as redis-py (pure logic, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection
from redis.exceptions import DataError

from rrq._resp import _pack_command, use_fast_packing

CASES: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "rrq:{q}:job:1", "rrq:{q}:due", "1", "f", "{}", 3, 0, -5, ""),
    ("SCRIPT LOAD", "return 1"),
    (b"CONFIG GET", b"maxmemory"),
    ("SET", "k", 1.5),
    ("SET", "k", "ä€😀"),
    ("SET", "k", bytearray(b"xy")),
    ("SET", "k", "x" * 7000),  # over the cutoff: sent as its own chunk
    ("SET", "k", memoryview(b"abc")),
    ("MSET", *["v" * 100 for _ in range(80)]),  # the buffer itself passes the cutoff
]


@pytest.mark.parametrize("args", CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    connection = Connection()
    ours = b"".join(bytes(part) for part in _pack_command(connection, *args))
    theirs = b"".join(bytes(part) for part in connection.pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object()])
def test_unencodable_arguments_raise_as_redis_py_does(bad: object) -> None:
    with pytest.raises(DataError):
        _pack_command(Connection(), "SET", "k", bad)


def test_pools_of_every_connection_class_get_it_once() -> None:
    for base in (Connection, UnixDomainSocketConnection):
        pool = ConnectionPool(connection_class=base)
        use_fast_packing(pool)
        use_fast_packing(pool)
        cls = pool.connection_class
        assert issubclass(cls, base)
        assert cls.__mro__[1] is base
        assert cls.pack_command is _pack_command
