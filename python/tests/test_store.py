"""The Redis contract: key names, script error codes, scripts called directly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from rrq import store
from rrq.client import RRQClient
from rrq.exceptions import (
    InvalidArgumentError,
    InvalidParamsError,
    PayloadTooLargeError,
    RRQError,
)
from rrq.store import SCRIPT_ERRORS, EnqueueArgs

SCHEMA = REPO_ROOT / "docs" / "redis-schema.md"
PACKAGED_LUA = Path(store.__file__).parent / "lua"
CANONICAL_LUA = REPO_ROOT / "rust" / "rrq-store" / "lua"


def documented_codes() -> set[str]:
    """The codes in the "Error codes" table of docs/redis-schema.md."""
    text = SCHEMA.read_text(encoding="utf-8")
    section = text.split("## Error codes", 1)[1]
    return set(re.findall(r"^\| `(RRQ_[A-Z_]+)` \|", section, flags=re.MULTILINE))


def codes_in_scripts() -> set[str]:
    codes: set[str] = set()
    for path in PACKAGED_LUA.glob("*.lua"):
        codes |= set(re.findall(r"'(RRQ_[A-Z_]+) ", path.read_text(encoding="utf-8")))
    return codes


def test_every_documented_code_maps_to_an_exception() -> None:
    codes = documented_codes()
    assert codes, f"no error codes found in {SCHEMA}"
    assert set(SCRIPT_ERRORS) == codes
    for code in codes:
        assert issubclass(SCRIPT_ERRORS[code], RRQError)


def test_every_code_a_script_returns_is_documented() -> None:
    assert codes_in_scripts() <= documented_codes()


def test_packaged_scripts_match_the_canonical_ones() -> None:
    packaged = {p.name: p.read_text(encoding="utf-8") for p in PACKAGED_LUA.glob("*.lua")}
    canonical = {p.name: p.read_text(encoding="utf-8") for p in CANONICAL_LUA.glob("*.lua")}
    assert packaged == canonical, "python/src/rrq/lua is stale: run `make gen`"


def test_key_names() -> None:
    assert store.job_key("emails", "j1") == "rrq:{emails}:job:j1"
    assert store.job_key_prefix("emails") == "rrq:{emails}:job:"
    assert store.due_key("emails") == "rrq:{emails}:due"
    assert store.active_key("emails") == "rrq:{emails}:active"
    assert store.dlq_key("emails") == "rrq:{emails}:dlq"
    assert store.wake_channel("emails") == "rrq:db0:{emails}:wake"
    assert store.done_channel("emails", "j1") == "rrq:db0:{emails}:done:j1"
    assert store.QUEUES_KEY == "rrq:queues"


def args(queue: str, **overrides: object) -> EnqueueArgs:
    fields: dict[str, object] = {
        "job_id": "j1",
        "function_name": "f",
        "queue_name": queue,
        "params_json": "{}",
        "max_retries": 0,
        "job_timeout_ms": 0,
        "result_ttl_ms": 0,
        "defer_ms": 0,
        "run_at_ms": 0,
        "max_params_bytes": 1000,
    }
    fields.update(overrides)
    return EnqueueArgs(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"params_json": '{"a":"' + "x" * 2000 + '"}'}, PayloadTooLargeError, "bytes"),
        ({"params_json": "[1,2]"}, InvalidParamsError, "object"),
        ({"params_json": "{nope"}, InvalidParamsError, "JSON"),
        ({"function_name": ""}, InvalidArgumentError, "function_name"),
        ({"max_retries": -1}, InvalidArgumentError, "max_retries"),
    ],
)
async def test_script_errors_become_typed_exceptions(
    client: RRQClient, queue: str, overrides: dict[str, object], error: type[Exception], code: str
) -> None:
    """The script's own checks (the client validates first; other producers may not)."""
    with pytest.raises(error, match=code):
        await client.store.enqueue(args(queue, **overrides), register_queue=False)
    assert await client.store.get_job(queue, "j1") is None


async def test_settle_rejects_an_unknown_action(client: RRQClient, queue: str) -> None:
    job_id = await client.enqueue("f", {"queue_name": queue})
    claimed = await client.store.claim(queue, owner="o", lease_ms=10_000)
    attempt = int(claimed[2][1])
    with pytest.raises(InvalidArgumentError, match="settle action"):
        await client.store.settle(queue, job_id, attempt=attempt, owner="o", action="explode")


async def test_scripts_reload_after_script_flush(client: RRQClient, queue: str) -> None:
    await client.enqueue("f", {"queue_name": queue})
    await client.store.redis.script_flush()
    await client.enqueue("f", {"queue_name": queue})  # NOSCRIPT, loaded again
    assert await client.store.redis.zcard(store.due_key(queue)) == 2
