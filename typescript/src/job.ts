/** Job status and the result record returned by the client. */

/**
 * Where a job is in its lifecycle (`rrq.v1.JobStatus` in job.proto).
 *
 * PENDING, ACTIVE and RETRYING are live; COMPLETED, FAILED and CANCELLED are
 * terminal and never change again.
 */
export enum JobStatus {
  PENDING = "PENDING",
  ACTIVE = "ACTIVE",
  RETRYING = "RETRYING",
  COMPLETED = "COMPLETED",
  FAILED = "FAILED",
  CANCELLED = "CANCELLED",
}

const TERMINAL: ReadonlySet<JobStatus> = new Set([
  JobStatus.COMPLETED,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
]);

/** True for COMPLETED, FAILED and CANCELLED. */
export function isTerminal(status: JobStatus): boolean {
  return TERMINAL.has(status);
}

/** The error of one failed attempt (an entry of the job's `errors_json`). */
export interface AttemptError {
  readonly attempt: number;
  readonly errorType: string;
  readonly message: string;
  readonly traceback: string;
  /** When the failure was recorded (Redis clock). */
  readonly at: Date;
}

/**
 * A snapshot of one job record.
 *
 * `result` is the handler's decoded JSON return value (null until the job
 * completed); `errors` holds every failed attempt's error, oldest first.
 * Times are null when the record does not hold them (yet).
 */
export interface JobResult {
  readonly jobId: string;
  readonly status: JobStatus;
  readonly functionName: string;
  readonly queueName: string;
  readonly attempt: number;
  readonly maxRetries: number;
  readonly result: unknown;
  readonly lastError: string;
  readonly lastErrorType: string;
  readonly enqueuedAt: Date | null;
  readonly runAt: Date | null;
  readonly startedAt: Date | null;
  readonly finishedAt: Date | null;
  readonly errors: readonly AttemptError[];
  readonly uniqueKey: string;
  readonly rateLimitKey: string;
  readonly debounceKey: string;
  readonly cancelRequested: boolean;
  readonly traceParent: string;
  readonly traceState: string;
}
