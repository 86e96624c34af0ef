/** The producer client: enqueue jobs, read their status, wait for their result. */
import { MAX_DURATION_MS, MAX_RETRIES } from "./gen/limits.js";
import { randomBytes } from "node:crypto";

import { type ClientConfig, type ClientConfigInput, loadConfig } from "./config.js";
import { redactDsn, UNPARSEABLE } from "./dsn.js";
import {
  ConfigError,
  DuplicateJobError,
  InvalidOptionError,
  InvalidParamsError,
  JobNotFoundError,
  PayloadTooLargeError,
  WaitTimeoutError,
} from "./errors.js";
import { isTerminal, type JobResult } from "./job.js";
import { encodeJson, JsonEncodeError, utf8Length } from "./json.js";
import {
  ENQUEUE_EXISTS,
  ENQUEUE_EXISTS_IN_QUEUE,
  ENQUEUE_RATE_LIMITED,
  type EnqueueArgs,
  type EnqueueReply,
  type EnqueueRule,
  type JobHash,
  Keys,
  redisFromDsn,
  Store,
} from "./store.js";
import type { ChannelSubscription } from "./waiting.js";
import { jobResultFromHash, jobStatusFromNumber } from "./wire.js";

/** Options of every enqueue method. */
export interface EnqueueOptions {
  /** Handler parameters: a plain JSON object (default `{}`). */
  readonly params?: Readonly<Record<string, unknown>> | null | undefined;
  readonly queueName?: string | undefined;
  /** Explicit job id (default: a new ULID). Not with `enqueueWithDebounce`. */
  readonly jobId?: string | undefined;
  readonly maxRetries?: number | undefined;
  readonly jobTimeoutSeconds?: number | undefined;
  readonly resultTtlSeconds?: number | undefined;
  readonly deferBySeconds?: number | undefined;
  readonly deferUntil?: Date | undefined;
  /** W3C traceparent to store with the job (what an OpenTelemetry integration sets). */
  readonly traceParent?: string | undefined;
  /** W3C tracestate that goes with traceParent. */
  readonly traceState?: string | undefined;
}

/** Options of `enqueueMany`: those of `enqueue` but `params` and `jobId`, shared by every job. */
export type EnqueueManyOptions = Omit<EnqueueOptions, "params" | "jobId">;

export interface UniqueOptions extends EnqueueOptions {
  /** How long the unique key holds (default `default_unique_job_lock_ttl_seconds`). */
  readonly uniqueTtlSeconds?: number | undefined;
}

export interface RateLimitOptions extends EnqueueOptions {
  readonly rateLimitKey: string;
  readonly rateLimitSeconds: number;
}

export interface DebounceOptions extends Omit<EnqueueOptions, "jobId"> {
  readonly debounceKey: string;
  readonly debounceSeconds: number;
  readonly debounceMaxWaitSeconds?: number | undefined;
}

export interface RRQClientOptions {
  /** Path of an rrq.toml whose `[rrq]` table configures the client. */
  readonly configPath?: string | undefined;
  /** Settings in code (instead of a file). */
  readonly config?: ClientConfigInput | undefined;
  /** Redis DSN; overrides the configuration's and `$RRQ_REDIS_DSN`. */
  readonly redisDsn?: string | undefined;
}

export interface WaitOptions {
  /** Give up (WaitTimeoutError) after this many seconds; default: wait forever. */
  readonly timeoutSeconds?: number | undefined;
}

export const ENQUEUE_OPTIONS: ReadonlySet<string> = new Set([
  "params",
  "queueName",
  "jobId",
  "maxRetries",
  "jobTimeoutSeconds",
  "resultTtlSeconds",
  "deferBySeconds",
  "deferUntil",
  "traceParent",
  "traceState",
]);
export const UNIQUE_OPTIONS: ReadonlySet<string> = new Set(["uniqueTtlSeconds"]);
export const RATE_LIMIT_OPTIONS: ReadonlySet<string> = new Set(["rateLimitKey", "rateLimitSeconds"]);
export const DEBOUNCE_OPTIONS: ReadonlySet<string> = new Set([
  "debounceKey",
  "debounceSeconds",
  "debounceMaxWaitSeconds",
]);

