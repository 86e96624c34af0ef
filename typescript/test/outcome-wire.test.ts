/** Pure logic of sending outcomes (issue 13 items 4 and 5): each outcome is
 * encoded on its own, error text is well-formed and bounded, frames are bounded. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { toBinary } from "@bufbuild/protobuf";

import { cutHead, cutTail, MARKER_ROOM } from "../src/errorText.js";
import { RunnerMessageSchema } from "../src/gen/rrq/v1/runner_pb.js";
import { encodeOutcomeOrFailure, MAX_OUTCOMES_FRAME_BYTES, MAX_RETRY_DELAY_MS, outcomesMessages } from "../src/wire.js";

const MB = 1024 * 1024;

function failure(message: string, traceback = "", errorType = "Error") {
  return { jobId: "a", attempt: 1, kind: "failure", failureKind: "HANDLER_ERROR", errorType, message, traceback } as const;
}

test("lone surrogates are replaced and counted; pairs are kept", () => {
  const wire = encodeOutcomeOrFailure(failure("bad \udcff and \ud800 but 🦀", "at \udcff"));
  assert.equal(wire.result.case, "failure");
  if (wire.result.case !== "failure") return;
  assert.equal(
    wire.result.value.message,
    "bad \ufffd and \ufffd but 🦀 [rrq: 3 characters could not be encoded and were replaced]",
  );
  assert.equal(wire.result.value.traceback, "at \ufffd");
});

test("an outcome that cannot be encoded becomes a failure of its own job", () => {
  const wire = encodeOutcomeOrFailure({ jobId: "a", attempt: 1, kind: "retry", delayMs: Number.NaN, message: "x" });
  assert.equal(wire.jobId, "a");
  assert.equal(wire.result.case, "failure");
  if (wire.result.case !== "failure") return;
  assert.equal(wire.result.value.errorType, "OutcomeNotEncodable");
  assert.match(wire.result.value.message, /could not encode the retry outcome/);
});

test("retry delays are kept in range on the wire", () => {
  for (const [asked, sent] of [
    [-5, 0n],
    [1e300, BigInt(MAX_RETRY_DELAY_MS)],
    [1500, 1500n],
  ] as const) {
    const wire = encodeOutcomeOrFailure({ jobId: "a", attempt: 1, kind: "retry", delayMs: asked, message: "" });
    assert.equal(wire.result.case === "retry" ? wire.result.value.delayMs : undefined, sent);
  }
});

test("error text is cut on UTF-8 boundaries and marked", () => {
  const text = "é".repeat(1000); // 2000 bytes
  assert.equal(cutHead(text, 257), `${"é".repeat(128)}… [truncated by rrq: 2000 bytes, kept 256]`);
  assert.equal(cutTail(text, 257), `[truncated by rrq: 2000 bytes, kept the last 256] …${"é".repeat(128)}`);
  assert.equal(cutHead("x".repeat(396), 300), "x".repeat(396)); // within the marker room
  const wire = encodeOutcomeOrFailure(failure("m".repeat(5 * MB), "t".repeat(5 * MB)), 8192);
  if (wire.result.case !== "failure") throw new Error("not a failure");
  assert.ok(Buffer.byteLength(wire.result.value.message) <= 8192 + MARKER_ROOM);
  assert.ok(Buffer.byteLength(wire.result.value.traceback) <= 8192 + MARKER_ROOM);
});

test("outcome messages stay under the frame budget", () => {
  const big = [0, 1, 2, 3, 4].map((i) => ({
    jobId: String(i),
    attempt: 1,
    kind: "success" as const,
    resultJson: "x".repeat(MB + MB / 2),
  }));
  const messages = outcomesMessages(big);
  assert.deepEqual(
    messages.map((m) => (m.kind.case === "outcomes" ? m.kind.value.outcomes.length : 0)),
    [2, 2, 1],
  );
  for (const m of messages) assert.ok(toBinary(RunnerMessageSchema, m).length <= MAX_OUTCOMES_FRAME_BYTES);
});
