"""Fault row F31: applications sharing one Redis server never see each other.

Three applications on one redis-server, each with its own orchestrator and
runner, and the same queue name and job id: A (database 0, prefix ``rrq``),
B (database 9, prefix ``rrq``) and C (database 0, prefix ``other``). Keys are
per database and per prefix; Pub/Sub channels are server-wide, so every
channel carries the database and the prefix. A cancel, a wake-up or a queue
created in one application must not reach another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ConfigureOrchestrators
from helpers import async_wait_for_file, wait_until
from rrq.client import RRQClient
from rrq.exceptions import ConfigError
from rrq.job import JobStatus
from rrq.testing import Orchestrator

JOB_ID = "shared-id"
QUEUE = "default"


class App:
    """One application: its client, its orchestrator, its handlers' directory."""

    def __init__(
        self, name: str, dsn: str, prefix: str, configure: ConfigureOrchestrators, tmp: Path
    ) -> None:
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        extra = f'key_prefix = "{prefix}"\n'
        self.orchestrator: Orchestrator = configure(dsn=dsn, extra=extra).start()
        self.client = RRQClient(config={"redis_dsn": dsn, "key_prefix": prefix})

    async def start_hanging_job(self) -> None:
        await self.client.enqueue(
            "hang_until_cancelled",
            {"job_id": JOB_ID, "queue_name": QUEUE, "params": {"dir": str(self.dir)}},
        )

    async def served_queues_after(self, redis_ms: int) -> list[str]:
        """The queues this app's orchestrator serves, from a heartbeat written
        after Redis time ``redis_ms`` (the orchestrator's own report)."""
        redis = self.client.store.redis
        prefix = self.client.config.key_prefix
        found: list[str] = []

        async def reported() -> bool:
            ids = await redis.zrange(f"{prefix}:orchestrators", 0, -1)
            for raw in ids:
                assert isinstance(raw, bytes)
                fields = await redis.hgetall(f"{prefix}:orchestrator:{raw.decode()}")
                if int(fields.get(b"heartbeat_at_ms", b"0")) > redis_ms:
                    found.extend(json.loads(fields[b"queues"]))
                    return True
            return False

        await wait_until(reported, f"a heartbeat of {self.name} after {redis_ms}")
        return found


async def _redis_ms(client: RRQClient) -> int:
    secs, micros = await client.store.redis.time()
    return int(secs) * 1000 + int(micros) // 1000


@pytest.fixture
async def apps(
    redis_dsn: str, configure_orchestrators: ConfigureOrchestrators, tmp_path: Path
) -> Any:
    db9 = redis_dsn.rsplit("/", 1)[0] + "/9"
    made = [
        App("a", redis_dsn, "rrq", configure_orchestrators, tmp_path),
        App("b", db9, "rrq", configure_orchestrators, tmp_path),
        App("c", redis_dsn, "other", configure_orchestrators, tmp_path),
    ]
    yield made
    for app in made:
        await app.client.close()


async def test_f31_cancel_wake_and_discovery_stay_in_their_application(apps: list[App]) -> None:
    a, b, c = apps
    for app in apps:
        await app.start_hanging_job()
    for app in apps:
        await async_wait_for_file(app.dir / "started-1")

    # B cancels job `shared-id`; only B's job ends.
    assert await b.client.cancel(JOB_ID)
    done = await b.client.wait_for_result(JOB_ID, timeout=30)
    assert done.status == JobStatus.CANCELLED
    assert (b.dir / "cancelled-1").exists()

    # B creates a queue of its own, which publishes a wake-up on B's channel.
    await b.client.enqueue("echo", {"queue_name": "only-b", "params": {"n": 1}})
    after_b = await _redis_ms(b.client)

    # A barrier in A and C: a wake-up on their own channel, published after
    # B's cancel and B's wake-up. Each orchestrator reads its subscription in
    # order and the runner its stream in order, so a leaked cancel would have
    # reached the hanging handler before this job could complete.
    for app in (a, c):
        barrier = await app.client.enqueue("echo", {"queue_name": QUEUE, "params": {"n": 2}})
        result = await app.client.wait_for_result(barrier, timeout=30)
        assert result.status == JobStatus.COMPLETED
        assert not (app.dir / "cancelled-1").exists(), f"{app.name}'s job got B's cancel"
        status = await app.client.get_job_status(JOB_ID)
        assert status is not None
        assert status.status == JobStatus.ACTIVE, f"{app.name}: {status.status}"
        served = await app.served_queues_after(after_b)
        assert "only-b" not in served, f"{app.name} discovered B's queue: {served}"

    # Each application still cancels its own job.
    for app in (a, c):
        assert await app.client.cancel(JOB_ID)
        result = await app.client.wait_for_result(JOB_ID, timeout=30)
        assert result.status == JobStatus.CANCELLED


async def test_keys_and_channels_carry_the_prefix_and_database(redis_dsn: str) -> None:
    db9 = redis_dsn.rsplit("/", 1)[0] + "/9"
    async with RRQClient(config={"redis_dsn": db9, "key_prefix": "app.x"}) as client:
        keys = client.store.keys
        assert keys.job("q", "1") == "app.x:{q}:job:1"
        assert keys.queues == "app.x:queues"
        assert keys.wake_channel("q") == "app.x:db9:{q}:wake"
        assert keys.done_channel("q", "1") == "app.x:db9:{q}:done:1"
        job = await client.enqueue("echo", {"queue_name": "q"})
        assert await client.store.redis.exists(f"app.x:{{q}}:job:{job}") == 1


@pytest.mark.parametrize("prefix", ["", "a{b}", "a*", "with space", "é", "x" * 65])
def test_a_bad_prefix_is_a_config_error(redis_dsn: str, prefix: str) -> None:
    with pytest.raises(ConfigError, match="key_prefix"):
        RRQClient(config={"redis_dsn": redis_dsn, "key_prefix": prefix})
