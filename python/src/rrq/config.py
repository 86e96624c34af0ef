"""Reads the ``[rrq]`` table of ``rrq.toml`` (see docs/configuration.md).

The client needs only a few keys; the orchestrator validates the whole file.
Keys the client does not use (runners, routes, cron jobs, timings) are
accepted as they are, so one file serves both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrq._dsn import redact_dsn
from rrq.exceptions import ConfigError, InvalidOptionError
from rrq.store import check_key_prefix

__all__ = ["ClientConfig", "load_config"]

CONFIG_ENV = "RRQ_CONFIG"
REDIS_DSN_ENV = "RRQ_REDIS_DSN"
DEFAULT_CONFIG_FILE = "rrq.toml"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The settings a producer uses, with the documented defaults."""

    redis_dsn: str = "redis://localhost:6379/0"
    default_queue_name: str = "default"
    default_max_retries: int = 3
    max_payload_bytes: int = 1024 * 1024
    default_result_ttl_seconds: float = 86_400.0
    default_unique_job_lock_ttl_seconds: float = 21_600.0
    key_prefix: str = "rrq"

    def __repr__(self) -> str:
        # The DSN may hold a password: shown redacted, even in a repr.
        shown = (
            (f.name, redact_dsn(self.redis_dsn) if f.name == "redis_dsn" else getattr(self, f.name))
            for f in dataclasses.fields(self)
        )
        return f"ClientConfig({', '.join(f'{name}={value!r}' for name, value in shown)})"


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"rrq.{key} must be a finite number, got {value!r}")
    return float(value)


def _positive(key: str, value: object) -> float:
    number = _number(key, value)
    if number < 0.001:
        raise ConfigError(f"rrq.{key} must be at least 0.001 seconds, got {value!r}")
    return number


def _nonneg_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"rrq.{key} must be a non-negative integer, got {value!r}")
    return value


def _nonempty_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"rrq.{key} must be a non-empty string, got {value!r}")
    return value


def _from_table(table: Mapping[str, Any]) -> ClientConfig:
    defaults = ClientConfig()
    dsn = _nonempty_str("redis_dsn", table.get("redis_dsn", defaults.redis_dsn))
    queue = _nonempty_str(
        "default_queue_name", table.get("default_queue_name", defaults.default_queue_name)
    )
    retries = _nonneg_int(
        "default_max_retries", table.get("default_max_retries", defaults.default_max_retries)
    )
    payload = _nonneg_int(
        "max_payload_bytes", table.get("max_payload_bytes", defaults.max_payload_bytes)
    )
    if payload == 0:
        raise ConfigError("rrq.max_payload_bytes must be at least 1")
    if "default_job_timeout_seconds" in table:
        _number("default_job_timeout_seconds", table["default_job_timeout_seconds"])
    result_ttl = _positive(
        "default_result_ttl_seconds",
        table.get("default_result_ttl_seconds", defaults.default_result_ttl_seconds),
    )
    unique_ttl = _positive(
        "default_unique_job_lock_ttl_seconds",
        table.get(
            "default_unique_job_lock_ttl_seconds", defaults.default_unique_job_lock_ttl_seconds
        ),
    )
    prefix = table.get("key_prefix", defaults.key_prefix)
    try:
        check_key_prefix(prefix)
    except InvalidOptionError as exc:
        raise ConfigError(f"rrq.{exc}") from None
    env_dsn = os.environ.get(REDIS_DSN_ENV)
    if env_dsn:
        dsn = env_dsn
    return ClientConfig(
        redis_dsn=dsn,
        default_queue_name=queue,
        default_max_retries=retries,
        max_payload_bytes=payload,
        default_result_ttl_seconds=result_ttl,
        default_unique_job_lock_ttl_seconds=unique_ttl,
        key_prefix=prefix,
    )


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
    table = data.get("rrq", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[rrq] in {str(path)!r} must be a table")
    return table


def load_config(
    config_path: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> ClientConfig:
    """Builds the client configuration.

    ``config`` may hold the ``[rrq]`` table's keys directly or as ``{"rrq": {...}}``.
    Without ``config`` or ``config_path``: ``$RRQ_CONFIG``, else ``./rrq.toml``
    when present, else the defaults. ``$RRQ_REDIS_DSN`` overrides ``redis_dsn``.
    """
    if config is not None and config_path is not None:
        raise ConfigError("pass either config_path or config, not both")
    if config is not None:
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
        table = config.get("rrq", config)
        if not isinstance(table, Mapping):
            raise ConfigError("config['rrq'] must be a mapping")
        return _from_table(table)
    if config_path is not None:
        return _from_table(_read_file(Path(config_path)))
    env_path = os.environ.get(CONFIG_ENV)
    if env_path:
        return _from_table(_read_file(Path(env_path)))
    default = Path(DEFAULT_CONFIG_FILE)
    if default.is_file():
        return _from_table(_read_file(default))
    return _from_table({})
