/**
 * rrq-ts: the TypeScript producer client and runner runtime of RRQ.
 *
 * Layout: client.ts (RRQClient, the producer), store.ts (every Redis key and
 * script call), waiting.ts (the subscriber connection waits share),
 * config.ts (rrq.toml), job.ts (JobStatus, JobResult), errors.ts,
 * registry.ts (Registry, ExecutionRequest), runner.ts (the runner runtime),
 * wire.ts (the only module that touches generated protobuf types),
 * bin/rrq-ts-runner.ts (the runner CLI), conformance/ (fixture programs).
 */
export {
  ENQUEUE_MANY_CHUNK,
  RRQClient,
  ulid,
  type DebounceOptions,
  type EnqueueManyOptions,
  type EnqueueOptions,
  type RateLimitOptions,
  type RRQClientOptions,
  type UniqueOptions,
  type WaitOptions,
} from "./client.js";
export { loadConfig, type ClientConfig, type ClientConfigInput } from "./config.js";
export { redactDsn } from "./dsn.js";
export {
  ConfigError,
  DuplicateJobError,
  FatalJobError,
  InvalidArgumentError,
  InvalidOptionError,
  InvalidParamsError,
  JobNotFoundError,
  PayloadTooLargeError,
  RetryJob,
  RRQError,
  WaitTimeoutError,
} from "./errors.js";
export { isTerminal, JobStatus, type AttemptError, type JobResult } from "./job.js";
export { Registry, type ExecutionRequest, type Handler, type TraceContext } from "./registry.js";
export {
  ExecutionCancelled,
  Runner,
  RunnerConfigError,
  type RunnerOptions,
  type RunnerSettings,
} from "./runner.js";
