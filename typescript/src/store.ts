/**
 * The Redis contract on the TypeScript side (docs/redis-schema.md).
 *
 * This is the only module that builds Redis key names and runs the Lua
 * scripts. The scripts come from src/gen/lua.ts, which `make gen` writes from
 * rust/rrq-store/lua/; they run with EVALSHA and are sent again (EVAL) when
 * Redis answers NOSCRIPT.
 */
import { createHash } from "node:crypto";
import { Redis, type RedisOptions } from "ioredis";

import {
  InvalidArgumentError,
  InvalidParamsError,
  PayloadTooLargeError,
  RRQError,
} from "./errors.js";
import { LUA_SCRIPTS, type ScriptName } from "./gen/lua.js";
import { type ChannelSubscription, type ChannelWaiter, SharedSubscriber } from "./waiting.js";

export const QUEUES_KEY = "rrq:queues";

const queuePrefix = (queue: string): string => `rrq:{${queue}}`;

/** `rrq:{<queue>}:job:`, the prefix of every job hash of a queue. */
export const jobKeyPrefix = (queue: string): string => `${queuePrefix(queue)}:job:`;
/** `rrq:{<queue>}:job:<id>`: the job record. */
export const jobKey = (queue: string, jobId: string): string => jobKeyPrefix(queue) + jobId;
/** `rrq:{<queue>}:due`: waiting job ids scored by run_at_ms. */
export const dueKey = (queue: string): string => `${queuePrefix(queue)}:due`;
/** `rrq:{<queue>}:active`: active job ids scored by lease deadline. */
export const activeKey = (queue: string): string => `${queuePrefix(queue)}:active`;
/** `rrq:{<queue>}:dlq`: dead-lettered job ids scored by time of death. */
export const dlqKey = (queue: string): string => `${queuePrefix(queue)}:dlq`;
/** `rrq:{<queue>}:unique:<key>`: id of the job holding a unique key. */
export const uniqueKey = (queue: string, key: string): string => `${queuePrefix(queue)}:unique:${key}`;
/** `rrq:{<queue>}:rate_limit:<key>`: set while a rate-limit window is closed. */
export const rateLimitKey = (queue: string, key: string): string =>
  `${queuePrefix(queue)}:rate_limit:${key}`;
/** `rrq:{<queue>}:debounce:<key>`: the job waiting in an open debounce window. */
export const debounceKey = (queue: string, key: string): string =>
  `${queuePrefix(queue)}:debounce:${key}`;
/** `rrq:{<queue>}:cancel`: ids of running jobs whose cancellation was requested. */
export const cancelChannel = (queue: string): string => `${queuePrefix(queue)}:cancel`;
/** `rrq:{<queue>}:wake`: published when a job of the queue becomes due. */
export const wakeChannel = (queue: string): string => `${queuePrefix(queue)}:wake`;
/** `rrq:{<queue>}:done:<id>`: published on the job's terminal transition. */
export const doneChannel = (queue: string, jobId: string): string =>
  `${queuePrefix(queue)}:done:${jobId}`;

/** An enqueue rule: none (""), unique, rate_limit or debounce. */
export type EnqueueRule = "" | "unique" | "rate_limit" | "debounce";

/** The Redis key of an enqueue rule. */
export function ruleKey(rule: Exclude<EnqueueRule, "">, queue: string, key: string): string {
  switch (rule) {
    case "unique":
      return uniqueKey(queue, key);
    case "rate_limit":
      return rateLimitKey(queue, key);
    case "debounce":
      return debounceKey(queue, key);
  }
}

// The error codes of docs/redis-schema.md ("Error codes"), the one source.
const SCRIPT_ERRORS: Readonly<Record<string, new (message: string) => RRQError>> = {
  RRQ_PAYLOAD_TOO_LARGE: PayloadTooLargeError,
  RRQ_INVALID_PARAMS: InvalidParamsError,
  RRQ_INVALID_ARGUMENT: InvalidArgumentError,
};

/** The typed error for a script's `RRQ_<CODE> message` error reply, or undefined. */
export function scriptError(error: Error): RRQError | undefined {
  const text = error.message;
  const space = text.indexOf(" ");
  const code = space < 0 ? text : text.slice(0, space);
  const ErrorType = SCRIPT_ERRORS[code];
  if (ErrorType === undefined) return undefined;
  const message = space < 0 ? "" : text.slice(space + 1);
  return new ErrorType(message || code);
}

/** ARGV of enqueue.lua, already validated by the client. */
export interface EnqueueArgs {
  readonly jobId: string;
  readonly functionName: string;
  readonly queueName: string;
  readonly paramsJson: string;
  readonly maxRetries: number;
  readonly jobTimeoutMs: number;
  readonly resultTtlMs: number;
  readonly deferMs: number;
  readonly runAtMs: number;
  readonly maxParamsBytes: number;
  readonly traceParent: string;
  readonly traceState: string;
  readonly rule: EnqueueRule;
  readonly ruleKey: string;
  readonly ruleWindowMs: number;
  readonly debounceMaxWaitMs: number;
}

