/**
 * The one boundary between generated protobuf types (src/gen) and user types.
 *
 * Nothing else in the package reads or builds a generated message: a job
 * record (a Redis hash whose fields are `rrq.v1.Job`'s) becomes a `JobResult`
 * here, and the runner stream's messages become plain objects here.
 */
import { MAX_DURATION_MS } from "./gen/limits.js";
import { create } from "@bufbuild/protobuf";

import { cutHead, cutTail, replaceUnencodable } from "./errorText.js";
import { RRQError } from "./errors.js";
import { JobStatus as WireJobStatus } from "./gen/rrq/v1/job_pb.js";
import {
  CancelReason,
  FailureKind as WireFailureKind,
  type OrchestratorMessage,
  type Outcome as WireOutcome,
  OutcomeSchema,
  type RunnerMessage,
  RunnerMessageSchema,
  RunnerService,
} from "./gen/rrq/v1/runner_pb.js";
import { type AttemptError, type JobResult, JobStatus } from "./job.js";
import type { ExecutionRequest, TraceContext } from "./registry.js";
import type { JobHash } from "./store.js";

export { RunnerService };
export type { OrchestratorMessage, RunnerMessage };

export const PROTOCOL_VERSION = 1;

// --- job records -------------------------------------------------------------

const STATUS_FROM_NUMBER: ReadonlyMap<number, JobStatus> = new Map([
  [WireJobStatus.PENDING, JobStatus.PENDING],
  [WireJobStatus.ACTIVE, JobStatus.ACTIVE],
  [WireJobStatus.RETRYING, JobStatus.RETRYING],
  [WireJobStatus.COMPLETED, JobStatus.COMPLETED],
  [WireJobStatus.FAILED, JobStatus.FAILED],
  [WireJobStatus.CANCELLED, JobStatus.CANCELLED],
]);

/** Maps a stored `JobStatus` number to `JobStatus`. */
export function jobStatusFromNumber(number: number): JobStatus {
  const status = STATUS_FROM_NUMBER.get(number);
  if (status === undefined) throw new RRQError(`unknown job status number ${number}`);
  return status;
}

const int = (text: string | undefined): number => {
  const value = Number(text ?? "0");
  return Number.isFinite(value) ? value : 0;
};

const dateFromMs = (ms: number): Date | null => (ms > 0 ? new Date(ms) : null);

function errorsFromJson(errorsJson: string | undefined): AttemptError[] {
  if (!errorsJson) return [];
  let entries: unknown;
  try {
    entries = JSON.parse(errorsJson);
  } catch {
    return [];
  }
  if (!Array.isArray(entries)) return []; // cjson encodes an empty table as {}
  const errors: AttemptError[] = [];
  for (const entry of entries as unknown[]) {
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) continue;
    const e = entry as Record<string, unknown>;
    const atMs = typeof e["at_ms"] === "number" ? e["at_ms"] : 0;
    errors.push({
      attempt: Number(e["attempt"] ?? 0),
      errorType: String(e["error_type"] ?? ""),
      message: String(e["message"] ?? ""),
      traceback: String(e["traceback"] ?? ""),
      at: new Date(atMs),
    });
  }
  return errors;
}

/** Converts a job hash (as HGETALL returns it) into a `JobResult`. */
/** A job hash as a JobResult; the id and queue are in the record's key, not in the hash. */
export function jobResultFromHash(fields: JobHash, jobId: string, queue: string): JobResult {
  let result: unknown = null;
  const resultJson = fields["result_json"];
  if (resultJson) {
    try {
      result = JSON.parse(resultJson);
    } catch {
      result = resultJson; // written by a foreign producer; show it as it is
    }
  }
  const cancel = fields["cancel_requested"] ?? "";
  return {
    jobId: fields["id"] || jobId,
    status: jobStatusFromNumber(int(fields["status"])),
    functionName: fields["function_name"] ?? "",
    queueName: fields["queue_name"] || queue,
    attempt: int(fields["attempt"]),
    maxRetries: int(fields["max_retries"]),
    result,
    lastError: fields["last_error"] ?? "",
    lastErrorType: fields["last_error_type"] ?? "",
    enqueuedAt: dateFromMs(int(fields["enqueued_at_ms"])),
    // Not stored when the job was due at once.
    runAt: dateFromMs(int(fields["run_at_ms"] ?? fields["enqueued_at_ms"])),
    startedAt: dateFromMs(int(fields["started_at_ms"])),
    finishedAt: dateFromMs(int(fields["finished_at_ms"])),
    errors: errorsFromJson(fields["errors_json"]),
    uniqueKey: fields["unique_key"] ?? "",
    rateLimitKey: fields["rate_limit_key"] ?? "",
    debounceKey: fields["debounce_key"] ?? "",
    cancelRequested: !["", "0", "false"].includes(cancel),
    traceParent: fields["trace_parent"] ?? "",
    traceState: fields["trace_state"] ?? "",
  };
}

