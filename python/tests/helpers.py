"""Small waiting helpers for tests: bounded waits on conditions that have no event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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
