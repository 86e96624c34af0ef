"""Small waiting helpers for tests: bounded waits on conditions that have no event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

_POLL = 0.02


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """Waits until a handler has written ``path`` and returns its text."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            text = path.read_text(encoding="utf-8")
            if text:
                return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written within {timeout}s")
        time.sleep(_POLL)  # a bounded poll of a condition that has no event


async def async_wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """The async twin of :func:`wait_for_file`."""
    return await asyncio.to_thread(wait_for_file, path, timeout)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Polls ``condition`` until it holds; only for states that publish no event."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(_POLL)


async def wait_for_subscriber(redis: aioredis.Redis, channel: str) -> None:
    """Waits until someone subscribed to ``channel`` (PUBSUB NUMSUB)."""

    async def subscribed() -> bool:
        counts = await redis.pubsub_numsub(channel)
        return bool(counts and counts[0][1] > 0)

    await wait_until(subscribed, f"a subscription to {channel}")


Snapshot = dict[bytes, tuple[bytes, bool]]


async def keyspace_snapshot(redis: aioredis.Redis) -> Snapshot:
    """Every key's serialized value, and whether it carries a TTL."""
    names = [name async for name in redis.scan_iter(count=1000)]
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
        pipe.pttl(name)
    replies = await pipe.execute()
    snapshot: Snapshot = {}
    for index, name in enumerate(names):
        value, ttl = replies[2 * index], replies[2 * index + 1]
        if value is not None:  # expired between SCAN and DUMP
            snapshot[name] = (value, ttl >= 0)
    return snapshot


@asynccontextmanager
async def nothing_written(redis: aioredis.Redis) -> AsyncIterator[None]:
    """Asserts that the block added, changed or deleted no key.

    The test Redis is shared by the whole session, so other tests' keys with a
    TTL may expire meanwhile: a key that had a TTL and is gone is not a write.
    Comparing DBSIZE instead made the check fail whenever one did.
    """
    before = await keyspace_snapshot(redis)
    yield
    after = await keyspace_snapshot(redis)
    added = sorted(after.keys() - before.keys())
    changed = sorted(k for k in after.keys() & before.keys() if after[k][0] != before[k][0])
    deleted = sorted(k for k in before.keys() - after.keys() if not before[k][1])
    assert not added, f"the block added keys {added}"
    assert not changed, f"the block changed keys {changed}"
    assert not deleted, f"the block deleted keys {deleted}"
