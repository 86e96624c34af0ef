"""The one boundary between generated protobuf types (``rrq.v1``) and user types.

Nothing else in the package reads or builds a generated message: the job
record (a Redis hash whose fields are ``rrq.v1.Job``'s) becomes a
:class:`~rrq.job.JobResult` here, and the runner stream's messages become
plain dataclasses here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import grpc.aio
from google.protobuf.descriptor import FieldDescriptor

from rrq import _error_text
from rrq._limits import MAX_DURATION_MS
from rrq.exceptions import InvalidParamsError
from rrq.execution import ExecutionContext, ExecutionRequest
from rrq.job import AttemptError, JobResult, JobStatus
from rrq.v1 import job_pb2, runner_pb2, runner_pb2_grpc

__all__ = [
    "MAX_RETRY_DELAY_MS",
    "PROTOCOL_VERSION",
    "Cancel",
    "Execute",
    "FailureKind",
    "HelloAck",
    "Outcome",
    "Stream",
    "StreamEnded",
    "decode_orchestrator_message",
    "job_result_from_hash",
    "job_status_from_number",
]

PROTOCOL_VERSION = 1

# --- job records -------------------------------------------------------------

_STATUS_FROM_NUMBER: dict[int, JobStatus] = {
    job_pb2.JOB_STATUS_PENDING: JobStatus.PENDING,
    job_pb2.JOB_STATUS_ACTIVE: JobStatus.ACTIVE,
    job_pb2.JOB_STATUS_RETRYING: JobStatus.RETRYING,
    job_pb2.JOB_STATUS_COMPLETED: JobStatus.COMPLETED,
    job_pb2.JOB_STATUS_FAILED: JobStatus.FAILED,
    job_pb2.JOB_STATUS_CANCELLED: JobStatus.CANCELLED,
}


def job_status_from_number(number: int) -> JobStatus:
    """Maps a stored ``JobStatus`` number to :class:`JobStatus`."""
    try:
        return _STATUS_FROM_NUMBER[number]
    except KeyError:
        raise ValueError(f"unknown job status number {number}") from None


def _job_from_hash(fields: Mapping[bytes, bytes]) -> job_pb2.Job:
    """Reads a job hash into ``rrq.v1.Job``; unknown hash fields are ignored."""
    job = job_pb2.Job()
    by_name = job_pb2.Job.DESCRIPTOR.fields_by_name
    for raw_name, raw_value in fields.items():
        name = raw_name.decode()
        descriptor = by_name.get(name)
        if descriptor is None:
            continue
        text = raw_value.decode()
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            setattr(job, name, text)
        elif descriptor.type == FieldDescriptor.TYPE_BOOL:  # stored as 1 / 0
            setattr(job, name, text not in ("", "0", "false"))
        else:  # int64 and enum fields are stored as decimal integers
            setattr(job, name, int(text))
    if not job.run_at_ms:  # not stored when the job was due at once
        job.run_at_ms = job.enqueued_at_ms
    return job


def _datetime_from_ms(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms > 0 else None


def _errors_from_json(errors_json: str) -> list[AttemptError]:
    """Parses ``errors_json``; entries that are not objects are skipped."""
    if not errors_json:
        return []
    try:
        entries = json.loads(errors_json)
    except ValueError:
        return []
    if not isinstance(entries, list):  # cjson encodes an empty table as {}
        return []
    errors = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        at_ms = entry.get("at_ms", 0)
        errors.append(
            AttemptError(
                attempt=int(entry.get("attempt", 0)),
                error_type=str(entry.get("error_type", "")),
                message=str(entry.get("message", "")),
                traceback=str(entry.get("traceback", "")),
                at=datetime.fromtimestamp(
                    (at_ms if isinstance(at_ms, int | float) else 0) / 1000, tz=UTC
                ),
            )
        )
    return errors


def job_result_from_hash(fields: Mapping[bytes, bytes], job_id: str, queue: str) -> JobResult:
    """Converts a job hash (as returned by HGETALL) into a :class:`JobResult`.

    The id and the queue are in the record's key, not in the hash (the hash
    stays small); the caller that read the key passes them.
    """
    job = _job_from_hash(fields)
    job.id = job.id or job_id
    job.queue_name = job.queue_name or queue
    result: Any = None
    if job.result_json:
        try:
            result = json.loads(job.result_json)
        except ValueError:  # written by a foreign producer; show it as it is
            result = job.result_json
    return JobResult(
        job_id=job.id,
        status=job_status_from_number(job.status),
        function_name=job.function_name,
        queue_name=job.queue_name,
        attempt=job.attempt,
        max_retries=job.max_retries,
        result=result,
        last_error=job.last_error,
        last_error_type=job.last_error_type,
        enqueued_at=_datetime_from_ms(job.enqueued_at_ms),
        finished_at=_datetime_from_ms(job.finished_at_ms),
        errors=_errors_from_json(job.errors_json),
        unique_key=job.unique_key,
        rate_limit_key=job.rate_limit_key,
        debounce_key=job.debounce_key,
        cancel_requested=job.cancel_requested,
        run_at=_datetime_from_ms(job.run_at_ms),
        started_at=_datetime_from_ms(job.started_at_ms),
    )


# --- runner stream ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloAck:
    """The orchestrator's answer to the hello."""

    orchestrator_id: str
    heartbeat_interval_ms: int
    max_result_bytes: int
    # Cap on each error text sent (0: none); see _error_text.
    max_error_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Execute:
    """One execution from an ``execute`` batch.

    ``request`` is None when the params could not be decoded to a JSON object;
    ``params_error`` then says why.
    """

    job_id: str
    attempt: int
    function_name: str
    request: ExecutionRequest | None
    params_error: str


