/** Handler registry: which function runs for which job name. */

/** W3C trace context of the producer's span (keys absent when it was not traced). */
export interface TraceContext {
  readonly traceparent?: string;
  readonly tracestate?: string;
}

/** One attempt of one job, as passed to a handler. */
export interface ExecutionRequest {
  readonly jobId: string;
  readonly functionName: string;
  /** The job's params, a JSON object. */
  readonly params: Record<string, unknown>;
  /** Attempt number, starting at 1. */
  readonly attempt: number;
  readonly queueName: string;
  readonly enqueuedAt: Date;
  /** When the orchestrator cancels the attempt (Redis clock). */
  readonly deadline: Date;
  readonly traceContext: TraceContext;
  /** Retries the job allows after its first attempt. */
  readonly maxRetries: number;
}

/**
 * A job handler. It returns (or resolves to) a JSON-serializable value, or
 * throws: `RetryJob` asks for another attempt, `FatalJobError` fails the job at
 * once, anything else is a handler error retried while retries remain.
 *
 * `signal` aborts when the orchestrator cancels the attempt (a user cancel, the
 * deadline, a shutdown); its `reason` is an `ExecutionCancelled`. A handler that
 * ignores it keeps running until it settles.
 */
export type Handler = (request: ExecutionRequest, signal: AbortSignal) => unknown;

/** Maps job function names to handlers. */
export class Registry {
  readonly #handlers = new Map<string, Handler>();

  /**
   * Registers `handler` for jobs named `name`. Throws when the name is empty,
   * contains `#` (the runner prefix) or is already registered.
   */
  register(name: string, handler: Handler): this {
    if (typeof name !== "string" || name === "") {
      throw new TypeError(`handler name must be a non-empty string, got ${String(name)}`);
    }
    if (name.includes("#")) {
      throw new TypeError(`handler name must not contain '#' (runner prefix), got '${name}'`);
    }
    if (typeof handler !== "function") {
      throw new TypeError(`handler for '${name}' must be a function`);
    }
    if (this.#handlers.has(name)) {
      throw new Error(`a handler named '${name}' is already registered`);
    }
    this.#handlers.set(name, handler);
    return this;
  }

  /** The handler registered for `name`, or undefined. */
  get(name: string): Handler | undefined {
    return this.#handlers.get(name);
  }

  has(name: string): boolean {
    return this.#handlers.has(name);
  }

  /** Every registered name, in registration order. */
  names(): string[] {
    return [...this.#handlers.keys()];
  }

  get size(): number {
    return this.#handlers.size;
  }
}
