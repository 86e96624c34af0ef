"""The Python runner runtime.

A runner process dials the orchestrator (``RRQ_ORCHESTRATOR_ADDR``), opens one
``RunnerService.Connect`` stream (docs/protocol.md) and runs the handlers of
its :class:`~rrq.registry.Registry`: async handlers on the event loop, plain
functions in a thread pool sized ``max_in_flight``. Handlers receive an
:class:`ExecutionRequest` and steer their job by returning a JSON value, or by
raising :class:`RetryJob` or :class:`~rrq.exceptions.FatalJobError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import random
import signal
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal

import grpc.aio

from rrq import _tracing, _wire
from rrq._log_escape import EscapingFilter
from rrq.exceptions import FatalJobError, RetryJob
from rrq.execution import ExecutionContext, ExecutionRequest
from rrq.registry import Handler, Registry
from rrq.runner_settings import PythonRunnerSettings

__all__ = [
    "HANDLER_THREAD_PREFIX",
    "ExecutionContext",
    "ExecutionRequest",
    "RetryJob",
    "Runner",
    "RunnerConfigError",
]

log = logging.getLogger("rrq.runner")
# Job ids, cancel reasons and stream errors carry producers' and handlers'
# text: escape every record of this logger (see _log_escape).
log.addFilter(EscapingFilter())

ADDR_ENV: Final = "RRQ_ORCHESTRATOR_ADDR"
NAME_ENV: Final = "RRQ_RUNNER_NAME"
TOKEN_ENV: Final = "RRQ_RUNNER_TOKEN"  # noqa: S105 - a variable name, not a secret
SPAWNED_ENV: Final = "RRQ_RUNNER_SPAWNED"
MAX_IN_FLIGHT_ENV: Final = "RRQ_RUNNER_MAX_IN_FLIGHT"
HANDLER_THREAD_PREFIX: Final = "rrq-handler"

_DEFAULT_HEARTBEAT_MS: Final = 5_000
_CONNECT_TIMEOUT: Final = 5.0
_BACKOFF_INITIAL: Final = 0.1
_BACKOFF_MAX: Final = 5.0
# A spawned runner that never got a stream gives up after this many tries;
# its orchestrator then starts a new process.
_SPAWNED_CONNECT_ATTEMPTS: Final = 10
_FINISH_SENDING_TIMEOUT: Final = 2.0


class RunnerConfigError(Exception):
    """The runner cannot start: no orchestrator address or a bad environment value."""


@dataclass(eq=False)
class _Execution:
    """One execution this runner holds until its outcome is sent."""

    job_id: str
    attempt: int
    task: asyncio.Task[_wire.Outcome] | None = None
    # Set by a cancel: the outcome becomes cancelled/timed_out.
    cancelled: Literal["timeout", "cancel"] | None = None
    # Set when the stream is gone or the runner stops: no outcome is sent.
    abandoned: bool = False
    in_thread: bool = False


def _is_async(handler: Handler) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    return call is not None and inspect.iscoroutinefunction(call)


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        return f"<{type(exc).__name__} whose str() raised>"


def _retry_delay_ms(defer_seconds: float | None) -> tuple[int | None, str]:
    """(delay in ms or None for the backoff, "") or (None, why it is invalid).

    A negative delay means "now"; NaN, an infinity or more than 3,650 days
    (the orchestrator's limit) is a handler bug reported as a failure.
    """
    if defer_seconds is None:
        return None, ""
    try:
        delay = float(defer_seconds)
    except (TypeError, ValueError, OverflowError):
        return None, f"RetryJob defer_seconds must be a number, got {defer_seconds!r}"
    limit_s = _wire.MAX_RETRY_DELAY_MS // 1000
    if not math.isfinite(delay) or delay > limit_s:
        return None, (
            f"RetryJob defer_seconds must be a finite number of seconds of at most "
            f"{limit_s} (3,650 days), got {defer_seconds!r}"
        )
    return max(0, round(delay * 1000)), ""


def _encode_result(value: object, max_bytes: int) -> tuple[str, str]:
    """(result_json, "") or ("", failure kind) for a handler's return value."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        return _describe(exc), "RESULT_NOT_SERIALIZABLE"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (e.g. a file name read with surrogateescape): the
        # result cannot travel as UTF-8, and changing the data is not ours to do.
        bad = sum(1 for c in text if "\ud800" <= c <= "\udfff")
        return (
            f"result holds {bad} character(s) that cannot be encoded as UTF-8 "
            "(lone surrogates, as from a file name read with surrogateescape)",
            "RESULT_NOT_SERIALIZABLE",
        )
    if max_bytes > 0 and size > max_bytes:
        return f"result is {size} bytes of JSON, the limit is {max_bytes}", "RESULT_TOO_LARGE"
    return text, ""


class _Session:
    """One connected stream: executes requests and sends their outcomes."""

    def __init__(self, runner: Runner, stream: _wire.Stream, ack: _wire.HelloAck) -> None:
        self._runner = runner
        self._stream = stream
        self._ack = ack
        self._running: dict[tuple[str, int], _Execution] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending: list[_wire.Outcome] = []
        self._flush_scheduled = False
        self._accepting = True

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeats(), name="rrq-heartbeat")
        stopper = asyncio.create_task(self._stop_when_asked(), name="rrq-stopper")
        try:
            while True:
                message = await self._stream.read()
                if isinstance(message, list):
                    for execute in message:
                        self._start(execute)
                elif isinstance(message, _wire.Cancel):
                    self._cancel(message)
                else:
                    log.warning("ignoring a second hello_ack")
        except _wire.StreamEnded as exc:
            log.info("stream ended: %s", exc)
        finally:
            heartbeat.cancel()
            stopper.cancel()
            for execution in list(self._running.values()):
                execution.abandoned = True
                if execution.task is not None and not execution.in_thread:
                    execution.task.cancel()
            self._stream.cancel()

    # --- executions ---------------------------------------------------------

    def _start(self, execute: _wire.Execute) -> None:
        if not self._accepting:
            # Stopping: the job goes back to the queue when the stream ends.
            log.info("not starting job %s (attempt %d): stopping", execute.job_id, execute.attempt)
            return
        key = (execute.job_id, execute.attempt)
        if key in self._running:
            log.warning("job %s attempt %d is already running here", *key)
            return
        execution = _Execution(execute.job_id, execute.attempt)
        task = asyncio.create_task(
            self._execute(execution, execute), name=f"rrq-job-{execute.job_id}"
        )
        execution.task = task
        self._running[key] = execution
        self._idle.clear()
        task.add_done_callback(functools.partial(self._finished, execution))

    def _cancel(self, cancel: _wire.Cancel) -> None:
        execution = self._running.get((cancel.job_id, cancel.attempt))
        if execution is None:
            return  # finished already, or another attempt: ignore
        if execution.cancelled is not None:
            return
        execution.cancelled = "timeout" if cancel.timeout else "cancel"
        log.info("cancelling job %s attempt %d (%s)", cancel.job_id, cancel.attempt, cancel.reason)
        # A handler in a thread cannot be interrupted: its outcome goes out when
        # it returns, and the orchestrator kills this process after its grace.
        if execution.task is not None and not execution.in_thread:
            execution.task.cancel()

    def _outcome(
        self,
        execution: _Execution,
        kind: Literal["success", "retry", "failure", "cancelled", "timed_out"],
        **fields: Any,  # noqa: ANN401 - forwarded to Outcome as is
    ) -> _wire.Outcome:
        return _wire.Outcome(execution.job_id, execution.attempt, kind, **fields)

    def _cancelled_outcome(self, execution: _Execution) -> _wire.Outcome:
        kind: Literal["cancelled", "timed_out"] = (
            "timed_out" if execution.cancelled == "timeout" else "cancelled"
        )
        return self._outcome(execution, kind)

    async def _execute(self, execution: _Execution, execute: _wire.Execute) -> _wire.Outcome:
        request = execute.request
        if request is None:
            return self._outcome(
                execution,
                "failure",
                failure_kind="INVALID_PARAMS",
                error_type="InvalidParams",
                message=execute.params_error,
            )
        handler = self._runner.registry.get(execute.function_name)
        if handler is None:
            names = ", ".join(self._runner.registry.names())
            return self._outcome(
                execution,
                "failure",
                failure_kind="UNKNOWN_HANDLER",
                error_type="UnknownFunction",
                message=f"no handler named {execute.function_name!r} (this runner has: {names})",
            )
        tracer = _tracing.execution_tracer()
        span = tracer.execution_span(request) if tracer is not None else contextlib.nullcontext()
        try:
            with span:
                value = await self._call(execution, handler, request)
        except RetryJob as exc:
            if execution.cancelled is not None:
                return self._cancelled_outcome(execution)
            delay_ms, invalid = _retry_delay_ms(exc.defer_seconds)
            if invalid:
                return self._outcome(
                    execution,
                    "failure",
                    failure_kind="HANDLER_ERROR",
                    error_type="InvalidRetryDelay",
                    message=f"{invalid} (retry message: {exc.message or _describe(exc)})",
                    traceback=traceback.format_exc(),
                )
            return self._outcome(
                execution, "retry", delay_ms=delay_ms, message=exc.message or _describe(exc)
            )
        except FatalJobError as exc:
            if execution.cancelled is not None:
                return self._cancelled_outcome(execution)
            return self._outcome(
                execution,
                "failure",
                failure_kind="FATAL",
                error_type=type(exc).__name__,
                message=_describe(exc),
                traceback=traceback.format_exc(),
            )
        except asyncio.CancelledError:
            if execution.cancelled is not None and not execution.abandoned:
                return self._cancelled_outcome(execution)
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001 - any handler error is an outcome
            if execution.cancelled is not None:
                return self._cancelled_outcome(execution)
            return self._outcome(
                execution,
                "failure",
                failure_kind="HANDLER_ERROR",
                error_type=type(exc).__name__,
                message=_describe(exc),
                traceback=traceback.format_exc(),
            )
        if execution.cancelled is not None:
            return self._cancelled_outcome(execution)
        text, failure = _encode_result(value, self._ack.max_result_bytes)
        if failure:
            return self._outcome(
                execution,
                "failure",
                failure_kind=failure,
                error_type=failure.title().replace("_", ""),
                message=text,
            )
        return self._outcome(execution, "success", result_json=text)

    async def _call(
        self, execution: _Execution, handler: Handler, request: ExecutionRequest
    ) -> object:
        if _is_async(handler):
            return await handler(request)
        execution.in_thread = True
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the thread sees the current span
        value = await loop.run_in_executor(
            self._runner.pool, functools.partial(context.run, handler, request)
        )
        execution.in_thread = False
        if inspect.isawaitable(value):
            value = await value
        return value

    def _finished(self, execution: _Execution, task: asyncio.Task[_wire.Outcome]) -> None:
        key = (execution.job_id, execution.attempt)
        if self._running.get(key) is execution:
            del self._running[key]
        if not self._running:
            self._idle.set()
        if execution.abandoned or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a BaseException other than cancellation
            try:
                tb = "".join(traceback.format_exception(exc))
            except Exception:  # noqa: BLE001 - the outcome matters more than its traceback
                tb = ""
            outcome = self._outcome(
                execution,
                "failure",
                failure_kind="HANDLER_ERROR",
                error_type=type(exc).__name__,
                message=_describe(exc),
                traceback=tb,
            )
        else:
            outcome = task.result()
        self._pending.append(outcome)
        if not self._flush_scheduled:
            # Everything that finishes in this loop iteration goes in one batch.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            batch, self._pending = self._pending, []
            self._stream.send_outcomes(batch, self._ack.max_error_bytes)

    # --- liveness and shutdown ------------------------------------------------

    async def _heartbeats(self) -> None:
        interval_ms = self._ack.heartbeat_interval_ms or _DEFAULT_HEARTBEAT_MS
        while True:
            await asyncio.sleep(interval_ms / 1000)
            self._stream.send_heartbeat(len(self._running))

    async def _stop_when_asked(self) -> None:
        await self._runner.stopping.wait()
        self._accepting = False
        grace = self._runner.settings.shutdown_grace_seconds
        log.info("stopping: %d job(s) running, grace %.1fs", len(self._running), grace)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("stopping: abandoning %d job(s) still running", len(self._running))
            for execution in list(self._running.values()):
                execution.abandoned = True
                if execution.task is not None and not execution.in_thread:
                    execution.task.cancel()
        self._flush()
        try:
            await asyncio.wait_for(self._stream.finish_sending(), timeout=_FINISH_SENDING_TIMEOUT)
        except TimeoutError:
            log.warning("stopping: could not send the last outcomes in time")
        self._stream.cancel()


