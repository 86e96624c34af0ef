/**
 * Every error RRQ throws, plus the two a handler throws to steer its job.
 *
 * Class names match the Python package's exception names (the conformance
 * suite's producer fixture reports them as the error type).
 */

/** Base class of every RRQ error. */
export class RRQError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The configuration (rrq.toml, an object or the environment) is invalid. */
export class ConfigError extends RRQError {}

/** An enqueue option is unknown or has an invalid value; nothing was written. */
export class InvalidOptionError extends RRQError {
  /** The offending option (or argument), when there is one. */
  readonly option: string | undefined;

  constructor(message: string, option?: string) {
    super(message);
    this.option = option;
  }
}

/** The job params are not a JSON object (`RRQ_INVALID_PARAMS`); nothing was written. */
export class InvalidParamsError extends RRQError {}

/** The params JSON is larger than `max_payload_bytes` (`RRQ_PAYLOAD_TOO_LARGE`). */
export class PayloadTooLargeError extends RRQError {
  readonly size: number | undefined;
  readonly limit: number | undefined;

  constructor(message: string, size?: number, limit?: number) {
    super(message);
    this.size = size;
    this.limit = limit;
  }
}

/** A script argument was rejected by Redis (`RRQ_INVALID_ARGUMENT`). */
export class InvalidArgumentError extends RRQError {}

/** A job with this id already exists; nothing was written. */
export class DuplicateJobError extends RRQError {
  readonly jobId: string;
  /** The existing job's status (a `JobStatus` value). */
  readonly status: string;
  readonly queueName: string;

  constructor(jobId: string, status: string, queueName = "") {
    super(`job '${jobId}' already exists in queue '${queueName}' (${status})`);
    this.jobId = jobId;
    this.status = status;
    this.queueName = queueName;
  }
}

/** No job with this id exists (never enqueued, or its record expired). */
export class JobNotFoundError extends RRQError {
  readonly jobId: string;

  constructor(jobId: string) {
    super(`job '${jobId}' not found`);
    this.jobId = jobId;
  }
}

/** `waitForResult` gave up before the job reached a terminal status. */
export class WaitTimeoutError extends RRQError {
  readonly jobId: string;

  constructor(jobId: string, timeoutSeconds: number) {
    super(`job '${jobId}' did not finish within ${timeoutSeconds}s`);
    this.jobId = jobId;
  }
}

/**
 * Thrown by a handler to ask for another attempt.
 *
 * `deferSeconds` sets the delay before it; without it the orchestrator's
 * backoff applies. The retry still counts against `maxRetries`. A negative
 * delay means "now"; NaN, an infinity or more than 3,650 days (315,360,000 s)
 * fails the attempt as `InvalidRetryDelay` instead.
 */
export class RetryJob extends RRQError {
  readonly deferSeconds: number | undefined;
  readonly reason: string;

  constructor(options: { deferSeconds?: number; message?: string } = {}) {
    super(options.message || "retry requested");
    this.deferSeconds = options.deferSeconds;
    this.reason = options.message ?? "";
  }
}

/** Thrown by a handler to fail its job at once, without retrying. */
export class FatalJobError extends RRQError {}