// --- runner stream -------------------------------------------------------------

/** The orchestrator's answer to the hello. */
export interface HelloAck {
  readonly kind: "hello_ack";
  readonly orchestratorId: string;
  readonly heartbeatIntervalMs: number;
  readonly maxResultBytes: number;
  /** Cap on each error text sent (0: none); see errorText.ts. */
  readonly maxErrorBytes: number;
}

/** One execution to run; `request` is null when the params are not a JSON object. */
export interface Execute {
  readonly jobId: string;
  readonly attempt: number;
  readonly functionName: string;
  readonly request: ExecutionRequest | null;
  readonly paramsError: string;
}

/** A batch of executions. */
export interface ExecuteBatch {
  readonly kind: "execute";
  readonly executions: readonly Execute[];
}

/** A cancel request; `timeout` is true when the reason is the deadline. */
export interface Cancel {
  readonly kind: "cancel";
  readonly jobId: string;
  readonly attempt: number;
  readonly timeout: boolean;
  readonly reason: "unspecified" | "timeout" | "requested" | "shutdown" | "lease_lost";
}

export type OrchestratorEvent = HelloAck | ExecuteBatch | Cancel;

export type FailureKind =
  | "HANDLER_ERROR"
  | "UNKNOWN_HANDLER"
  | "INVALID_PARAMS"
  | "RESULT_NOT_SERIALIZABLE"
  | "RESULT_TOO_LARGE"
  | "FATAL";

/** How one execution ended. */
export type Outcome =
  | { readonly jobId: string; readonly attempt: number; readonly kind: "success"; readonly resultJson: string }
  | {
      readonly jobId: string;
      readonly attempt: number;
      readonly kind: "retry";
      readonly delayMs: number | null;
      readonly message: string;
    }
  | {
      readonly jobId: string;
      readonly attempt: number;
      readonly kind: "failure";
      readonly failureKind: FailureKind;
      readonly errorType: string;
      readonly message: string;
      readonly traceback: string;
    }
  | { readonly jobId: string; readonly attempt: number; readonly kind: "cancelled" | "timed_out" };

const CANCEL_REASONS: ReadonlyMap<number, Cancel["reason"]> = new Map([
  [CancelReason.UNSPECIFIED, "unspecified"],
  [CancelReason.TIMEOUT, "timeout"],
  [CancelReason.REQUESTED, "requested"],
  [CancelReason.SHUTDOWN, "shutdown"],
  [CancelReason.LEASE_LOST, "lease_lost"],
]);

const FAILURE_KINDS: Readonly<Record<FailureKind, WireFailureKind>> = {
  HANDLER_ERROR: WireFailureKind.HANDLER_ERROR,
  UNKNOWN_HANDLER: WireFailureKind.UNKNOWN_HANDLER,
  INVALID_PARAMS: WireFailureKind.INVALID_PARAMS,
  RESULT_NOT_SERIALIZABLE: WireFailureKind.RESULT_NOT_SERIALIZABLE,
  RESULT_TOO_LARGE: WireFailureKind.RESULT_TOO_LARGE,
  FATAL: WireFailureKind.FATAL,
};

function paramsFromJson(paramsJson: string): Record<string, unknown> {
  let params: unknown;
  try {
    params = paramsJson ? JSON.parse(paramsJson) : {};
  } catch (error) {
    throw new Error(`params are not valid JSON: ${(error as Error).message}`);
  }
  if (typeof params !== "object" || params === null || Array.isArray(params)) {
    throw new Error(`params must be a JSON object, got ${Array.isArray(params) ? "array" : typeof params}`);
  }
  return params as Record<string, unknown>;
}