class Runner:
    """Runs the handlers of ``settings.registry`` for one orchestrator.

    ``addr`` overrides ``settings.orchestrator_addr`` and ``$RRQ_ORCHESTRATOR_ADDR``.
    """

    def __init__(
        self,
        settings: PythonRunnerSettings,
        *,
        addr: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.settings = settings
        self.registry: Registry = settings.registry
        resolved = addr or settings.orchestrator_addr or env.get(ADDR_ENV)
        if not resolved:
            raise RunnerConfigError(
                f"no orchestrator address: set {ADDR_ENV}, pass --connect HOST:PORT "
                "or PythonRunnerSettings(orchestrator_addr=...)"
            )
        self.addr: str = resolved
        self.runner_name = env.get(NAME_ENV) or "python"
        # The secret the hello presents: a spawned runner's own spawn token,
        # or an external runner's configured token (rrq.runners.<name>.token_env).
        self.token = env.get(TOKEN_ENV, "")
        # Set by the orchestrator for the processes it starts: such a runner
        # exits when its stream ends, an external one reconnects.
        self.spawned = env.get(SPAWNED_ENV) == "1"
        if settings.max_in_flight is not None:
            self.max_in_flight = settings.max_in_flight
        else:
            raw = env.get(MAX_IN_FLIGHT_ENV) or "1"
            try:
                self.max_in_flight = int(raw)
            except ValueError:
                raise RunnerConfigError(
                    f"{MAX_IN_FLIGHT_ENV} must be an integer, got {raw!r}"
                ) from None
            if self.max_in_flight < 1:
                raise RunnerConfigError(f"{MAX_IN_FLIGHT_ENV} must be at least 1, got {raw!r}")
        self.pool = ThreadPoolExecutor(
            max_workers=self.max_in_flight, thread_name_prefix=HANDLER_THREAD_PREFIX
        )
        self._stopping: asyncio.Event | None = None

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the runner was asked to stop (SIGTERM, SIGINT or :meth:`stop`)."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def stop(self) -> None:
        """Stops accepting jobs, lets running ones finish (within the grace) and exits."""
        self.stopping.set()

    async def _session(self) -> Literal["ended", "rejected", "unreachable"]:
        # Over the orchestrator's unix socket (``unix:/path``) grpc would send
        # the path as the HTTP/2 authority, which the server refuses: name a
        # plain host instead.
        options = [("grpc.default_authority", "localhost")] if self.addr.startswith("unix:") else []
        channel = grpc.aio.insecure_channel(self.addr, options=options)
        try:
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=_CONNECT_TIMEOUT)
            except TimeoutError:
                log.warning("orchestrator at %s is not reachable", self.addr)
                return "unreachable"
            stream = _wire.Stream(channel)
            stream.send_hello(
                runner_name=self.runner_name,
                handlers=self.registry.names(),
                max_in_flight=self.max_in_flight,
                pid=os.getpid(),
                process_token=self.token,
            )
            try:
                first = await stream.read()
            except _wire.StreamEnded as exc:
                stream.cancel()
                log.error("the orchestrator rejected the hello: %s", exc)  # noqa: TRY400
                return "rejected"
            if not isinstance(first, _wire.HelloAck):
                stream.cancel()
                log.error("the orchestrator's first message was not a hello_ack")
                return "rejected"
            log.info(
                "connected to orchestrator %s at %s as runner %r (%d handler(s), max_in_flight %d)",
                first.orchestrator_id,
                self.addr,
                self.runner_name,
                len(self.registry),
                self.max_in_flight,
            )
            await _Session(self, stream, first).run()
            return "ended"
        finally:
            await channel.close(None)

    async def run(self) -> int:
        """Serves until stopped (or, for a spawned runner, until its stream ends).

        Returns the process exit code: 0 after a stream or a stop, 1 when the
        orchestrator rejected the hello or stayed unreachable.
        """
        loop = asyncio.get_running_loop()
        # A spawned runner shares the terminal's process group with its
        # orchestrator: on Ctrl-C the orchestrator drains and then stops its
        # runners, so the runner must not abandon its jobs on SIGINT itself.
        signals = (signal.SIGTERM,) if self.spawned else (signal.SIGTERM, signal.SIGINT)
        if self.spawned:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in signals:
            loop.add_signal_handler(signum, self.stop)
        delay = _BACKOFF_INITIAL
        failures = 0
        try:
            while not self.stopping.is_set():
                result = await self._session()
                if result == "ended":
                    failures = 0
                    delay = _BACKOFF_INITIAL
                    if self.spawned:
                        return 0  # spawned: the orchestrator's replacement spawns its own
                else:
                    failures += 1
                    if self.spawned and (
                        result == "rejected" or failures >= _SPAWNED_CONNECT_ATTEMPTS
                    ):
                        return 1
                if self.stopping.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.stopping.wait(), timeout=delay * random.uniform(0.5, 1.5)
                    )
                delay = min(delay * 2, _BACKOFF_MAX)
            return 0
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            self.pool.shutdown(wait=False, cancel_futures=True)
