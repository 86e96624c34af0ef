"""The producer's own pipelined connection for script calls, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rrq._script_link import NAME, ScriptLink
from rrq.testing import RedisServer


def link_for(dsn: str) -> ScriptLink:
    link = ScriptLink.for_pool(aioredis.Redis.from_url(dsn).connection_pool)
    assert link is not None
    return link


@pytest.fixture
async def link(redis_dsn: str) -> AsyncIterator[ScriptLink]:
    link = link_for(redis_dsn)
    yield link
    await link.aclose()


async def wait_blocked(raw: aioredis.Redis, count: int) -> None:
    """Until ``count`` clients are blocked in Redis (bounded poll of INFO)."""
    async with asyncio.timeout(10):
        while (await raw.info("clients"))["blocked_clients"] != count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # Redis has no event for "a client blocked"


async def test_concurrent_calls_pipeline_and_each_gets_its_reply(link: ScriptLink) -> None:
    replies = await asyncio.gather(*(link.execute("ECHO", f"call-{i}") for i in range(500)))
    assert replies == [f"call-{i}".encode() for i in range(500)]


async def test_error_replies_raise_redis_py_types_and_the_link_goes_on(
    link: ScriptLink,
) -> None:
    with pytest.raises(NoScriptError):
        await link.execute("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="unknown command"):
        await link.execute("NOT-A-COMMAND")
    assert await link.execute("EVAL", "return {1, 'two', 3}", 0) == [1, b"two", 3]


async def test_a_cancelled_call_does_not_shift_the_replies_behind_it(
    link: ScriptLink, redis_dsn: str, queue: str
) -> None:
    raw = aioredis.Redis.from_url(redis_dsn)
    blocked = asyncio.create_task(link.execute("BLPOP", queue, 0))
    behind = asyncio.create_task(link.execute("ECHO", "behind"))
    await wait_blocked(raw, 1)
    blocked.cancel()
    await raw.rpush(queue, "x")  # BLPOP's reply now comes, and nobody waits for it
    assert await behind == b"behind"
    assert await link.execute("ECHO", "after") == b"after"
    assert await raw.llen(queue) == 0  # the cancelled BLPOP did run
    await raw.aclose()


async def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(
    link: ScriptLink, redis_dsn: str, queue: str
) -> None:
    raw = aioredis.Redis.from_url(redis_dsn)
    in_flight = asyncio.create_task(link.execute("BLPOP", queue, 0))
    await wait_blocked(raw, 1)
    killed = await raw.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    with pytest.raises(RedisConnectionError):
        await in_flight
    assert await link.execute("ECHO", "again") == b"again"
    names = [c["name"] for c in await raw.client_list()]
    assert NAME in names
    await raw.aclose()


async def test_no_reply_within_the_socket_timeout_raises_and_the_link_recovers(
    redis_dsn: str, queue: str
) -> None:
    link = link_for(f"{redis_dsn}?socket_timeout=0.2")
    try:
        with pytest.raises(RedisTimeoutError):
            await link.execute("BLPOP", queue, 0)
        assert await link.execute("ECHO", "fresh") == b"fresh"  # a new connection
    finally:
        await link.aclose()


async def test_password_and_database_come_from_the_dsn(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "auth", tcp=True) as server:
        raw = aioredis.Redis.from_url(server.dsn)
        await raw.config_set("requirepass", "s3cret")
        await raw.auth("s3cret")
        host_port = server.dsn.removeprefix("redis://").split("/")[0]
        link = link_for(f"redis://:s3cret@{host_port}/3")
        try:
            assert await link.execute("SET", "k", "in-db-3") == b"OK"
            await raw.select(3)
            assert await raw.get("k") == b"in-db-3"
        finally:
            await link.aclose()
            await raw.aclose()
        wrong = link_for(f"redis://:nope@{host_port}/0")
        with pytest.raises(ResponseError):
            await wrong.execute("PING")
        await wrong.aclose()


async def test_a_connect_that_never_completes_times_out() -> None:
    never = asyncio.Event()  # a server whose SYN-ACK never comes

    async def open_connection(
        factory: Callable[[], asyncio.Protocol],
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        await never.wait()
        raise AssertionError("unreachable")

    link = ScriptLink(open_connection, [], timeout=None, connect_timeout=0.05)
    with pytest.raises(RedisTimeoutError, match="no connection"):
        await link.execute("PING")


def test_the_connect_timeout_follows_redis_py(redis_dsn: str) -> None:
    assert link_for(f"{redis_dsn}?socket_connect_timeout=2")._connect_timeout == 2.0
    assert link_for(f"{redis_dsn}?socket_timeout=3")._connect_timeout == 3.0
    assert link_for(redis_dsn)._connect_timeout is None


def test_tls_stays_with_redis_py() -> None:
    pool = aioredis.Redis.from_url("rediss://127.0.0.1:6390/0").connection_pool
    assert ScriptLink.for_pool(pool) is None


def test_a_link_used_by_a_new_event_loop_connects_again(redis_dsn: str) -> None:
    link = link_for(redis_dsn)
    assert asyncio.run(link.execute("ECHO", "first loop")) == b"first loop"
    assert asyncio.run(link.execute("ECHO", "second loop")) == b"second loop"
    asyncio.run(link.aclose())
