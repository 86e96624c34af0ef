"""The conformance producer fixture (conformance-tests/README.md) for the Python client.

Reads one JSON request on stdin, makes one call on ``rrq.client.RRQClient``,
prints one JSON object on stdout and exits 0, also when the call raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any

from rrq import _tracing
from rrq.client import RRQClient
from rrq.execution import ExecutionRequest

METHODS = (
    "enqueue",
    "enqueue_many",
    "enqueue_with_unique_key",
    "enqueue_with_rate_limit",
    "enqueue_with_debounce",
)


class _FixedSpan:
    def __init__(self, traceparent: str) -> None:
        self._carrier = {"traceparent": traceparent}

    @property
    def carrier(self) -> Mapping[str, str]:
        return self._carrier

    def set_job_id(self, job_id: str) -> None:
        pass


class _FixedTraceParent:
    """rrq's tracing hook (what rrq.integrations.otel installs), storing a given traceparent."""

    def __init__(self, traceparent: str) -> None:
        self._traceparent = traceparent

    @contextmanager
    def _span(self) -> Iterator[_tracing.EnqueueSpan]:
        yield _FixedSpan(self._traceparent)

    def enqueue_span(
        self, function_name: str, queue_name: str, job_id: str
    ) -> AbstractContextManager[_tracing.EnqueueSpan]:
        return self._span()

    def execution_span(self, request: ExecutionRequest) -> AbstractContextManager[object]:
        raise NotImplementedError  # a producer never executes


async def call(request: Mapping[str, Any]) -> dict[str, Any]:
    method = request["method"]
    if method not in METHODS:
        return {"error": {"type": "UnknownMethod", "message": f"unknown method {method!r}"}}
    options = dict(request.get("options") or {})
    trace_parent = options.pop("trace_parent", None)
    if trace_parent:
        _tracing.set_tracer(_FixedTraceParent(trace_parent))
    if isinstance(options.get("defer_until"), str):
        options["defer_until"] = datetime.fromisoformat(options["defer_until"])
    async with RRQClient(config={"redis_dsn": request["redis_dsn"]}) as client:
        job_id: str | None
        try:
            if method == "enqueue_many":
                ids = await client.enqueue_many(
                    request["function_name"], request["params_list"], options
                )
                return {"job_ids": ids}
            if method == "enqueue":
                job_id = await client.enqueue(request["function_name"], options)
            elif method == "enqueue_with_unique_key":
                job_id = await client.enqueue_with_unique_key(
                    request["function_name"], request["unique_key"], options
                )
            elif method == "enqueue_with_rate_limit":
                job_id = await client.enqueue_with_rate_limit(request["function_name"], options)
            else:
                job_id = await client.enqueue_with_debounce(request["function_name"], options)
        except Exception as exc:  # noqa: BLE001 - every error is reported, typed
            return {"error": {"type": type(exc).__name__, "message": str(exc)}}
    return {"job_id": job_id}


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(asyncio.run(call(request)), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