// enqueue.lua's reply codes.
export const ENQUEUE_EXISTS = 0;
export const ENQUEUE_CREATED = 1;
export const ENQUEUE_UNIQUE_HELD = 2;
export const ENQUEUE_RATE_LIMITED = 3;
export const ENQUEUE_DEBOUNCED = 4;

/** enqueue.lua's answer `{code, job_id, value}` (see the ENQUEUE_* codes). */
export interface EnqueueReply {
  readonly code: number;
  readonly jobId: string;
  readonly value: number;
}

/** A job hash as HGETALL returns it (field name -> text). */
export type JobHash = Readonly<Record<string, string>>;

/**
 * Opens an ioredis client for an RRQ DSN: `redis://`, `rediss://`,
 * `unix://path` or `redis+unix://path` (`?db=N` selects the database).
 * The connection opens on first use.
 */
export function redisFromDsn(dsn: string, extra: RedisOptions = {}): Redis {
  const options: RedisOptions = { lazyConnect: true, maxRetriesPerRequest: 3, ...extra };
  for (const scheme of ["redis+unix://", "unix://"]) {
    if (dsn.startsWith(scheme)) {
      const url = new URL(`unix://${dsn.slice(scheme.length)}`);
      const db = url.searchParams.get("db");
      return new Redis({
        ...options,
        path: decodeURIComponent(url.pathname),
        ...(db !== null ? { db: Number(db) } : {}),
        ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
      });
    }
  }
  return new Redis(dsn, options);
}

type PipelineCommand = readonly [command: string, args: readonly (string | number)[]];

const SHAS = new Map<ScriptName, string>();
function scriptSha(name: ScriptName): string {
  let sha = SHAS.get(name);
  if (sha === undefined) {
    sha = createHash("sha1").update(LUA_SCRIPTS[name], "utf8").digest("hex");
    SHAS.set(name, sha);
  }
  return sha;
}

const asText = (value: unknown): string => (value === null || value === undefined ? "" : String(value));

/** KEYS and ARGV of enqueue.lua for `args`. */
function enqueueCall(args: EnqueueArgs): [string[], (string | number)[]] {
  const queue = args.queueName;
  const keys = [jobKey(queue, args.jobId), dueKey(queue)];
  if (args.rule !== "") {
    keys.push(ruleKey(args.rule, queue, args.ruleKey), jobKeyPrefix(queue));
  }
  const argv = [
    args.jobId,
    args.functionName,
    queue,
    args.paramsJson,
    args.maxRetries,
    args.jobTimeoutMs,
    args.resultTtlMs,
    args.deferMs,
    args.runAtMs,
    args.traceParent,
    args.traceState,
    args.maxParamsBytes,
    wakeChannel(queue),
    args.rule,
    args.ruleKey,
    args.ruleWindowMs,
    args.debounceMaxWaitMs,
  ];
  return [keys, argv];
}

const registering = (register: boolean, queue: string): PipelineCommand[] =>
  register ? [["sadd", [QUEUES_KEY, queue]]] : [];

/** Key layout and scripts over one ioredis client. */
export class Store {
  readonly redis: Redis;
  #subscriber: SharedSubscriber | null = null;

  constructor(redis: Redis) {
    this.redis = redis;
  }

  /**
   * Runs a script in one pipeline after the `before` commands; the whole
   * pipeline is sent again, with EVAL, when Redis does not know the script.
   */
  private async run(
    name: ScriptName,
    keys: readonly string[],
    args: readonly (string | number)[],
    before: readonly PipelineCommand[] = [],
  ): Promise<unknown[]> {
    for (const useSha of [true, false]) {
      const pipeline = this.redis.pipeline();
      for (const [command, commandArgs] of before) {
        pipeline.call(command, ...commandArgs);
      }
      if (useSha) {
        pipeline.evalsha(scriptSha(name), keys.length, ...keys, ...args);
      } else {
        pipeline.eval(LUA_SCRIPTS[name], keys.length, ...keys, ...args);
      }
      const replies = (await pipeline.exec()) ?? [];
      let noScript = false;
      for (const [error] of replies) {
        if (error === null) continue;
        if (error.message.startsWith("NOSCRIPT")) {
          noScript = true;
          break;
        }
        throw scriptError(error) ?? error;
      }
      if (!noScript) {
        const last = replies[replies.length - 1];
        return (last?.[1] ?? []) as unknown[];
      }
    }
    throw new RRQError(`script ${name} could not be loaded`);
  }

  /** Writes a job (enqueue.lua), preceded by `SADD rrq:queues <queue>` when asked. */
  async enqueue(args: EnqueueArgs, registerQueue: boolean): Promise<EnqueueReply> {
    const [keys, argv] = enqueueCall(args);
    const reply = await this.run("enqueue", keys, argv, registering(registerQueue, args.queueName));
    const [code, jobId, value] = reply;
    return { code: Number(code), jobId: asText(jobId), value: Number(value) };
  }