type Rule = EnqueueRule;

const RULE_OF_OPTION: ReadonlyMap<string, Exclude<Rule, "">> = new Map([
  ...[...UNIQUE_OPTIONS].map((o): [string, "unique"] => [o, "unique"]),
  ...[...RATE_LIMIT_OPTIONS].map((o): [string, "rate_limit"] => [o, "rate_limit"]),
  ...[...DEBOUNCE_OPTIONS].map((o): [string, "debounce"] => [o, "debounce"]),
]);
const METHOD_OF_RULE: Readonly<Record<Rule, string>> = {
  "": "enqueue",
  unique: "enqueueWithUniqueKey",
  rate_limit: "enqueueWithRateLimit",
  debounce: "enqueueWithDebounce",
};
const OPTIONS_OF_RULE: Readonly<Record<Rule, ReadonlySet<string>>> = {
  "": ENQUEUE_OPTIONS,
  unique: new Set([...ENQUEUE_OPTIONS, ...UNIQUE_OPTIONS]),
  rate_limit: new Set([...ENQUEUE_OPTIONS, ...RATE_LIMIT_OPTIONS]),
  debounce: new Set([...[...ENQUEUE_OPTIONS].filter((o) => o !== "jobId"), ...DEBOUNCE_OPTIONS]),
};

/**
 * Jobs per enqueue.lua call in enqueueMany(), as in the Python client: a call
 * holds Redis for its whole run (about 10 µs a job), so chunks keep other
 * clients waiting briefly.
 */
export const ENQUEUE_MANY_CHUNK = 500;

const CANCEL_REASON = "cancelled on request";
// How many job id -> queue entries the client remembers for its own jobs.
const QUEUE_CACHE_SIZE = 10_000;

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/**
 * A new job id: a ULID, 48-bit Unix ms timestamp then 80 random bits, as 26
 * Crockford base32 characters, so ids sort by the millisecond they were made.
 * Ten characters shorter than a UUID: the id is stored twice for every waiting
 * job (docs/redis-schema.md), and that is most of a backlog's memory.
 */
export function ulid(): string {
  return ulidStamp() + ulidRandom(randomBytes(10));
}

/** Makes `count` new ULIDs from one read of the random source (enqueueMany). */
function ulidMaker(count: number): () => string {
  const stamp = ulidStamp();
  const random = randomBytes(10 * count);
  let offset = 0;
  return () => stamp + ulidRandom(random.subarray(offset, (offset += 10)));
}

/** The current Unix ms as a ULID's first 10 characters. */
function ulidStamp(): string {
  let stamp = "";
  for (let ms = Date.now(), i = 0; i < 10; i++, ms = Math.floor(ms / 32)) {
    stamp = CROCKFORD.charAt(ms % 32) + stamp;
  }
  return stamp;
}

/** 10 random bytes as a ULID's last 16 characters. */
function ulidRandom(bytes: Uint8Array): string {
  let random = "";
  let pending = 0;
  let bits = 0;
  for (const byte of bytes) {
    pending = ((pending << 8) | byte) & 0xfff; // at most 12 bits are ever waiting
    bits += 8;
    for (; bits >= 5; bits -= 5) random += CROCKFORD.charAt((pending >> (bits - 5)) & 31);
  }
  return random;
}

