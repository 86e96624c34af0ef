"""Every number an enqueue takes has a documented range, checked before the
first write by the client and again by enqueue.lua; and one job's own data
never fails a settle batch (fault row F41).

Ranges (rust/rrq-store/limits.toml): ``max_retries`` 0..MAX_RETRIES; every
duration at most MAX_DURATION_MS (3,650 days).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from rrq._limits import MAX_DURATION_MS, MAX_RETRIES
from rrq.client import RRQClient
from rrq.exceptions import InvalidArgumentError, InvalidOptionError
from rrq.store import SettleArgs, job_key
from test_store import args

MAX_SECONDS = MAX_DURATION_MS // 1000

# (method, option, value): every number-taking option, out of range.
OUT_OF_RANGE: list[tuple[str, str, Any]] = [
    ("enqueue", "max_retries", sys.maxsize),
    ("enqueue", "max_retries", MAX_RETRIES + 1),
    ("enqueue", "job_timeout_seconds", sys.maxsize),
    ("enqueue", "job_timeout_seconds", 10**400),
    ("enqueue", "result_ttl_seconds", sys.maxsize),
    ("enqueue", "result_ttl_seconds", 1e14),
    ("enqueue", "defer_by_seconds", sys.maxsize),
    ("enqueue", "defer_by_seconds", MAX_SECONDS + 1),
    ("enqueue", "defer_until", datetime(9999, 1, 1, tzinfo=UTC)),
    ("unique", "unique_ttl_seconds", sys.maxsize),
    ("rate_limit", "rate_limit_seconds", sys.maxsize),
    ("debounce", "debounce_seconds", sys.maxsize),
    ("debounce", "debounce_max_wait_seconds", 10**400),
]


async def _call(client: RRQClient, method: str, queue: str, option: str, value: Any) -> None:
    opts: dict[str, Any] = {"queue_name": queue, option: value}
    if method == "enqueue":
        await client.enqueue("echo", opts)
    elif method == "unique":
        await client.enqueue_with_unique_key("echo", "u", opts)
    elif method == "rate_limit":
        await client.enqueue_with_rate_limit("echo", {"rate_limit_key": "r", **opts})
    else:
        await client.enqueue_with_debounce(
            "echo", {"debounce_key": "d", "debounce_seconds": 1, **opts}
        )


@pytest.mark.parametrize(("method", "option", "value"), OUT_OF_RANGE)
async def test_out_of_range_option_is_refused_before_any_write(
    client: RRQClient, queue: str, method: str, option: str, value: Any
) -> None:
    before = await client.store.redis.dbsize()
    with pytest.raises(InvalidOptionError) as caught:
        await _call(client, method, queue, option, value)
    assert caught.value.option == option
    assert option in str(caught.value)
    assert await client.store.redis.dbsize() == before


async def test_the_largest_values_are_accepted_and_read_back(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue(
        "echo",
        {
            "queue_name": queue,
            "max_retries": MAX_RETRIES,
            "job_timeout_seconds": MAX_SECONDS,
            "result_ttl_seconds": MAX_SECONDS,
            "defer_by_seconds": MAX_SECONDS - 10,
        },
    )
    status = await client.get_job_status(job_id)
    assert status is not None
    assert status.status.name == "PENDING"


@pytest.mark.parametrize("name", ["function_name", "queue_name", "job_id"])
async def test_lone_surrogate_is_a_typed_error(client: RRQClient, queue: str, name: str) -> None:
    bad = "file-\udcff"
    opts: dict[str, Any] = {"queue_name": queue}
    function = "echo"
    if name == "function_name":
        function = bad
    else:
        opts[name] = bad
    before = await client.store.redis.dbsize()
    with pytest.raises(InvalidOptionError) as caught:
        await client.enqueue(function, opts)
    assert caught.value.option == name
    assert "surrogate" in str(caught.value)
    assert await client.store.redis.dbsize() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_retries", MAX_RETRIES + 1),
        ("job_timeout_ms", MAX_DURATION_MS + 1),
        ("result_ttl_ms", 10**17),
        ("defer_ms", 2**62),
        ("run_at_ms", 2**60),
    ],
)
async def test_enqueue_script_refuses_out_of_range_numbers(
    client: RRQClient, queue: str, field: str, value: int
) -> None:
    """A producer that skips the client's checks meets the same ranges in the script."""
    store = client.store
    before = await store.redis.dbsize()
    with pytest.raises(InvalidArgumentError) as caught:
        await store.enqueue(args(queue, **{field: value}), register_queue=False)
    assert field in str(caught.value)
    assert "at most" in str(caught.value)
    assert await store.redis.dbsize() == before


@pytest.mark.parametrize(
    ("rule", "window", "max_wait"),
    [("unique", MAX_DURATION_MS + 1, 0), ("rate_limit", 2**62, 0), ("debounce", 1000, 2**62)],
)
async def test_enqueue_script_refuses_out_of_range_windows(
    client: RRQClient, queue: str, rule: str, window: int, max_wait: int
) -> None:
    store = client.store
    before = await store.redis.dbsize()
    ruled = args(
        queue, rule=rule, rule_key="k", rule_window_ms=window, debounce_max_wait_ms=max_wait
    )
    with pytest.raises(InvalidArgumentError, match="at most"):
        await store.enqueue(ruled, register_queue=False)
    assert await store.redis.dbsize() == before


async def _active_jobs(client: RRQClient, queue: str, count: int) -> list[list[Any]]:
    for i in range(count):
        await client.enqueue("echo", {"queue_name": queue, "job_id": f"j{i}", "max_retries": 1})
    return await client.store.claim(queue, owner="o1", lease_ms=60_000, max_jobs=count)


async def test_one_poisoned_job_does_not_fail_its_settle_batch(
    client: RRQClient, queue: str
) -> None:
    """F41: a record planted with a TTL Redis cannot apply and a damaged error
    history, and a runner's absurd retry delay, each stay that job's problem."""
    store = client.store
    claimed = await _active_jobs(client, queue, 4)
    assert len(claimed) == 6  # {now, wait, job, job, job, job}
    redis = store.redis
    await redis.hset(job_key(queue, "j1"), "result_ttl_ms", "100000000000000000")
    await redis.hset(job_key(queue, "j2"), "errors_json", "[1," + "null," * 50 + "2]")
    replies = await store.settle_batch(
        queue,
        [
            SettleArgs("j0", 1, "o1", "complete", '{"ok":0}'),
            SettleArgs("j1", 1, "o1", "complete", '{"ok":1}'),
            SettleArgs("j2", 1, "o1", "retry", "boom", "ValueError", 5, "tb"),
            SettleArgs("j3", 1, "o1", "retry", "later", "RetryJob", 10**300),
        ],
    )
    assert [r[0] for r in replies] == [1, 1, 1, 1]
    for job in ("j0", "j1"):
        assert await redis.hget(job_key(queue, job), "status") == b"4"  # COMPLETED
    ttl_ms = await redis.pttl(job_key(queue, "j1"))
    assert 0 < ttl_ms <= 86_400_000  # the default TTL replaced the planted one
    assert await redis.hget(job_key(queue, "j2"), "status") == b"3"  # RETRYING
    assert await redis.hget(job_key(queue, "j2"), "last_error") == b"boom"
    run_at = await redis.hget(job_key(queue, "j3"), "run_at_ms")
    assert run_at is not None
    assert run_at.isdigit()  # readable: clamped, not 1e+300
    status = await client.get_job_status("j3")
    assert status is not None
    assert status.status.name == "RETRYING"
