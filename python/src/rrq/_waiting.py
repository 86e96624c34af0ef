"""Subscriptions to jobs' done channels, on connections kept for the next wait.

redis-py closes a PubSub's connection when the PubSub is closed, so a
subscription per ``wait_for_result`` cost a new connection (TCP and HELLO) for
the wait and another for the next command that drew the closed one from the
pool: about a millisecond of a single job's enqueue-to-start latency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

# Idle PubSub connections a client keeps; more concurrent waits open their own.
MAX_IDLE: Final = 4


async def _until(pubsub: PubSub, kind: str) -> None:
    """Reads until a message of ``kind`` ('subscribe', 'unsubscribe', 'message')."""
    async for message in pubsub.listen():
        if message.get("type") == kind:
            return


async def _confirmed_subscription(pubsub: PubSub, channel: str) -> None:
    await pubsub.subscribe(channel)
    await _until(pubsub, "subscribe")


class DoneSubscriptions:
    """Hands out PubSubs subscribed to one channel, and takes them back unsubscribed."""

    def __init__(self) -> None:
        self._idle: list[PubSub] = []

    @asynccontextmanager
    async def subscribed(self, redis: aioredis.Redis, channel: str) -> AsyncIterator[PubSub]:
        """A PubSub subscribed to ``channel``, with Redis's confirmation read.

        The confirmation matters: the caller reads the job's status on another
        connection next, and a transition Redis published before it had
        registered the subscription would never arrive.
        """
        pubsub = await self._subscribe(redis, channel)
        clean = False
        try:
            yield pubsub
            await pubsub.unsubscribe(channel)
            # Messages published before the unsubscribe come first: read them
            # here so the next wait on this connection sees none of them.
            await _until(pubsub, "unsubscribe")
            clean = True
        finally:
            if clean and len(self._idle) < MAX_IDLE:
                self._idle.append(pubsub)
            else:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _subscribe(self, redis: aioredis.Redis, channel: str) -> PubSub:
        if self._idle:
            pubsub = self._idle.pop()
            try:
                await _confirmed_subscription(pubsub, channel)
            except RedisConnectionError:
                # Redis restarted since this connection was last used, and
                # the other idle ones are as dead: drop them all and start anew.
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                await self.close()
            else:
                return pubsub
        pubsub = redis.pubsub()
        try:
            await _confirmed_subscription(pubsub, channel)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    async def wait_message(self, pubsub: PubSub) -> None:
        """Waits for the next published message."""
        await _until(pubsub, "message")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for pubsub in idle:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