function show(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "Invalid Date" : `Date(${value.toISOString()})`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Python's round(): halves go to the even neighbour (byte parity of stored ms). */
function roundHalfEven(value: number): number {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The longest duration an option may give, in seconds (limits.ts's MAX_DURATION_MS). */
const MAX_SECONDS = MAX_DURATION_MS / 1000;

function secondsToMs(name: string, value: unknown, positive: boolean): number {
  if (typeof value !== "number") {
    throw new InvalidOptionError(`${name} must be a number of seconds, got ${show(value)}`, name);
  }
  if (!Number.isFinite(value) || value < 0 || (positive && value === 0) || value > MAX_SECONDS) {
    const bound = positive ? "positive" : "non-negative";
    throw new InvalidOptionError(
      `${name} must be a finite ${bound} number of seconds, at most ${MAX_SECONDS} (3,650 days), got ${show(value)}`,
      name,
    );
  }
  const ms = roundHalfEven(value * 1000);
  if (positive && ms === 0) {
    throw new InvalidOptionError(`${name} must be at least 0.001, got ${show(value)}`, name);
  }
  return ms;
}

function dateToMs(value: unknown): number {
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new InvalidOptionError(`deferUntil must be a valid Date, got ${show(value)}`, "deferUntil");
  }
  const ms = Math.floor(value.getTime());
  if (ms < 0) {
    throw new InvalidOptionError(`deferUntil must not be before 1970, got ${show(value)}`, "deferUntil");
  }
  // enqueue.lua checks this against Redis's clock; this copy saves a round trip.
  if (ms > Date.now() + MAX_DURATION_MS) {
    throw new InvalidOptionError(`deferUntil must be at most 3,650 days from now, got ${show(value)}`, "deferUntil");
  }
  return ms;
}

/** In unicode mode, \p{Cs} matches only a surrogate that is not half of a pair. */
const LONE_SURROGATE = /\p{Cs}/u;

function nonEmptyString(name: string, value: unknown): string {
  if (typeof value !== "string" || value === "") {
    throw new InvalidOptionError(`${name} must be a non-empty string, got ${show(value)}`, name);
  }
  // Redis stores UTF-8: a lone surrogate has no UTF-8 form (it would be
  // stored as U+FFFD, a different name than the caller gave).
  if (LONE_SURROGATE.test(value)) {
    throw new InvalidOptionError(`${name} must be valid Unicode text; it holds a lone surrogate: ${show(value)}`, name);
  }
  return value;
}

function optionalString(name: string, value: unknown): string {
  if (value === undefined || value === null) return "";
  if (typeof value !== "string") {
    throw new InvalidOptionError(`${name} must be a string, got ${show(value)}`, name);
  }
  return value;
}

type Options = Readonly<Record<string, unknown>>;

/** The options argument, which must be a plain object (the same rule for every method). */
function optionsObject(options: unknown): Options {
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new InvalidOptionError(`options must be an object, got ${show(options)}`, "options");
  }
  return options as Options;
}

/** Rejects unknown options, and rule options given to the wrong method. */
function checkOptionNames(rule: Rule, rawOptions: unknown): Options {
  const method = METHOD_OF_RULE[rule];
  const options = optionsObject(rawOptions);
  const names = Object.keys(options).sort();
  const allowed = OPTIONS_OF_RULE[rule];
  const foreign = names.filter((key) => RULE_OF_OPTION.has(key) && !allowed.has(key));
  const first = foreign[0];
  if (first !== undefined) {
    const owner = METHOD_OF_RULE[RULE_OF_OPTION.get(first) ?? ""];
    const combined = rule
      ? " (one call applies at most one of the unique, rate-limit and debounce rules)"
      : "";
    throw new InvalidOptionError(`${first} is an option of ${owner}(), not of ${method}()${combined}`, first);
  }
  if (rule === "debounce" && names.includes("jobId")) {
    throw new InvalidOptionError(
      "jobId cannot be combined with enqueueWithDebounce(): the debounce window decides the job id",
      "jobId",
    );
  }
  const unknown = names.filter((key) => !allowed.has(key));
  if (unknown.length > 0) {
    throw new InvalidOptionError(
      `unknown ${method}() option(s): ${unknown.join(", ")}; known options are ${[...allowed].sort().join(", ")}`,
      unknown[0],
    );
  }
  return options;
}

/** `encode()`, whose params errors say they are about `paramsList[index]` of an enqueueMany. */
function namingEntry<T>(index: number, encode: () => T): T {
  try {
    return encode();
  } catch (error) {
    const message = `paramsList[${index}]: ${error instanceof Error ? error.message : String(error)}`;
    if (error instanceof PayloadTooLargeError) throw new PayloadTooLargeError(message, error.size, error.limit);
    if (error instanceof InvalidParamsError) throw new InvalidParamsError(message);
    throw error;
  }
}

const isSet = (value: unknown): boolean => value !== undefined && value !== null;

/** A promise with its resolve and reject functions (Promise.withResolvers needs Node 22). */
function deferred(): { promise: Promise<void>; resolve: () => void; reject: (error: Error) => void } {
  let resolve: () => void = () => undefined;
  let reject: (error: Error) => void = () => undefined;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // It may reject while nothing awaits it; whoever awaits it later still sees the error.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * Enqueues jobs and reads their status.
 *
 * The configuration comes from `config` (camelCase keys), `configPath` (an
 * rrq.toml), else `$RRQ_CONFIG` or `./rrq.toml` when present, else the
 * defaults; `$RRQ_REDIS_DSN` overrides `redis_dsn`, and `redisDsn` overrides
 * both. The constructor does no I/O: Redis is connected on first use.
 */
export class RRQClient {
  readonly config: ClientConfig;
  #store: Store | undefined = undefined;
  readonly #registeredQueues = new Set<string>();
  readonly #jobQueues = new Map<string, string>();

  constructor(options: RRQClientOptions = {}) {
    const config = loadConfig({ configPath: options.configPath, config: options.config });
    this.config = options.redisDsn ? { ...config, redisDsn: options.redisDsn } : config;
  }

  /** The Redis store (connects lazily). */
  get store(): Store {
    if (this.#store === undefined) {
      const redis = openRedis(this.config.redisDsn);
      this.#store = new Store(redis, new Keys(this.config.keyPrefix, redis.options.db ?? 0));
    }
    return this.#store;
  }

  /**
   * Closes the Redis connections, also the one `waitForResult` shares (waits
   * still waiting reject); the client reconnects if used again.
   */
  async close(): Promise<void> {
    const store = this.#store;
    this.#store = undefined;
    this.#registeredQueues.clear();
    await store?.close();
  }

  // --- enqueue ----------------------------------------------------------------

  /** A job's params as the JSON text stored, checked against the payload limit. */
  #paramsJson(raw: unknown): string {
    const params = raw ?? {};
    if (typeof params !== "object" || Array.isArray(params)) {
      throw new InvalidParamsError(`params must be an object, got ${Array.isArray(params) ? "an array" : show(params)}`);
    }
    let paramsJson: string;
    try {
      paramsJson = encodeJson(params, { undefinedValues: "error" });
    } catch (error) {
      if (error instanceof JsonEncodeError) {
        throw new InvalidParamsError(`params are not JSON-serializable: ${error.message}`);
      }
      throw error;
    }
    const size = utf8Length(paramsJson);
    const limit = this.config.maxPayloadBytes;
    if (size > limit) {
      throw new PayloadTooLargeError(
        `params are ${size} bytes of JSON, the limit (max_payload_bytes) is ${limit}`,
        size,
        limit,
      );
    }
    return paramsJson;
  }

  /** Validates everything before anything is written. */
  #buildArgs(rule: Rule, functionName: unknown, rawOptions: unknown): [EnqueueArgs, Options] {
    const options = checkOptionNames(rule, rawOptions ?? {});
    const fn = nonEmptyString("functionName", functionName);
    const paramsJson = this.#paramsJson(options["params"]);
    const limit = this.config.maxPayloadBytes;

    const rawQueue = options["queueName"];
    const queue = nonEmptyString("queueName", isSet(rawQueue) ? rawQueue : this.config.defaultQueueName);
    if (queue.includes("{") || queue.includes("}")) {
      throw new InvalidOptionError(`queueName must not contain braces, got ${show(queue)}`, "queueName");
    }
    const rawId = options["jobId"];
    const jobId = isSet(rawId) ? nonEmptyString("jobId", rawId) : ulid();

    let maxRetries = options["maxRetries"];
    if (!isSet(maxRetries)) maxRetries = this.config.defaultMaxRetries;
    if (typeof maxRetries !== "number" || !Number.isSafeInteger(maxRetries) || maxRetries < 0 || maxRetries > MAX_RETRIES) {
      throw new InvalidOptionError(
        `maxRetries must be an integer from 0 to ${MAX_RETRIES}, got ${show(maxRetries)}`,
        "maxRetries",
      );
    }

    const ms = (name: string, positive: boolean): number => {
      const value = options[name];
      return isSet(value) ? secondsToMs(name, value, positive) : 0;
    };
    const jobTimeoutMs = ms("jobTimeoutSeconds", true);
    const resultTtlMs = ms("resultTtlSeconds", true);
    const deferMs = ms("deferBySeconds", false);
    const deferUntil = options["deferUntil"];
    if (isSet(deferUntil) && isSet(options["deferBySeconds"])) {
      throw new InvalidOptionError("pass either deferBySeconds or deferUntil, not both", "deferUntil");
    }
    const runAtMs = isSet(deferUntil) ? dateToMs(deferUntil) : 0;
    const traceParent = optionalString("traceParent", options["traceParent"]);
    const traceState = optionalString("traceState", options["traceState"]);

    const args: EnqueueArgs = {
      jobId,
      functionName: fn,
      queueName: queue,
      paramsJson,
      maxRetries,
      jobTimeoutMs,
      resultTtlMs,
      deferMs,
      runAtMs,
      maxParamsBytes: limit,
      traceParent,
      traceState,
      rule: "",
      ruleKey: "",
      ruleWindowMs: 0,
      debounceMaxWaitMs: 0,
    };
    return [args, options];
  }

  /** Runs enqueue.lua for validated args. */
  async #submit(args: EnqueueArgs, explicitId: boolean): Promise<EnqueueReply> {
    const store = this.store;
    const register = !this.#registeredQueues.has(args.queueName);
    // A chosen id names one job across every queue: enqueue.lua checks the
    // id registry and writes the job in one step.
    const reply = await store.enqueue(explicitId ? { ...args, registeredId: true } : args, register);
    this.#registeredQueues.add(args.queueName);
    if (reply.code === ENQUEUE_EXISTS) {
      throw new DuplicateJobError(args.jobId, jobStatusFromNumber(reply.value), args.queueName);
    }
    if (reply.code === ENQUEUE_EXISTS_IN_QUEUE) {
      throw new DuplicateJobError(args.jobId, jobStatusFromNumber(reply.value), reply.queue ?? "");
    }
    if (reply.jobId) this.#remember(reply.jobId, args.queueName);
    return reply;
  }

  /**
   * Enqueues a job and returns its id. Throws InvalidOptionError,
   * InvalidParamsError or PayloadTooLargeError (nothing written), or
   * DuplicateJobError when an explicit `jobId` already exists in any queue.
   */
  async enqueue(functionName: string, options: EnqueueOptions = {}): Promise<string> {
    const [args, opts] = this.#buildArgs("", functionName, options);
    const reply = await this.#submit(args, isSet(opts["jobId"]));
    return reply.jobId;
  }

  /**
   * Enqueues one job per entry of `paramsList`; returns their ids in order.
   *
   * `options` are those of `enqueue` except `params` (each job's params are
   * its entry of `paramsList`) and `jobId` (every job gets a new ULID), and
   * apply to every job. Every entry is validated as `enqueue` validates its
   * params before anything is written; then the jobs are written by one
   * enqueue.lua call per `ENQUEUE_MANY_CHUNK` jobs, so a batch costs Redis one
   * script call and the client one round trip per chunk. Each job is written
   * atomically on its own; the batch as a whole is not atomic.
   */
  async enqueueMany(
    functionName: string,
    paramsList: readonly EnqueueOptions["params"][],
    options: EnqueueManyOptions = {},
  ): Promise<string[]> {
    const opts = optionsObject(options ?? {});
    for (const name of ["params", "jobId"]) {
      if (Object.hasOwn(opts, name)) {
        const why = name === "params" ? "each job's params are its entry of paramsList" : "every job gets a new id";
        throw new InvalidOptionError(`${name} is not an option of enqueueMany(): ${why}`, name);
      }
    }
    if (!Array.isArray(paramsList)) {
      throw new InvalidParamsError(`paramsList must be an array of objects, got ${show(paramsList)}`);
    }
    if (paramsList.length === 0) {
      this.#buildArgs("", functionName, opts); // the options are still checked
      return [];
    }
    // The options are checked once; each entry's params as enqueue() checks them.
    const [shared] = namingEntry(0, () => this.#buildArgs("", functionName, { ...opts, params: paramsList[0] }));
    const newId = ulidMaker(paramsList.length - 1);
    const jobs: (readonly [jobId: string, paramsJson: string])[] = [
      [shared.jobId, shared.paramsJson],
      ...paramsList.slice(1).map((params, i) => [newId(), namingEntry(i + 1, () => this.#paramsJson(params))] as const),
    ];
    const queue = shared.queueName;
    const store = this.store;

    const send = (start: number): Promise<EnqueueReply[]> => {
      const chunk = jobs.slice(start, start + ENQUEUE_MANY_CHUNK);
      const sending = store.enqueueMany(shared, chunk, !this.#registeredQueues.has(queue));
      // It may fail while the chunk before it is awaited; its error is read in turn.
      sending.catch(() => undefined);
      return sending;
    };
    const ids: string[] = [];
    const collect = (replies: readonly EnqueueReply[]): void => {
      for (const reply of replies) {
        if (reply.code === ENQUEUE_EXISTS) {
          // A ULID collision: not expected.
          throw new DuplicateJobError(reply.jobId, jobStatusFromNumber(reply.value), queue);
        }
        this.#remember(reply.jobId, queue);
        ids.push(reply.jobId);
      }
      this.#registeredQueues.add(queue);
    };

    // Two chunks in flight: the client packs the next one while Redis runs
    // the script of the last, and neither waits for the other.
    const sent: Promise<EnqueueReply[]>[] = [];
    try {
      for (let start = 0; start < jobs.length; start += ENQUEUE_MANY_CHUNK) {
        sent.push(send(start));
        const oldest = sent.length === 2 ? sent.shift() : undefined;
        if (oldest !== undefined) collect(await oldest);
      }
      for (let oldest = sent.shift(); oldest !== undefined; oldest = sent.shift()) collect(await oldest);
    } finally {
      // After an error: let the chunk still in flight end before returning.
      for (const sending of sent) await sending.catch(() => undefined);
    }
    return ids;
  }

  /**
   * Enqueues a job unless `uniqueKey` is held (per queue); returns the holder's id.
   *
   * The first call writes the job and holds the key for `uniqueTtlSeconds`;
   * within that time every further call writes nothing and returns the first
   * job's id, even after that job finished.
   */
  async enqueueWithUniqueKey(
    functionName: string,
    uniqueKey: string,
    options: UniqueOptions = {},
  ): Promise<string> {
    const [args, opts] = this.#buildArgs("unique", functionName, options);
    const key = nonEmptyString("uniqueKey", uniqueKey);
    let ttl = opts["uniqueTtlSeconds"];
    if (!isSet(ttl)) ttl = this.config.defaultUniqueJobLockTtlSeconds;
    const ttlMs = secondsToMs("uniqueTtlSeconds", ttl, true);
    const reply = await this.#submit(
      { ...args, rule: "unique", ruleKey: key, ruleWindowMs: ttlMs },
      isSet(opts["jobId"]),
    );
    return reply.jobId;
  }

  /**
   * Enqueues a job unless its rate-limit window is closed; returns its id, or
   * null (nothing written) inside the window.
   */
  async enqueueWithRateLimit(functionName: string, options: RateLimitOptions): Promise<string | null> {
    const [args, opts] = this.#buildArgs("rate_limit", functionName, options);
    const key = nonEmptyString("rateLimitKey", opts["rateLimitKey"]);
    if (!isSet(opts["rateLimitSeconds"])) {
      throw new InvalidOptionError("rateLimitSeconds is required", "rateLimitSeconds");
    }
    const windowMs = secondsToMs("rateLimitSeconds", opts["rateLimitSeconds"], true);
    const reply = await this.#submit(
      { ...args, rule: "rate_limit", ruleKey: key, ruleWindowMs: windowMs },
      isSet(opts["jobId"]),
    );
    return reply.code === ENQUEUE_RATE_LIMITED ? null : reply.jobId;
  }

  /**
   * Enqueues a debounced job: only the last call in a window runs. Every call
   * in a window returns the same id; the waiting job takes the newest params
   * and runs `debounceSeconds` after the last call, but never later than
   * `debounceMaxWaitSeconds` after the first.
   */
  async enqueueWithDebounce(functionName: string, options: DebounceOptions): Promise<string> {
    const [args, opts] = this.#buildArgs("debounce", functionName, options);
    const key = nonEmptyString("debounceKey", opts["debounceKey"]);
    if (!isSet(opts["debounceSeconds"])) {
      throw new InvalidOptionError("debounceSeconds is required", "debounceSeconds");
    }
    const windowMs = secondsToMs("debounceSeconds", opts["debounceSeconds"], true);
    let maxWaitMs = 0;
    if (isSet(opts["debounceMaxWaitSeconds"])) {
      maxWaitMs = secondsToMs("debounceMaxWaitSeconds", opts["debounceMaxWaitSeconds"], true);
      if (maxWaitMs < windowMs) {
        throw new InvalidOptionError(
          `debounceMaxWaitSeconds must be at least debounceSeconds, got ${show(opts["debounceMaxWaitSeconds"])} < ${show(opts["debounceSeconds"])}`,
          "debounceMaxWaitSeconds",
        );
      }
    }
    const reply = await this.#submit(
      { ...args, rule: "debounce", ruleKey: key, ruleWindowMs: windowMs, debounceMaxWaitMs: maxWaitMs },
      false,
    );
    return reply.jobId;
  }

  // --- status -----------------------------------------------------------------

  #remember(jobId: string, queue: string): void {
    this.#jobQueues.delete(jobId);
    this.#jobQueues.set(jobId, queue);
    while (this.#jobQueues.size > QUEUE_CACHE_SIZE) {
      const oldest = this.#jobQueues.keys().next();
      if (oldest.done) break;
      this.#jobQueues.delete(oldest.value);
    }
  }

  /** The job's queue and record: the cached queue first, else every queue. */
  async #locate(jobId: string): Promise<[string, JobHash] | null> {
    const store = this.store;
    const queue = this.#jobQueues.get(jobId);
    if (queue !== undefined) {
      const fields = await store.getJob(queue, jobId);
      if (fields !== null) return [queue, fields];
    }
    const found = (await store.findRegisteredJob(jobId)) ?? (await store.findJob(jobId, await store.queues()));
    if (found !== null) this.#remember(jobId, found[0]);
    return found;
  }

  /** The job's current record, or null when no such job exists (or it expired). */
  async getJobStatus(jobId: string): Promise<JobResult | null> {
    nonEmptyString("jobId", jobId);
    const found = await this.#locate(jobId);
    return found === null ? null : jobResultFromHash(found[1], jobId, found[0]);
  }

  /**
   * Waits until the job is terminal (COMPLETED, FAILED or CANCELLED).
   *
   * Subscribes to the job's done channel before reading its status, so a
   * transition between the two cannot be missed, then waits for the message
   * without polling. Every wait of the client shares one subscriber
   * connection; when it reconnects, the job is read again, as a message may
   * have been lost meanwhile. Throws JobNotFoundError for an unknown id,
   * WaitTimeoutError when `timeoutSeconds` pass first, and RRQError when the
   * client is closed meanwhile.
   */
  async waitForResult(jobId: string, options: WaitOptions = {}): Promise<JobResult> {
    nonEmptyString("jobId", jobId);
    const { timeoutSeconds } = options;
    if (timeoutSeconds !== undefined) secondsToMs("timeoutSeconds", timeoutSeconds, false);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      if (timeoutSeconds !== undefined) {
        timer = setTimeout(() => reject(new WaitTimeoutError(jobId, timeoutSeconds)), timeoutSeconds * 1000);
      }
    });
    timedOut.catch(() => undefined);
    const within = <T>(promise: Promise<T>): Promise<T> => Promise.race([promise, timedOut]);

    let subscription: ChannelSubscription | undefined;
    try {
      const found = await within(this.#locate(jobId));
      if (found === null) throw new JobNotFoundError(jobId);
      const [queue] = found;
      const store = this.store;
      let wake = deferred();
      subscription = store.subscribeDone(queue, jobId, {
        wake: () => wake.resolve(),
        fail: (error) => wake.reject(error),
      });
      await within(subscription.ready);
      for (;;) {
        const waiting = wake.promise;
        const fields = await within(store.getJob(queue, jobId));
        if (fields === null) throw new JobNotFoundError(jobId);
        const result = jobResultFromHash(fields, jobId, queue);
        if (isTerminal(result.status)) return result;
        await within(waiting);
        wake = deferred();
      }
    } finally {
      clearTimeout(timer);
      subscription?.release();
    }
  }

  // --- cancellation -------------------------------------------------------------

  /**
   * Cancels a job that has not finished; returns whether it will end CANCELLED.
   *
   * A waiting job becomes CANCELLED at once. A running job is marked
   * `cancel_requested` and its orchestrator cancels the handler (it ends
   * CANCELLED, or COMPLETED if the handler finished first). A finished job is
   * left as it is: false. Throws JobNotFoundError for an unknown id.
   */
  async cancel(jobId: string): Promise<boolean> {
    nonEmptyString("jobId", jobId);
    const found = await this.#locate(jobId);
    if (found === null) throw new JobNotFoundError(jobId);
    const [code] = await this.store.cancel(
      found[0],
      jobId,
      CANCEL_REASON,
      roundHalfEven(this.config.defaultResultTtlSeconds * 1000),
    );
    if (code === -1) throw new JobNotFoundError(jobId);
    return code > 0;
  }
}

/**
 * `redisFromDsn`, but an invalid DSN fails with a ConfigError that names only
 * its scheme: the URL parser's TypeError carries the whole DSN, password
 * included, in its `input` property.
 */
function openRedis(dsn: string): ReturnType<typeof redisFromDsn> {
  try {
    return redisFromDsn(dsn);
  } catch {
    const shown = redactDsn(dsn);
    const scheme = shown === UNPARSEABLE ? "unknown" : shown.split("://")[0];
    throw new ConfigError(
      `redis_dsn is not a valid Redis DSN (scheme ${scheme}; the rest is not shown, it may contain a password)`,
    );
  }
}
