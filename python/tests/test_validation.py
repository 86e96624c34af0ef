"""Every enqueue option is validated before anything is written, with an error naming it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from helpers import nothing_written
from rrq.client import RRQClient
from rrq.exceptions import InvalidOptionError

Call = Callable[[RRQClient], Awaitable[Any]]

NAN = float("nan")
INF = float("inf")
RL = {"rate_limit_key": "k", "rate_limit_seconds": 1}
DB = {"debounce_key": "k", "debounce_seconds": 1}


def plain(options: dict[str, Any], function: Any = "f") -> Call:
    return lambda c: c.enqueue(function, options)


def unique(options: dict[str, Any], key: Any = "k", function: Any = "f") -> Call:
    return lambda c: c.enqueue_with_unique_key(function, key, options)


def rate(options: dict[str, Any], function: Any = "f") -> Call:
    return lambda c: c.enqueue_with_rate_limit(function, options)


def debounce(options: dict[str, Any], function: Any = "f") -> Call:
    return lambda c: c.enqueue_with_debounce(function, options)


CASES: list[tuple[str, Call, str]] = [
    # plain enqueue
    ("negative defer", plain({"defer_by_seconds": -1}), "defer_by_seconds"),
    ("nan defer", plain({"defer_by_seconds": NAN}), "defer_by_seconds"),
    ("infinite timeout", plain({"job_timeout_seconds": INF}), "job_timeout_seconds"),
    ("negative result ttl", plain({"result_ttl_seconds": -5}), "result_ttl_seconds"),
    ("zero result ttl", plain({"result_ttl_seconds": 0}), "result_ttl_seconds"),
    ("tiny timeout", plain({"job_timeout_seconds": 0.0001}), "job_timeout_seconds"),
    ("unknown key", plain({"bogus": 1}), "bogus"),
    ("debounce key to enqueue", plain({"debounce_key": "k"}), "debounce_key"),
    ("rate limit key to enqueue", plain({"rate_limit_key": "k"}), "rate_limit_key"),
    ("unique ttl to enqueue", plain({"unique_ttl_seconds": 5}), "unique_ttl_seconds"),
    ("empty function", plain({}, function=""), "function_name"),
    ("function not str", plain({}, function=42), "function_name"),
    ("function None", plain({}, function=None), "function_name"),
    ("empty queue", plain({"queue_name": ""}), "queue_name"),
    ("empty job id", plain({"job_id": ""}), "job_id"),
    ("negative retries", plain({"max_retries": -1}), "max_retries"),
    ("bool defer", plain({"defer_by_seconds": True}), "defer_by_seconds"),
    # unique
    ("empty unique key", unique({}, key=""), "unique_key"),
    ("unique key not str", unique({}, key=7), "unique_key"),
    ("negative unique ttl", unique({"unique_ttl_seconds": -1}), "unique_ttl_seconds"),
    ("nan unique ttl", unique({"unique_ttl_seconds": NAN}), "unique_ttl_seconds"),
    ("infinite unique ttl", unique({"unique_ttl_seconds": INF}), "unique_ttl_seconds"),
    ("zero unique ttl", unique({"unique_ttl_seconds": 0}), "unique_ttl_seconds"),
    ("debounce option to unique", unique({"debounce_seconds": 1}), "debounce_seconds"),
    ("unique: negative defer", unique({"defer_by_seconds": -1}), "defer_by_seconds"),
    ("unique: empty function", unique({}, function=""), "function_name"),
    # rate limit
    ("missing rate limit key", rate({"rate_limit_seconds": 1}), "rate_limit_key"),
    ("empty rate limit key", rate({**RL, "rate_limit_key": ""}), "rate_limit_key"),
    ("missing window", rate({"rate_limit_key": "k"}), "rate_limit_seconds"),
    ("negative window", rate({**RL, "rate_limit_seconds": -1}), "rate_limit_seconds"),
    ("infinite window", rate({**RL, "rate_limit_seconds": INF}), "rate_limit_seconds"),
    ("nan window", rate({**RL, "rate_limit_seconds": NAN}), "rate_limit_seconds"),
    ("rate limit and debounce", rate({**RL, "debounce_key": "d"}), "debounce_key"),
    ("debounce key to rate limit", rate({**RL, "debounce_seconds": 1}), "debounce_seconds"),
    ("unique ttl to rate limit", rate({**RL, "unique_ttl_seconds": 1}), "unique_ttl_seconds"),
    ("rate: unknown key", rate({**RL, "nope": 1}), "nope"),
    ("rate: function not str", rate(RL, function=b"f"), "function_name"),
    # debounce
    ("job id with debounce", debounce({**DB, "job_id": "x"}), "job_id"),
    ("missing debounce key", debounce({"debounce_seconds": 1}), "debounce_key"),
    ("empty debounce key", debounce({**DB, "debounce_key": ""}), "debounce_key"),
    ("missing debounce seconds", debounce({"debounce_key": "k"}), "debounce_seconds"),
    ("negative debounce", debounce({**DB, "debounce_seconds": -0.5}), "debounce_seconds"),
    ("nan debounce", debounce({**DB, "debounce_seconds": NAN}), "debounce_seconds"),
    (
        "max wait below debounce",
        debounce({**DB, "debounce_max_wait_seconds": 0.5}),
        "debounce_max_wait_seconds",
    ),
    (
        "infinite max wait",
        debounce({**DB, "debounce_max_wait_seconds": INF}),
        "debounce_max_wait_seconds",
    ),
    ("debounce and rate limit", debounce({**DB, "rate_limit_key": "r"}), "rate_limit_key"),
    ("rate window to debounce", debounce({**DB, "rate_limit_seconds": 1}), "rate_limit_seconds"),
    ("debounce: negative defer", debounce({**DB, "defer_by_seconds": -1}), "defer_by_seconds"),
]


@pytest.mark.parametrize(("call", "option"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_rejected_with_the_option_named_and_nothing_written(
    client: RRQClient, call: Call, option: str
) -> None:
    async with nothing_written(client.store.redis):
        with pytest.raises(InvalidOptionError) as info:
            await call(client)
    assert option in str(info.value)
    assert info.value.option == option


async def test_rule_key_to_the_wrong_method_names_the_right_one(client: RRQClient) -> None:
    with pytest.raises(InvalidOptionError, match="enqueue_with_debounce"):
        await client.enqueue("f", {"debounce_key": "k"})
    with pytest.raises(InvalidOptionError, match="enqueue_with_rate_limit"):
        await client.enqueue_with_debounce("f", {**DB, "rate_limit_seconds": 1, "x": 1})


async def test_valid_options_are_accepted(client: RRQClient, queue: str) -> None:
    base = {"queue_name": queue, "max_retries": 0, "result_ttl_seconds": 1.5}
    assert await client.enqueue("f", {**base, "defer_by_seconds": 0})
    assert await client.enqueue_with_unique_key("f", "u", {**base, "unique_ttl_seconds": 0.5})
    assert await client.enqueue_with_rate_limit("f", {**base, **RL})
    assert await client.enqueue_with_debounce("f", {**base, **DB, "debounce_max_wait_seconds": 1})
