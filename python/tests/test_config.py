"""Configuration loading, DSN forms and the small public types."""

from __future__ import annotations

from pathlib import Path

import pytest

from rrq.client import RRQClient
from rrq.config import ClientConfig, load_config
from rrq.exceptions import ConfigError
from rrq.job import JobStatus
from rrq.testing import RedisServer

README_TOML = """\
[rrq]
redis_dsn = "redis://localhost:6379/0"
default_runner_name = "python"

[rrq.runners.python]
type = "socket"
cmd = ["rrq-runner", "--settings", "myapp.runner:settings"]
tcp_socket = "127.0.0.1:9000"
"""


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config() == ClientConfig()
    assert ClientConfig().max_payload_bytes == 1024 * 1024


def test_readme_file_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rrq.toml"
    path.write_text(README_TOML)
    assert load_config(str(path)).redis_dsn == "redis://localhost:6379/0"
    monkeypatch.setenv("RRQ_REDIS_DSN", "redis://example:1/2")
    assert load_config(str(path)).redis_dsn == "redis://example:1/2"
    assert load_config(config={"redis_dsn": "redis://x/0"}).redis_dsn == "redis://example:1/2"


def test_rrq_toml_in_cwd_and_rrq_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rrq.toml").write_text('[rrq]\nredis_dsn = "redis://cwd/0"\n')
    assert load_config().redis_dsn == "redis://cwd/0"
    other = tmp_path / "other.toml"
    other.write_text('[rrq]\nredis_dsn = "redis://env/0"\ndefault_queue_name = "q"\n')
    monkeypatch.setenv("RRQ_CONFIG", str(other))
    config = load_config()
    assert (config.redis_dsn, config.default_queue_name) == ("redis://env/0", "q")


def test_mapping_forms() -> None:
    flat = load_config(config={"redis_dsn": "redis://a/0", "default_max_retries": 7})
    nested = load_config(config={"rrq": {"redis_dsn": "redis://a/0", "default_max_retries": 7}})
    assert flat == nested
    assert flat.default_max_retries == 7


@pytest.mark.parametrize(
    "table",
    [
        {"redis_dsn": 5},
        {"redis_dsn": ""},
        {"default_max_retries": -1},
        {"max_payload_bytes": "big"},
        {"max_payload_bytes": 0},
        {"default_job_timeout_seconds": "soon"},
    ],
)
def test_invalid_values(table: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(table))):
        load_config(config=table)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[rrq\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(str(broken))
    with pytest.raises(ConfigError):
        RRQClient(config_path=str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("scheme", ["unix://", "redis+unix://"])
async def test_unix_socket_dsn(tmp_path: Path, scheme: str, queue: str) -> None:
    with RedisServer(tmp_path / "redis") as server:
        async with RRQClient(config={"redis_dsn": f"{scheme}{server.socket_path}"}) as client:
            job_id = await client.enqueue("f", {"queue_name": queue})
            status = await client.get_job_status(job_id)
    assert status is not None
    assert status.status is JobStatus.PENDING


def test_job_status_reads_well() -> None:
    assert f"Status: {JobStatus.COMPLETED}" == "Status: completed"
    assert str(JobStatus.FAILED) == "failed"
    assert JobStatus.CANCELLED.is_terminal
    assert not JobStatus.RETRYING.is_terminal