/** Decodes one message from the orchestrator; null for an empty (unknown) one. */
export function decodeOrchestratorMessage(message: OrchestratorMessage): OrchestratorEvent | null {
  const { kind } = message;
  switch (kind.case) {
    case "helloAck":
      return {
        kind: "hello_ack",
        orchestratorId: kind.value.orchestratorId,
        heartbeatIntervalMs: Number(kind.value.heartbeatIntervalMs),
        maxResultBytes: Number(kind.value.maxResultBytes),
        maxErrorBytes: Number(kind.value.maxErrorBytes),
      };
    case "execute":
      return {
        kind: "execute",
        executions: kind.value.requests.map((req): Execute => {
          const base = { jobId: req.jobId, attempt: Number(req.attempt), functionName: req.functionName };
          let params: Record<string, unknown>;
          try {
            params = paramsFromJson(req.paramsJson);
          } catch (error) {
            return { ...base, request: null, paramsError: (error as Error).message };
          }
          const traceContext: { traceparent?: string; tracestate?: string } = {};
          if (req.traceParent) traceContext.traceparent = req.traceParent;
          if (req.traceState) traceContext.tracestate = req.traceState;
          const request: ExecutionRequest = {
            jobId: req.jobId,
            functionName: req.functionName,
            params,
            attempt: Number(req.attempt),
            queueName: req.queueName,
            enqueuedAt: new Date(Number(req.enqueuedAtMs)),
            deadline: new Date(Number(req.deadlineMs)),
            traceContext: traceContext as TraceContext,
            maxRetries: Number(req.maxRetries),
          };
          return { ...base, request, paramsError: "" };
        }),
      };
    case "cancel": {
      const reason = CANCEL_REASONS.get(kind.value.reason) ?? "unspecified";
      return {
        kind: "cancel",
        jobId: kind.value.jobId,
        attempt: Number(kind.value.attempt),
        timeout: reason === "timeout",
        reason,
      };
    }
    default:
      return null;
  }
}

/** Longest retry delay the orchestrator accepts (MAX_DURATION_MS, 3,650 days); docs/protocol.md. */
export const MAX_RETRY_DELAY_MS = MAX_DURATION_MS;
const MAX_ERROR_TYPE_BYTES = 256;

/** message, errorType and traceback made well-formed and cut to the cap; the
 * message says how many characters were replaced (the note is never cut). */
function errorTexts(
  message: string,
  errorType: string,
  traceback: string,
  maxErrorBytes: number,
): [string, string, string] {
  const [m, badMessage] = replaceUnencodable(message);
  const [e, badType] = replaceUnencodable(errorType);
  const [t, badTraceback] = replaceUnencodable(traceback);
  const replaced = badMessage + badType + badTraceback;
  const note = replaced > 0 ? ` [rrq: ${replaced} characters could not be encoded and were replaced]` : "";
  const cap = maxErrorBytes > 0 ? Math.max(maxErrorBytes - note.length, 1) : 0;
  return [cutHead(m, cap) + note, cutHead(e, MAX_ERROR_TYPE_BYTES), cutTail(t, maxErrorBytes)];
}

function encodeOutcome(outcome: Outcome, maxErrorBytes: number): WireOutcome {
  const base = { jobId: outcome.jobId, attempt: BigInt(outcome.attempt) };
  switch (outcome.kind) {
    case "success":
      return create(OutcomeSchema, {
        ...base,
        result: { case: "success", value: { resultJson: outcome.resultJson } },
      });
    case "retry":
      return create(OutcomeSchema, {
        ...base,
        result: {
          case: "retry",
          value: {
            message: errorTexts(outcome.message, "", "", maxErrorBytes)[0],
            ...(outcome.delayMs !== null
              ? { delayMs: BigInt(Math.min(Math.max(Math.round(outcome.delayMs), 0), MAX_RETRY_DELAY_MS)) }
              : {}),
          },
        },
      });
    case "failure": {
      const [message, errorType, traceback] = errorTexts(
        outcome.message,
        outcome.errorType,
        outcome.traceback,
        maxErrorBytes,
      );
      return create(OutcomeSchema, {
        ...base,
        result: {
          case: "failure",
          value: { kind: FAILURE_KINDS[outcome.failureKind], errorType, message, traceback },
        },
      });
    }
    case "cancelled":
      return create(OutcomeSchema, { ...base, result: { case: "cancelled", value: {} } });
    case "timed_out":
      return create(OutcomeSchema, { ...base, result: { case: "timedOut", value: {} } });
  }
}