CancelReason = Literal["unspecified", "timeout", "requested", "shutdown", "lease_lost"]

_CANCEL_REASON: dict[int, CancelReason] = {
    runner_pb2.CANCEL_REASON_UNSPECIFIED: "unspecified",
    runner_pb2.CANCEL_REASON_TIMEOUT: "timeout",
    runner_pb2.CANCEL_REASON_REQUESTED: "requested",
    runner_pb2.CANCEL_REASON_SHUTDOWN: "shutdown",
    runner_pb2.CANCEL_REASON_LEASE_LOST: "lease_lost",
}


@dataclass(frozen=True, slots=True)
class Cancel:
    """A cancel request; ``timeout`` is True when the reason is the deadline.

    Every reason cancels the handler; only a timeout answers ``timed_out``,
    every other reason (requested by a user, shutdown, lease lost, unknown)
    answers ``cancelled``.
    """

    job_id: str
    attempt: int
    timeout: bool
    reason: CancelReason = "unspecified"


class StreamEnded(Exception):  # noqa: N818 - a signal, not an error condition
    """The orchestrator closed the stream or sent something unexpected."""


FailureKind = Literal[
    "HANDLER_ERROR",
    "UNKNOWN_HANDLER",
    "INVALID_PARAMS",
    "RESULT_NOT_SERIALIZABLE",
    "RESULT_TOO_LARGE",
    "FATAL",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one execution ended; exactly one of the variants is set by ``kind``."""

    job_id: str
    attempt: int
    kind: Literal["success", "retry", "failure", "cancelled", "timed_out"]
    result_json: str = ""
    delay_ms: int | None = None
    message: str = ""
    failure_kind: FailureKind = "HANDLER_ERROR"
    error_type: str = ""
    traceback: str = ""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# One decoder for every job: json.loads(..., parse_constant=...) builds a new
# one per call, which cost as much as decoding a small params object.
_PARAMS_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _params_from_json(params_json: str) -> dict[str, Any]:
    try:
        params = _PARAMS_DECODER.decode(params_json) if params_json else {}
    except ValueError as exc:
        raise InvalidParamsError(f"params are not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidParamsError("params are nested too deeply to decode") from exc
    if not isinstance(params, dict):
        raise InvalidParamsError(f"params must be a JSON object, got {type(params).__name__}")
    return params


# The range of datetime (0001-01-01 .. 9999-12-31 23:59:59 UTC) in epoch ms.
_MIN_WIRE_MS = -62_135_596_800_000
_MAX_WIRE_MS = 253_402_300_799_000


def _datetime_from_wire_ms(ms: int) -> datetime:
    """Epoch ms from the orchestrator as a datetime, clamped to datetime's range.

    The values come from the job record (a deadline is the claim time plus the
    job's timeout), which may hold any int64; one out of range must not crash
    the runner.
    """
    return datetime.fromtimestamp(min(max(ms, _MIN_WIRE_MS), _MAX_WIRE_MS) / 1000, tz=UTC)


def _execute_from_wire(req: runner_pb2.ExecutionRequest) -> Execute:
    try:
        params = _params_from_json(req.params_json)
    except InvalidParamsError as exc:
        return Execute(req.job_id, req.attempt, req.function_name, None, str(exc))
    trace: dict[str, str] = {}
    if req.trace_parent:
        trace["traceparent"] = req.trace_parent
    if req.trace_state:
        trace["tracestate"] = req.trace_state
    context = ExecutionContext(
        attempt=req.attempt,
        queue_name=req.queue_name,
        enqueued_at=_datetime_from_wire_ms(req.enqueued_at_ms),
        deadline=_datetime_from_wire_ms(req.deadline_ms),
        max_retries=req.max_retries,
        trace_context=trace,
    )
    request = ExecutionRequest(
        job_id=req.job_id, function_name=req.function_name, params=params, context=context
    )
    return Execute(req.job_id, req.attempt, req.function_name, request, "")


def decode_orchestrator_message(
    message: runner_pb2.OrchestratorMessage,
) -> HelloAck | list[Execute] | Cancel:
    """Decodes one message from the orchestrator; raises StreamEnded on an empty one."""
    kind = message.WhichOneof("kind")
    if kind == "hello_ack":
        ack = message.hello_ack
        return HelloAck(
            ack.orchestrator_id,
            ack.heartbeat_interval_ms,
            ack.max_result_bytes,
            ack.max_error_bytes,
        )
    if kind == "execute":
        return [_execute_from_wire(req) for req in message.execute.requests]
    if kind == "cancel":
        cancel = message.cancel
        reason = _CANCEL_REASON.get(cancel.reason, "unspecified")
        return Cancel(cancel.job_id, cancel.attempt, reason == "timeout", reason)
    raise StreamEnded(f"unexpected orchestrator message kind {kind!r}")


_FAILURE_KIND: dict[str, runner_pb2.FailureKind.ValueType] = {
    "HANDLER_ERROR": runner_pb2.FAILURE_KIND_HANDLER_ERROR,
    "UNKNOWN_HANDLER": runner_pb2.FAILURE_KIND_UNKNOWN_HANDLER,
    "INVALID_PARAMS": runner_pb2.FAILURE_KIND_INVALID_PARAMS,
    "RESULT_NOT_SERIALIZABLE": runner_pb2.FAILURE_KIND_RESULT_NOT_SERIALIZABLE,
    "RESULT_TOO_LARGE": runner_pb2.FAILURE_KIND_RESULT_TOO_LARGE,
    "FATAL": runner_pb2.FAILURE_KIND_FATAL,
}


# Longest retry delay the orchestrator accepts (MAX_DURATION_MS, 3,650 days);
# docs/protocol.md.
MAX_RETRY_DELAY_MS = MAX_DURATION_MS
_MAX_ERROR_TYPE_BYTES = 256


def _error_texts(outcome: Outcome, max_error_bytes: int) -> tuple[str, str, str]:
    """(message, error_type, traceback) made valid UTF-8 and cut to the cap.

    Characters that cannot be encoded (lone surrogates) become U+FFFD and the
    message says how many; the note is kept whole by cutting before it.
    """
    message, bad = _error_text.replace_unencodable(outcome.message)
    error_type, bad_type = _error_text.replace_unencodable(outcome.error_type)
    traceback, bad_tb = _error_text.replace_unencodable(outcome.traceback)
    replaced = bad + bad_type + bad_tb
    note = (
        f" [rrq: {replaced} characters could not be encoded and were replaced]" if replaced else ""
    )
    cap = max(max_error_bytes - len(note), 1) if max_error_bytes > 0 else 0
    message = _error_text.cut_head(message, cap) + note
    error_type = _error_text.cut_head(error_type, _MAX_ERROR_TYPE_BYTES)
    traceback = _error_text.cut_tail(traceback, max_error_bytes)
    return message, error_type, traceback


def _encode_outcome(outcome: Outcome, max_error_bytes: int = 0) -> runner_pb2.Outcome:
    wire = runner_pb2.Outcome(job_id=outcome.job_id, attempt=outcome.attempt)
    if outcome.kind == "success":
        wire.success.result_json = outcome.result_json
    elif outcome.kind == "retry":
        wire.retry.message, _, _ = _error_texts(outcome, max_error_bytes)
        if outcome.delay_ms is not None:
            wire.retry.delay_ms = min(max(outcome.delay_ms, 0), MAX_RETRY_DELAY_MS)
    elif outcome.kind == "failure":
        message, error_type, traceback = _error_texts(outcome, max_error_bytes)
        wire.failure.kind = _FAILURE_KIND[outcome.failure_kind]
        wire.failure.error_type = error_type
        wire.failure.message = message
        wire.failure.traceback = traceback
    elif outcome.kind == "cancelled":
        wire.cancelled.SetInParent()
    else:
        wire.timed_out.SetInParent()
    return wire


def encode_outcome_or_failure(outcome: Outcome, max_error_bytes: int = 0) -> runner_pb2.Outcome:
    """``outcome`` on the wire or, when it cannot be encoded, a failure of the
    same execution that names the problem (the job's attempt still ends)."""
    try:
        return _encode_outcome(outcome, max_error_bytes)
    except Exception as exc:  # noqa: BLE001 - any encoding error becomes this job's failure
        problem = ascii(f"{type(exc).__name__}: {exc}")[1:-1]
        fallback = Outcome(
            outcome.job_id,
            outcome.attempt,
            "failure",
            failure_kind="HANDLER_ERROR",
            error_type="OutcomeNotEncodable",
            message=f"the runner could not encode the {outcome.kind} outcome: {problem}",
        )
        return _encode_outcome(fallback, max_error_bytes)


# Outcomes merged into one message stop growing at this size: the
# orchestrator refuses a frame over its decoding limit (at least 64 MiB) by
# ending the stream, which would lose every outcome in it. One outcome larger
# than this still goes, alone.
MAX_OUTCOMES_FRAME_BYTES = 4 * 1024 * 1024


def outcome_batches(
    outcomes: Sequence[Outcome], max_error_bytes: int = 0
) -> list[runner_pb2.OutcomeBatch]:
    """``outcomes`` encoded one by one (see encode_outcome_or_failure), in
    batches of at most MAX_OUTCOMES_FRAME_BYTES (an outcome larger than that
    goes alone)."""
    batches: list[runner_pb2.OutcomeBatch] = []
    chunk: list[runner_pb2.Outcome] = []
    size = 0
    for outcome in outcomes:
        wire = encode_outcome_or_failure(outcome, max_error_bytes)
        wire_size = wire.ByteSize()
        if chunk and size + wire_size > MAX_OUTCOMES_FRAME_BYTES:
            batches.append(runner_pb2.OutcomeBatch(outcomes=chunk))
            chunk, size = [], 0
        chunk.append(wire)
        size += wire_size
    if chunk:
        batches.append(runner_pb2.OutcomeBatch(outcomes=chunk))
    return batches


def _outcomes_size(message: runner_pb2.RunnerMessage | None) -> int | None:
    """Encoded size of an ``outcomes`` message; None for any other message."""
    if message is None or message.WhichOneof("kind") != "outcomes":
        return None
    return message.ByteSize()


def coalesce(
    first: runner_pb2.RunnerMessage,
    queued: asyncio.Queue[runner_pb2.RunnerMessage | None],
) -> list[runner_pb2.RunnerMessage | None]:
    """``first`` plus every message already ``queued`` behind it, with runs of
    outcome batches merged into one message of at most
    MAX_OUTCOMES_FRAME_BYTES. A grpc write is the runner's costliest step per
    message; while one is in flight, outcomes pile up in the queue and leave
    together. Order is kept; ``None`` (close) ends the list.
    """
    out: list[runner_pb2.RunnerMessage | None] = [first]
    last_size = _outcomes_size(first)
    while not queued.empty():
        nxt = queued.get_nowait()
        last = out[-1]
        size = _outcomes_size(nxt)
        if (
            nxt is not None
            and last is not None
            and size is not None
            and last_size is not None
            and last_size + size <= MAX_OUTCOMES_FRAME_BYTES
        ):
            last.outcomes.outcomes.extend(nxt.outcomes.outcomes)
            last_size += size
            continue
        out.append(nxt)
        last_size = size
        if nxt is None:
            break
    return out


class Stream:
    """The runner's end of one ``RunnerService.Connect`` stream.

    ``send_*`` queue a message; one writer task writes them in order, so
    callers never interleave writes. ``read`` returns the next decoded message
    from the orchestrator.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        stub = runner_pb2_grpc.RunnerServiceStub(channel)
        self._call = stub.Connect(None)
        self._closed_here = False
        self._outgoing: asyncio.Queue[runner_pb2.RunnerMessage | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_all(), name="rrq-stream-writer")

    async def _write_all(self) -> None:
        try:
            while (message := await self._outgoing.get()) is not None:
                for coalesced in coalesce(message, self._outgoing):
                    if coalesced is None:
                        await self._call.done_writing()
                        return
                    await self._call.write(coalesced)
            await self._call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the stream is over; read() reports why

    def send_hello(
        self,
        *,
        runner_name: str,
        handlers: Sequence[str],
        max_in_flight: int,
        pid: int,
        process_token: str,
    ) -> None:
        """Queues the first message of the stream."""
        hello = runner_pb2.RunnerHello(
            protocol_version=PROTOCOL_VERSION,
            runner_name=runner_name,
            language="python",
            handlers=list(handlers),
            max_in_flight=max_in_flight,
            pid=pid,
            process_token=process_token,
        )
        self._outgoing.put_nowait(runner_pb2.RunnerMessage(hello=hello))

    def send_heartbeat(self, in_flight: int) -> None:
        """Queues a liveness signal."""
        heartbeat = runner_pb2.Heartbeat(in_flight=in_flight)
        self._outgoing.put_nowait(runner_pb2.RunnerMessage(heartbeat=heartbeat))

    def send_outcomes(self, outcomes: Sequence[Outcome], max_error_bytes: int = 0) -> None:
        """Queues one ``outcomes`` message carrying every given outcome.

        Each outcome is encoded on its own: one that cannot be encoded is sent
        as a failure saying why, and never costs the others their outcome.
        """
        for batch in outcome_batches(outcomes, max_error_bytes):
            self._outgoing.put_nowait(runner_pb2.RunnerMessage(outcomes=batch))

    async def finish_sending(self) -> None:
        """Writes everything queued so far, then half-closes the stream."""
        self._outgoing.put_nowait(None)
        await asyncio.shield(self._writer)

    async def read(self) -> HelloAck | list[Execute] | Cancel:
        """The next decoded message; raises StreamEnded when the stream is over."""
        try:
            message = await self._call.read()
        except asyncio.CancelledError:
            if self._closed_here:  # grpc reports our own cancel() this way
                raise StreamEnded("the runner closed the stream") from None
            raise
        except grpc.aio.AioRpcError as exc:
            raise StreamEnded(f"stream failed: {exc.code().name}: {exc.details()}") from exc
        if not isinstance(message, runner_pb2.OrchestratorMessage):  # grpc.aio.EOF
            raise StreamEnded("the orchestrator closed the stream")
        return decode_orchestrator_message(message)

    def cancel(self) -> None:
        """Ends the call from the runner's side."""
        self._closed_here = True
        self._writer.cancel()
        self._call.cancel()
