/**
 * The TypeScript runner runtime.
 *
 * A runner process dials the orchestrator (`RRQ_ORCHESTRATOR_ADDR`), opens one
 * `RunnerService.Connect` stream (docs/protocol.md) and runs the handlers of
 * its `Registry` concurrently, up to `maxInFlight` at once. Handlers receive an
 * `ExecutionRequest` and an `AbortSignal`, and steer their job by returning a
 * JSON value or by throwing `RetryJob` or `FatalJobError`.
 */
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as net from "node:net";

import { RRQError } from "./errors.js";
import { escapeControl } from "./escape.js";
import { encodeJson, JsonEncodeError, utf8Length } from "./json.js";
import type { Handler, Registry } from "./registry.js";
import {
  type Cancel,
  decodeOrchestratorMessage,
  type Execute,
  type HelloAck,
  heartbeatMessage,
  helloMessage,
  MAX_RETRY_DELAY_MS,
  type Outcome,
  outcomesMessages,
  type RunnerMessage,
  RunnerService,
} from "./wire.js";

export const ADDR_ENV = "RRQ_ORCHESTRATOR_ADDR";
export const NAME_ENV = "RRQ_RUNNER_NAME";
export const TOKEN_ENV = "RRQ_RUNNER_TOKEN";
export const SPAWNED_ENV = "RRQ_RUNNER_SPAWNED";
export const MAX_IN_FLIGHT_ENV = "RRQ_RUNNER_MAX_IN_FLIGHT";

const DEFAULT_HEARTBEAT_MS = 5_000;
const BACKOFF_INITIAL_MS = 100;
const BACKOFF_MAX_MS = 5_000;
// A spawned runner that never got a stream gives up after this many tries;
// its orchestrator then starts a new process.
const SPAWNED_CONNECT_ATTEMPTS = 10;
const FINISH_SENDING_MS = 2_000;

/** What a runner app declares: its handlers and optional overrides. */
export interface RunnerSettings {
  readonly registry: Registry;
  /** Overrides `$RRQ_RUNNER_MAX_IN_FLIGHT` (which the orchestrator sets from rrq.toml). */
  readonly maxInFlight?: number | undefined;
  /** `host:port`; overrides `$RRQ_ORCHESTRATOR_ADDR`. */
  readonly orchestratorAddr?: string | undefined;
  /** How long running jobs may finish after SIGTERM before they are abandoned (default 10). */
  readonly shutdownGraceSeconds?: number | undefined;
}

/** The runner cannot start: no orchestrator address or a bad environment value. */
export class RunnerConfigError extends RRQError {}

/** The `reason` of a handler's AbortSignal when the orchestrator cancels its attempt. */
export class ExecutionCancelled extends RRQError {
  /** Why: "timeout", "requested", "shutdown", "lease_lost", "unspecified" or "stream_ended". */
  readonly reason: string;

  constructor(reason: string) {
    super(`execution cancelled (${reason})`);
    this.reason = reason;
  }
}

type LogLevel = "debug" | "info" | "warning" | "error";
const LEVELS: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warning: 30, error: 40 };

