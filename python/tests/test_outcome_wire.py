"""Pure logic of sending outcomes (issue 13 items 4 and 5): each outcome is
encoded on its own, error text is valid UTF-8 and bounded, frames are bounded."""

from __future__ import annotations

import asyncio

from rrq import _error_text, _wire
from rrq.v1 import runner_pb2

MB = 1024 * 1024


def _failure(job_id: str, message: str, traceback: str = "", **kw: object) -> _wire.Outcome:
    return _wire.Outcome(job_id, 1, "failure", message=message, traceback=traceback, **kw)  # type: ignore[arg-type]


def test_lone_surrogates_are_replaced_and_counted() -> None:
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")
    wire = _wire.encode_outcome_or_failure(
        _failure("a", f"cannot open {name}", f"Traceback\nOSError: {name}", error_type="OSError")
    )
    assert wire.failure.message == (
        "cannot open report-\ufffd.csv [rrq: 2 characters could not be encoded and were replaced]"
    )
    assert wire.failure.traceback.endswith("OSError: report-\ufffd.csv")
    wire.SerializeToString()


def test_an_outcome_that_cannot_be_encoded_becomes_a_failure_of_its_own_job() -> None:
    bogus = _failure("a", "x", failure_kind="NOT_A_KIND")
    wire = _wire.encode_outcome_or_failure(bogus)
    assert wire.job_id == "a"
    assert wire.failure.error_type == "OutcomeNotEncodable"
    assert "could not encode the failure outcome: KeyError" in wire.failure.message


def test_retry_delays_are_kept_in_range_on_the_wire() -> None:
    for asked, sent in [(-5, 0), (10**30, _wire.MAX_RETRY_DELAY_MS), (1500, 1500)]:
        wire = _wire.encode_outcome_or_failure(_wire.Outcome("a", 1, "retry", delay_ms=asked))
        assert wire.retry.delay_ms == sent


def test_error_text_is_cut_on_utf8_boundaries_and_marked() -> None:
    text = "é" * 1000  # 2000 bytes
    head = _error_text.cut_head(text, 257)
    assert head == "é" * 128 + "… [truncated by rrq: 2000 bytes, kept 256]"
    tail = _error_text.cut_tail(text, 257)
    assert tail == "[truncated by rrq: 2000 bytes, kept the last 256] …" + "é" * 128
    assert _error_text.cut_head("x" * (300 + 96), 300) == "x" * 396  # within the marker room
    assert _error_text.cut_head(text, 0) == text  # no cap
    wire = _wire.encode_outcome_or_failure(_failure("a", "m" * (5 * MB), "t" * (5 * MB)), 8192)
    assert len(wire.failure.message.encode()) <= 8192 + _error_text.MARKER_ROOM
    assert len(wire.failure.traceback.encode()) <= 8192 + _error_text.MARKER_ROOM


def test_outcome_batches_stay_under_the_frame_budget() -> None:
    big = [_wire.Outcome(str(i), 1, "success", result_json="x" * (MB + MB // 2)) for i in range(5)]
    batches = _wire.outcome_batches(big)
    assert [len(b.outcomes) for b in batches] == [2, 2, 1]
    assert all(b.ByteSize() <= _wire.MAX_OUTCOMES_FRAME_BYTES for b in batches)
    alone = _wire.outcome_batches([_wire.Outcome("h", 1, "success", result_json="x" * (5 * MB))])
    assert len(alone) == 1  # one outcome larger than the budget still goes


def test_coalescing_stops_at_the_frame_budget() -> None:
    def outcomes(job_id: str, size: int) -> runner_pb2.RunnerMessage:
        (batch,) = _wire.outcome_batches(
            [_wire.Outcome(job_id, 1, "success", result_json="x" * size)]
        )
        return runner_pb2.RunnerMessage(outcomes=batch)

    queued: asyncio.Queue[runner_pb2.RunnerMessage | None] = asyncio.Queue()
    for m in (outcomes("b", MB), outcomes("c", 2 * MB), outcomes("d", 10)):
        queued.put_nowait(m)
    out = _wire.coalesce(outcomes("a", MB + MB // 2), queued)
    ids = [[o.job_id for o in m.outcomes.outcomes] for m in out if m is not None]
    assert ids == [["a", "b"], ["c", "d"]]