export interface Hello {
  readonly runnerName: string;
  readonly handlers: readonly string[];
  readonly maxInFlight: number;
  readonly pid: number;
  readonly processToken: string;
}

export function helloMessage(hello: Hello): RunnerMessage {
  return create(RunnerMessageSchema, {
    kind: {
      case: "hello",
      value: {
        protocolVersion: PROTOCOL_VERSION,
        runnerName: hello.runnerName,
        language: "typescript",
        handlers: [...hello.handlers],
        maxInFlight: hello.maxInFlight,
        pid: hello.pid,
        processToken: hello.processToken,
      },
    },
  });
}

export function heartbeatMessage(inFlight: number): RunnerMessage {
  return create(RunnerMessageSchema, { kind: { case: "heartbeat", value: { inFlight } } });
}

/** `outcome` on the wire or, when it cannot be encoded, a failure of the same
 * execution that names the problem: one bad outcome never costs its batch. */
export function encodeOutcomeOrFailure(outcome: Outcome, maxErrorBytes = 0): WireOutcome {
  try {
    return encodeOutcome(outcome, maxErrorBytes);
  } catch (error) {
    let problem: string;
    try {
      problem = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    } catch {
      problem = "an error that cannot be described";
    }
    return encodeOutcome(
      {
        jobId: outcome.jobId,
        attempt: outcome.attempt,
        kind: "failure",
        failureKind: "HANDLER_ERROR",
        errorType: "OutcomeNotEncodable",
        message: `the runner could not encode the ${outcome.kind} outcome: ${problem}`,
        traceback: "",
      },
      maxErrorBytes,
    );
  }
}

/**
 * Outcomes in one message stop at this size: the orchestrator refuses a frame
 * over its decoding limit (at least 64 MiB) by ending the stream, which would
 * lose every outcome in it. One outcome larger than this still goes, alone.
 */
export const MAX_OUTCOMES_FRAME_BYTES = 4 * 1024 * 1024;

/** `outcomes` as `outcomes` messages of at most MAX_OUTCOMES_FRAME_BYTES each;
 * each outcome is encoded on its own. */
export function outcomesMessages(outcomes: readonly Outcome[], maxErrorBytes = 0): RunnerMessage[] {
  const messages: RunnerMessage[] = [];
  let chunk: WireOutcome[] = [];
  let size = 0;
  const emit = (): void => {
    messages.push(create(RunnerMessageSchema, { kind: { case: "outcomes", value: { outcomes: chunk } } }));
  };
  for (const outcome of outcomes) {
    const wire = encodeOutcomeOrFailure(outcome, maxErrorBytes);
    const wireSize = approximateSize(wire);
    if (chunk.length > 0 && size + wireSize > MAX_OUTCOMES_FRAME_BYTES) {
      emit();
      chunk = [];
      size = 0;
    }
    chunk.push(wire);
    size += wireSize;
  }
  if (chunk.length > 0) emit();
  return messages;
}

/** An upper bound of an outcome's encoded size: its strings as UTF-8 plus room
 * for tags, lengths and numbers. */
function approximateSize(outcome: WireOutcome): number {
  let size = 64 + Buffer.byteLength(outcome.jobId);
  const { result } = outcome;
  if (result.case === "success") size += Buffer.byteLength(result.value.resultJson);
  else if (result.case === "retry") size += Buffer.byteLength(result.value.message);
  else if (result.case === "failure") {
    size +=
      Buffer.byteLength(result.value.errorType) +
      Buffer.byteLength(result.value.message) +
      Buffer.byteLength(result.value.traceback);
  }
  return size;
}
