"""Secrets stay out of reprs, errors, logs and runner environments; job text
is escaped in the runner's log (issue 13, items 7 and 8).

The end-to-end test runs the real orchestrator against a redis-server that
requires a password, spawning a Python runner whose handler returns its whole
environment.
"""

from __future__ import annotations

import io
import logging
import traceback
from pathlib import Path

import pytest

from conftest import find_orchestrator_binary, python_env, write_config
from rrq._dsn import UNPARSEABLE, redact_dsn
from rrq._log_escape import escape
from rrq.client import RRQClient
from rrq.config import ClientConfig
from rrq.exceptions import ConfigError
from rrq.job import JobStatus
from rrq.runner import log as runner_log
from rrq.testing import Orchestrator, RedisServer, free_port

PASSWORD = "pw-5ecret-Zq9"  # noqa: S105 - the test server's own, to be hunted for
WAIT = 30.0


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:secret@host:6379/0", "redis://***@host:6379/0"),
        ("redis://alice:secret@host:6379/0", "redis://alice:***@host:6379/0"),
        ("redis://secret@host/0", "redis://***@host/0"),
        ("rediss://u:p%40ss-secret@h:6380/1", "rediss://u:***@h:6380/1"),
        ("redis://:p@ss-secret@host/0", "redis://***@host/0"),
        ("unix://:secret@/path/redis.sock?db=0", "unix://***@/path/redis.sock?db=0"),
        ("redis+unix://:secret@/path/redis.sock?db=3", "redis+unix://***@/path/redis.sock?db=3"),
        (
            "redis+unix:///path/redis.sock?db=2&pass=secret",
            "redis+unix:///path/redis.sock?db=2&pass=***",
        ),
        ("unix:///s.sock?password=secret&db=1", "unix:///s.sock?password=***&db=1"),
        (
            "redis://host/0?PassWord=secret&user=bob&secret",
            "redis://host/0?PassWord=***&user=***&***",
        ),
        ("redis://h/0#secret", "redis://h/0#***"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_every_dsn_form_is_redacted(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert "secret" not in redact_dsn(dsn)


@pytest.mark.parametrize(
    "dsn",
    [
        "",
        "secret",
        "redis:/:secret@host",
        "redis//:secret@host",
        "://:secret@host",
        "re dis://:secret@host",
        "host:6379:secret",
    ],
)
def test_a_malformed_dsn_is_not_echoed(dsn: str) -> None:
    assert redact_dsn(dsn) == UNPARSEABLE


def test_the_config_repr_hides_the_password() -> None:
    for dsn in (f"redis://:{PASSWORD}@h:1/0", f"unix://:{PASSWORD}@/r.sock?db=0"):
        shown = repr(ClientConfig(redis_dsn=dsn))
        assert PASSWORD not in shown
        assert "***" in shown
    client = RRQClient(config={"redis_dsn": f"redis://:{PASSWORD}@h:1/0"})
    assert PASSWORD not in repr(client.config)


@pytest.mark.parametrize(
    "dsn",
    [
        f"redis://:{PASSWORD}@host:notaport/0",
        f"redis://:{PASSWORD}@host:1/0?socket_timeout={PASSWORD}",
        f"unix://:{PASSWORD}@/x.sock?db={PASSWORD}",
        f"bogus://:{PASSWORD}@x",
        f"redis://:{PASSWORD}@[::1/0",
    ],
)
def test_an_invalid_dsn_error_shows_no_password(dsn: str) -> None:
    client = RRQClient(config={"redis_dsn": dsn})
    with pytest.raises(ConfigError) as info:
        _ = client.store
    shown = "".join(traceback.format_exception(info.value))
    assert PASSWORD not in shown
    assert "is not a valid Redis DSN" in shown


async def test_a_connection_error_shows_no_password(tmp_path: Path) -> None:
    for dsn in (
        f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0",
        f"unix://:{PASSWORD}@{tmp_path / 'missing.sock'}?db=0",
        f"redis+unix://{tmp_path / 'missing.sock'}?pass={PASSWORD}",
    ):
        async with RRQClient(config={"redis_dsn": dsn}) as client:
            with pytest.raises(Exception) as info:  # noqa: PT011 - redis-py's own type
                await client.get_job_status("x")
        shown = "".join(traceback.format_exception(info.value))
        assert PASSWORD not in shown


def test_escape_covers_c0_del_c1_and_bidi() -> None:
    assert escape("plain café ☕") == "plain café ☕"
    assert (
        escape("x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m")
        == "x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m"
    )
    assert escape("a\rb\tc\x00d\x7f\x85\x9b") == "a\\rb\\tc\\u{0}d\\u{7f}\\u{85}\\u{9b}"
    assert escape("\u202e\u2066\u2069\u2028") == "\\u{202e}\\u{2066}\\u{2069}\\u{2028}"


def test_the_runner_log_escapes_job_text() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    runner_log.addHandler(handler)
    level = runner_log.level
    runner_log.setLevel(logging.INFO)
    try:
        forged = "x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m\u202e"
        runner_log.info("cancelling job %s attempt %d (%s)", forged, 1, forged)
    finally:
        runner_log.removeHandler(handler)
        runner_log.setLevel(level)
    out = stream.getvalue()
    assert out.count("\n") == 1, out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "cancelling job x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m\\u{202e}" in out


async def test_a_runner_gets_no_redis_credential(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", tcp=True, extra_args=("--requirepass", PASSWORD))
    with server:
        dsn = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        config = write_config(tmp_path, dsn, free_port())
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace("fixture_handlers:settings", "fixture_env_handlers:settings"),
            encoding="utf-8",
        )
        env = python_env({"RRQ_REDIS_DSN": dsn, "REDIS_URL": dsn, "KEPT_SETTING": "kept"})
        orchestrator = Orchestrator(find_orchestrator_binary(), config, cwd=tmp_path, env=env)
        with orchestrator:
            orchestrator.wait_for_runners()
            async with RRQClient(config={"redis_dsn": dsn}) as client:
                job_id = await client.enqueue("environ", {"queue_name": "secrets"})
                result = await client.wait_for_result(job_id, timeout=WAIT)
            assert orchestrator.log is not None
            log_text = orchestrator.log.text()
        assert result.status is JobStatus.COMPLETED, result
        environ = result.result
        assert isinstance(environ, dict)
        assert environ.get("KEPT_SETTING") == "kept"  # the rest is inherited
        assert "RRQ_REDIS_DSN" not in environ
        assert "REDIS_URL" not in environ
        leaked = [k for k, v in environ.items() if PASSWORD in v]
        assert leaked == []
        assert "rrq orchestrator ready" in log_text
        assert PASSWORD not in log_text