  /**
   * Writes `jobs`, pairs of (job id, params JSON) that share every other
   * argument of `shared` (whose own job id and params are not used), in one
   * enqueue.lua call.
   *
   * Each job is written atomically on its own (one reply each, in order);
   * `shared` must carry no rule. Preceded by `SADD rrq:queues` when asked.
   */
  async enqueueMany(
    shared: EnqueueArgs,
    jobs: readonly (readonly [jobId: string, paramsJson: string])[],
    registerQueue: boolean,
  ): Promise<EnqueueReply[]> {
    const [head, ...more] = jobs;
    if (head === undefined) return [];
    const first: EnqueueArgs = { ...shared, jobId: head[0], paramsJson: head[1] };
    if (more.length === 0) return [await this.enqueue(first, registerQueue)]; // one job answers as enqueue() does
    const [keys, argv] = enqueueCall(first);
    for (const [jobId, paramsJson] of more) argv.push(jobId, paramsJson);
    const [runAt, ...statuses] = await this.run(
      "enqueue",
      keys,
      argv,
      registering(registerQueue, first.queueName),
    );
    const ids = [first.jobId, ...more.map(([jobId]) => jobId)];
    if (statuses.length !== ids.length) {
      throw new RRQError(`enqueue.lua answered ${statuses.length} statuses for ${ids.length} jobs`);
    }
    return ids.map((jobId, index): EnqueueReply => {
      const status = Number(statuses[index]);
      return status
        ? { code: ENQUEUE_EXISTS, jobId, value: status }
        : { code: ENQUEUE_CREATED, jobId, value: Number(runAt) };
    });
  }

  /** Every registered queue name, sorted. */
  async queues(): Promise<string[]> {
    const members = await this.redis.smembers(QUEUES_KEY);
    return members.sort();
  }

  /** [queue, status number] of the first queue holding `jobId`, in one round trip. */
  async findStatus(jobId: string, queues: readonly string[]): Promise<[string, number] | null> {
    if (queues.length === 0) return null;
    const pipeline = this.redis.pipeline();
    for (const queue of queues) pipeline.hget(jobKey(queue, jobId), "status");
    const replies = (await pipeline.exec()) ?? [];
    for (const [index, queue] of queues.entries()) {
      const [error, status] = replies[index] ?? [null, null];
      if (error) throw error;
      if (status !== null && status !== undefined) return [queue, Number(status)];
    }
    return null;
  }

  /** [queue, job hash] of the first queue holding `jobId`, in one round trip. */
  async findJob(jobId: string, queues: readonly string[]): Promise<[string, JobHash] | null> {
    if (queues.length === 0) return null;
    const pipeline = this.redis.pipeline();
    for (const queue of queues) pipeline.hgetall(jobKey(queue, jobId));
    const replies = (await pipeline.exec()) ?? [];
    for (const [index, queue] of queues.entries()) {
      const [error, fields] = replies[index] ?? [null, null];
      if (error) throw error;
      const hash = fields as JobHash | null;
      if (hash && Object.keys(hash).length > 0) return [queue, hash];
    }
    return null;
  }

  /** The job hash, or null when it does not exist. */
  async getJob(queue: string, jobId: string): Promise<JobHash | null> {
    const fields = await this.redis.hgetall(jobKey(queue, jobId));
    return Object.keys(fields).length > 0 ? fields : null;
  }

  /** Runs cancel.lua: [code, status]; 1 cancelled, 2 requested, 0 finished, -1 unknown. */
  async cancel(
    queue: string,
    jobId: string,
    reason: string,
    defaultResultTtlMs: number,
  ): Promise<[number, number]> {
    const [code, status] = await this.run(
      "cancel",
      [jobKey(queue, jobId), dueKey(queue)],
      [jobId, reason, defaultResultTtlMs, doneChannel(queue, jobId), cancelChannel(queue)],
    );
    return [Number(code), Number(status)];
  }

  /**
   * Joins the job's done channel on the store's one subscriber connection,
   * opened on first use. `waiter.wake` runs on every message on the channel
   * and after a reconnect; read the job only once `ready` resolved.
   */
  subscribeDone(queue: string, jobId: string, waiter: ChannelWaiter): ChannelSubscription {
    // maxRetriesPerRequest null: a SUBSCRIBE or UNSUBSCRIBE dropped after a few
    // reconnect attempts would leave Redis's subscriptions and the counts
    // apart; they wait for the connection instead (a wait has its own timeout).
    // No ready check: ioredis writes a SUBSCRIBE made during the handshake at
    // once, and the check's INFO, refused in subscriber mode, then fails the
    // connection. The check waits for Redis to load its data; SUBSCRIBE works
    // while it loads.
    this.#subscriber ??= new SharedSubscriber(() =>
      this.redis.duplicate({ lazyConnect: true, maxRetriesPerRequest: null, enableReadyCheck: false }),
    );
    return this.#subscriber.subscribe(doneChannel(queue, jobId), waiter);
  }

  /** Closes the subscriber connection (failing its waiters) and the connection. */
  async close(): Promise<void> {
    this.#subscriber?.close();
    this.#subscriber = null;
    try {
      await this.redis.quit();
    } catch {
      this.redis.disconnect();
    }
  }
}