function log(level: LogLevel, message: string): void {
  const wanted = (process.env["RRQ_LOG_LEVEL"] ?? "info").toLowerCase() as LogLevel;
  if (LEVELS[level] < (LEVELS[wanted] ?? LEVELS.info)) return;
  process.stderr.write(
    // Messages carry job ids, cancel reasons and error text: one line each, no terminal controls.
    `${new Date().toISOString()} ${level.toUpperCase()} rrq.runner[${process.pid}]: ${escapeControl(message)}\n`,
  );
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The class name of a thrown value, for the outcome's error_type. */
function errorType(error: unknown): string {
  try {
    if (error instanceof Error) {
      if (typeof error.name === "string" && error.name && error.name !== "Error") return error.name;
      const ctor = (error as { constructor?: { name?: unknown } }).constructor;
      if (typeof ctor?.name === "string" && ctor.name !== "") return ctor.name;
    }
  } catch {
    // A throwing name getter: the outcome matters more than its type name.
  }
  return "Error";
}

/** `String(value)`, or a stand-in when even that throws (a null-prototype object). */
function describe(value: unknown): string {
  try {
    if (value instanceof Error) return String(value.message);
    return String(value);
  } catch {
    return `<${typeof value} that cannot be converted to a string>`;
  }
}

/** The stack of a thrown Error, "" for anything else or a stack getter that throws. */
function stackOf(value: unknown): string {
  try {
    return value instanceof Error ? String(value.stack ?? "") : "";
  } catch {
    return "";
  }
}

/** [delay in ms or null for the backoff, ""] or [null, why the delay is invalid].
 * A negative delay means "now"; NaN, an infinity, a non-number or more than
 * 3,650 days (MAX_DURATION_MS, the orchestrator's limit) is a handler bug reported as a failure. */
function retryDelayMs(defer: unknown): [number | null, string] {
  if (defer === undefined || defer === null) return [null, ""];
  const limitS = MAX_RETRY_DELAY_MS / 1000;
  if (typeof defer !== "number" || !Number.isFinite(defer) || defer > limitS) {
    return [
      null,
      `RetryJob deferSeconds must be a finite number of seconds of at most ${limitS} (3,650 days), got ${describe(defer)}`,
    ];
  }
  return [Math.max(0, roundHalfEven(defer * 1000)), ""];
}

// By name as well as by class: a settings module may load its own copy of the package.
const isNamed = (error: unknown, name: string): error is Error =>
  error instanceof Error && error.name === name;

/** Messages for the orchestrator, consumed by connect as an async generator. */
class Outbox {
  #items: RunnerMessage[] = [];
  #head = 0;
  #wake: (() => void) | null = null;
  #closed = false;

  push(message: RunnerMessage): void {
    if (this.#closed) return;
    this.#items.push(message);
    this.#signal();
  }

  close(): void {
    this.#closed = true;
    this.#signal();
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  async *messages(): AsyncGenerator<RunnerMessage> {
    for (;;) {
      while (this.#head < this.#items.length) {
        const message = this.#items[this.#head] as RunnerMessage;
        this.#head += 1;
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        yield message;
      }
      if (this.#closed) return;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }
}

interface Execution {
  readonly jobId: string;
  readonly attempt: number;
  readonly controller: AbortController;
  /** Set by a cancel: the outcome becomes cancelled / timed_out. */
  cancelled: "timeout" | "cancel" | null;
  /** Set when the stream is gone or the runner stops: no outcome is sent. */
  abandoned: boolean;
}

/** One connected stream: executes requests and sends their outcomes. */
class Session {
  readonly #runner: Runner;
  readonly #outbox: Outbox;
  readonly #ack: HelloAck;
  readonly #running = new Map<string, Execution>();
  #pending: Outcome[] = [];
  #flushScheduled = false;
  #accepting = true;
  #idle: (() => void) | null = null;

  constructor(runner: Runner, outbox: Outbox, ack: HelloAck) {
    this.#runner = runner;
    this.#outbox = outbox;
    this.#ack = ack;
  }

  get inFlight(): number {
    return this.#running.size;
  }

  start(execute: Execute): void {
    if (!this.#accepting) {
      log("info", `not starting job ${execute.jobId} (attempt ${execute.attempt}): stopping`);
      return;
    }
    const key = `${execute.attempt}:${execute.jobId}`;
    if (this.#running.has(key)) {
      log("warning", `job ${execute.jobId} attempt ${execute.attempt} is already running here`);
      return;
    }
    const execution: Execution = {
      jobId: execute.jobId,
      attempt: execute.attempt,
      controller: new AbortController(),
      cancelled: null,
      abandoned: false,
    };
    this.#running.set(key, execution);
    void this.#execute(execution, execute).then(
      (outcome) => this.#finished(key, execution, outcome),
      (error: unknown) =>
        this.#finished(key, execution, this.#failure(execution, "HANDLER_ERROR", error)),
    );
  }

  cancel(cancel: Cancel): void {
    const execution = this.#running.get(`${cancel.attempt}:${cancel.jobId}`);
    if (execution === undefined || execution.cancelled !== null) return;
    execution.cancelled = cancel.timeout ? "timeout" : "cancel";
    log("info", `cancelling job ${cancel.jobId} attempt ${cancel.attempt} (${cancel.reason})`);
    execution.controller.abort(new ExecutionCancelled(cancel.reason));
  }

  /** The stream is gone: abort every handler and send nothing more. */
  abandonAll(reason: string): void {
    for (const execution of this.#running.values()) {
      execution.abandoned = true;
      execution.controller.abort(new ExecutionCancelled(reason));
    }
  }

  /** Stops accepting work and waits up to `graceMs` for running handlers. */
  async drain(graceMs: number): Promise<void> {
    this.#accepting = false;
    if (this.#running.size > 0) {
      log("info", `stopping: ${this.#running.size} job(s) running, grace ${graceMs / 1000}s`);
      let timer: NodeJS.Timeout | undefined;
      const idle = new Promise<void>((resolve) => {
        this.#idle = resolve;
      });
      const late = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      await Promise.race([idle, late]);
      clearTimeout(timer);
      if (this.#running.size > 0) {
        log("warning", `stopping: abandoning ${this.#running.size} job(s) still running`);
        this.abandonAll("shutdown");
      }
    }
    this.#flush();
  }

  heartbeat(): void {
    this.#outbox.push(heartbeatMessage(this.#running.size));
  }

  get heartbeatIntervalMs(): number {
    return this.#ack.heartbeatIntervalMs > 0 ? this.#ack.heartbeatIntervalMs : DEFAULT_HEARTBEAT_MS;
  }

  #failure(
    execution: Execution,
    failureKind: "HANDLER_ERROR" | "FATAL",
    error: unknown,
  ): Outcome {
    return {
      jobId: execution.jobId,
      attempt: execution.attempt,
      kind: "failure",
      failureKind,
      errorType: errorType(error),
      message: describe(error),
      traceback: stackOf(error),
    };
  }

  #cancelledOutcome(execution: Execution): Outcome {
    return {
      jobId: execution.jobId,
      attempt: execution.attempt,
      kind: execution.cancelled === "timeout" ? "timed_out" : "cancelled",
    };
  }

  async #execute(execution: Execution, execute: Execute): Promise<Outcome> {
    const { jobId, attempt } = execution;
    const request = execute.request;
    if (request === null) {
      return {
        jobId,
        attempt,
        kind: "failure",
        failureKind: "INVALID_PARAMS",
        errorType: "InvalidParams",
        message: execute.paramsError,
        traceback: "",
      };
    }
    const registry = this.#runner.registry;
    const handler: Handler | undefined = registry.get(execute.functionName);
    if (handler === undefined) {
      return {
        jobId,
        attempt,
        kind: "failure",
        failureKind: "UNKNOWN_HANDLER",
        errorType: "UnknownFunction",
        message: `no handler named '${execute.functionName}' (this runner has: ${registry.names().join(", ")})`,
        traceback: "",
      };
    }
    let value: unknown;
    try {
      value = await handler(request, execution.controller.signal);
    } catch (error) {
      if (execution.cancelled !== null) return this.#cancelledOutcome(execution);
      if (isNamed(error, "RetryJob")) {
        const [delayMs, invalid] = retryDelayMs((error as { deferSeconds?: unknown }).deferSeconds);
        if (invalid) {
          return {
            jobId,
            attempt,
            kind: "failure",
            failureKind: "HANDLER_ERROR",
            errorType: "InvalidRetryDelay",
            message: `${invalid} (retry message: ${describe(error)})`,
            traceback: stackOf(error),
          };
        }
        return { jobId, attempt, kind: "retry", delayMs, message: describe(error) };
      }
      if (isNamed(error, "FatalJobError")) return this.#failure(execution, "FATAL", error);
      return this.#failure(execution, "HANDLER_ERROR", error);
    }
    if (execution.cancelled !== null) return this.#cancelledOutcome(execution);
    let text: string;
    try {
      text = value === undefined ? "null" : encodeJson(value, { undefinedValues: "omit" });
    } catch (error) {
      if (!(error instanceof JsonEncodeError)) throw error;
      return {
        jobId,
        attempt,
        kind: "failure",
        failureKind: "RESULT_NOT_SERIALIZABLE",
        errorType: "ResultNotSerializable",
        message: error.message.replace(/^value/, "result"),
        traceback: "",
      };
    }
    const limit = this.#ack.maxResultBytes;
    const size = utf8Length(text);
    if (limit > 0 && size > limit) {
      return {
        jobId,
        attempt,
        kind: "failure",
        failureKind: "RESULT_TOO_LARGE",
        errorType: "ResultTooLarge",
        message: `result is ${size} bytes of JSON, the limit is ${limit}`,
        traceback: "",
      };
    }
    return { jobId, attempt, kind: "success", resultJson: text };
  }

  #finished(key: string, execution: Execution, outcome: Outcome): void {
    if (this.#running.get(key) === execution) this.#running.delete(key);
    if (this.#running.size === 0 && this.#idle !== null) {
      const idle = this.#idle;
      this.#idle = null;
      idle();
    }
    if (execution.abandoned) return;
    this.#pending.push(outcome);
    if (!this.#flushScheduled) {
      // Everything that finishes in this turn of the event loop goes in one batch.
      this.#flushScheduled = true;
      setImmediate(() => this.#flush());
    }
  }

  #flush(): void {
    this.#flushScheduled = false;
    if (this.#pending.length > 0) {
      const batch = this.#pending;
      this.#pending = [];
      for (const message of outcomesMessages(batch, this.#ack.maxErrorBytes)) this.#outbox.push(message);
    }
  }
}

type SessionResult = "ended" | "rejected" | "unreachable";

export interface RunnerOptions {
  /** `host:port`; overrides the settings and `$RRQ_ORCHESTRATOR_ADDR`. */
  readonly addr?: string | undefined;
  /** Environment to read (default `process.env`). */
  readonly env?: NodeJS.ProcessEnv | undefined;
}

/** Runs the handlers of `settings.registry` for one orchestrator. */
export class Runner {
  readonly registry: Registry;
  readonly addr: string;
  readonly runnerName: string;
  /** The secret the hello presents: a spawned runner's spawn token, or an external runner's configured token. */
  readonly token: string;
  /** Set by the orchestrator for processes it starts: exit when the stream ends (an external runner reconnects). */
  readonly spawned: boolean;
  readonly maxInFlight: number;
  readonly shutdownGraceMs: number;
  #stopping = false;
  #stopWaiters: (() => void)[] = [];

  constructor(settings: RunnerSettings, options: RunnerOptions = {}) {
    const env = options.env ?? process.env;
    this.registry = settings.registry;
    if (this.registry === undefined || typeof this.registry.names !== "function") {
      throw new RunnerConfigError("settings.registry must be a Registry");
    }
    const addr = options.addr || settings.orchestratorAddr || env[ADDR_ENV];
    if (!addr) {
      throw new RunnerConfigError(
        `no orchestrator address: set ${ADDR_ENV}, pass --connect HOST:PORT or settings.orchestratorAddr`,
      );
    }
    this.addr = addr;
    this.runnerName = env[NAME_ENV] || "typescript";
    this.token = env[TOKEN_ENV] ?? "";
    this.spawned = env[SPAWNED_ENV] === "1";
    if (settings.maxInFlight !== undefined) {
      if (!Number.isSafeInteger(settings.maxInFlight) || settings.maxInFlight < 1) {
        throw new RunnerConfigError(`maxInFlight must be an integer >= 1, got ${settings.maxInFlight}`);
      }
      this.maxInFlight = settings.maxInFlight;
    } else {
      const raw = env[MAX_IN_FLIGHT_ENV] || "1";
      const value = Number(raw);
      if (!/^\s*\d+\s*$/.test(raw) || !Number.isSafeInteger(value) || value < 1) {
        throw new RunnerConfigError(`${MAX_IN_FLIGHT_ENV} must be an integer >= 1, got '${raw}'`);
      }
      this.maxInFlight = value;
    }
    const grace = settings.shutdownGraceSeconds ?? 10;
    if (!Number.isFinite(grace) || grace < 0) {
      throw new RunnerConfigError(`shutdownGraceSeconds must be a non-negative number, got ${grace}`);
    }
    this.shutdownGraceMs = grace * 1000;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  /** Stops accepting jobs, lets running ones finish (within the grace) and returns from run(). */
  stop(): void {
    if (this.#stopping) return;
    this.#stopping = true;
    for (const waiter of this.#stopWaiters.splice(0)) waiter();
  }

  #whenStopping(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    return new Promise((resolve) => this.#stopWaiters.push(resolve));
  }

  async #session(): Promise<SessionResult> {
    // `unix:/path`: the private unix socket the orchestrator gives the
    // runners it spawns; the URL is then only the requests' authority.
    const socketPath = this.addr.startsWith("unix:") ? this.addr.slice("unix:".length) : undefined;
    const baseUrl = socketPath === undefined ? `http://${this.addr}` : "http://localhost";
    // One HTTP/2 connection per session, with keepalive pings, closed with it.
    const sessionManager = new Http2SessionManager(
      baseUrl,
      {
        pingIntervalMs: 10_000,
        pingTimeoutMs: 10_000,
        pingIdleConnection: true,
      },
      socketPath === undefined ? undefined : { createConnection: () => net.connect({ path: socketPath }) },
    );
    const transport = createGrpcTransport({ baseUrl, sessionManager });
    const client = createClient(RunnerService, transport);
    const outbox = new Outbox();
    const call = new AbortController();
    outbox.push(
      helloMessage({
        runnerName: this.runnerName,
        handlers: this.registry.names(),
        maxInFlight: this.maxInFlight,
        pid: process.pid,
        processToken: this.token,
      }),
    );
    const responses = client.connect(outbox.messages(), { signal: call.signal })[Symbol.asyncIterator]();
    let session: Session | null = null;
    let heartbeat: NodeJS.Timeout | undefined;
    let stopper: Promise<void> | undefined;
    try {
      let first: IteratorResult<unknown>;
      try {
        first = await responses.next();
      } catch (error) {
        const ce = ConnectError.from(error);
        // Unavailable: nothing listens there (yet). Anything else: the hello was refused.
        if (ce.code === 14) {
          log("warning", `orchestrator at ${this.addr} is not reachable: ${ce.message}`);
          return "unreachable";
        }
        log("error", `the orchestrator rejected the hello: ${ce.message}`);
        return "rejected";
      }
      const ack = first.done ? null : decodeOrchestratorMessage(first.value as never);
      if (ack === null || ack.kind !== "hello_ack") {
        log("error", "the orchestrator's first message was not a hello_ack");
        return "rejected";
      }
      log(
        "info",
        `connected to orchestrator ${ack.orchestratorId} at ${this.addr} as runner '${this.runnerName}' (${this.registry.size} handler(s), max_in_flight ${this.maxInFlight})`,
      );
      const active = new Session(this, outbox, ack);
      session = active;
      heartbeat = setInterval(() => active.heartbeat(), active.heartbeatIntervalMs);
      stopper = this.#whenStopping().then(async () => {
        await active.drain(this.shutdownGraceMs);
        outbox.close(); // half-close after the last outcomes
        setTimeout(() => call.abort(), FINISH_SENDING_MS).unref();
      });
      try {
        for (;;) {
          const next = await responses.next();
          if (next.done) {
            log("info", "stream ended: the orchestrator closed the stream");
            break;
          }
          const event = decodeOrchestratorMessage(next.value as never);
          if (event === null) continue;
          if (event.kind === "execute") {
            for (const execute of event.executions) active.start(execute);
          } else if (event.kind === "cancel") {
            active.cancel(event);
          } else {
            log("warning", "ignoring a second hello_ack");
          }
        }
      } catch (error) {
        if (!call.signal.aborted) log("info", `stream ended: ${ConnectError.from(error).message}`);
      }
      return "ended";
    } finally {
      clearInterval(heartbeat);
      session?.abandonAll("stream_ended");
      outbox.close();
      call.abort();
      sessionManager.abort();
      void stopper;
    }
  }

  /**
   * Serves until stopped (or, for a spawned runner, until its stream ends).
   *
   * Returns the process exit code: 0 after a stream or a stop, 1 when the
   * orchestrator rejected the hello or stayed unreachable (spawned runners).
   */
  async run(): Promise<number> {
    const onTerm = (): void => this.stop();
    const signals: NodeJS.Signals[] = this.spawned ? ["SIGTERM"] : ["SIGTERM", "SIGINT"];
    // A spawned runner shares the terminal's process group with its
    // orchestrator: on Ctrl-C the orchestrator drains and then stops its
    // runners, so the runner must not abandon its jobs on SIGINT itself.
    const ignoreInt = (): void => undefined;
    if (this.spawned) process.on("SIGINT", ignoreInt);
    for (const signal of signals) process.on(signal, onTerm);
    let delay = BACKOFF_INITIAL_MS;
    let failures = 0;
    try {
      while (!this.#stopping) {
        const result = await this.#session();
        if (result === "ended") {
          failures = 0;
          delay = BACKOFF_INITIAL_MS;
          if (this.spawned) return 0; // spawned: the orchestrator's replacement spawns its own
          if (this.#stopping) return 0;
        } else {
          failures += 1;
          if (this.spawned && (result === "rejected" || failures >= SPAWNED_CONNECT_ATTEMPTS)) return 1;
        }
        // Back off before reconnecting (jittered), or stop at once when asked.
        const wait = delay * (0.5 + Math.random() / 2);
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, wait);
          }),
          this.#whenStopping(),
        ]);
        clearTimeout(timer);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
      return 0;
    } finally {
      for (const signal of signals) process.off(signal, onTerm);
      if (this.spawned) process.off("SIGINT", ignoreInt);
    }
  }
}
