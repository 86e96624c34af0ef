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
  InvalidOptionError,
  InvalidParamsError,
  PayloadTooLargeError,
  RRQError,
} from "./errors.js";
import { LUA_SCRIPTS, type ScriptName } from "./gen/lua.js";
import { type ChannelSubscription, type ChannelWaiter, SharedSubscriber } from "./waiting.js";

/** The key prefix when none is configured (`key_prefix` in rrq.toml). */
export const DEFAULT_PREFIX = "rrq";
const PREFIX_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
/** What a key prefix may be, for error messages. */
export const KEY_PREFIX_RULE = "1 to 64 characters of letters, digits, '_', '-', '.' and ':'";

/**
 * Whether `prefix` is a valid key prefix: 1 to 64 characters of ASCII
 * letters, digits, `_ - . :` (no braces, which would change the Redis Cluster
 * hash slot, and no glob characters, since channel patterns are built from it).
 */
export function isKeyPrefix(prefix: unknown): prefix is string {
  return typeof prefix === "string" && PREFIX_RE.test(prefix);
}

/** `prefix` when it is a valid key prefix (see isKeyPrefix), else an InvalidOptionError. */
export function checkKeyPrefix(prefix: unknown): string {
  if (!isKeyPrefix(prefix)) {
    throw new InvalidOptionError(`keyPrefix must be ${KEY_PREFIX_RULE}, got ${JSON.stringify(prefix)}`, "keyPrefix");
  }
  return prefix;
}

/** An enqueue rule: none (""), unique, rate_limit or debounce. */
export type EnqueueRule = "" | "unique" | "rate_limit" | "debounce";

/**
 * Every key and channel name of one namespace: a key prefix in one database.
 * Keys live in a database; Pub/Sub channels are server-wide, so every channel
 * name carries the database as well as the prefix (`<prefix>:db<N>:{<queue>}:wake`).
 * See docs/redis-schema.md.
 */
export class Keys {
  readonly prefix: string;
  readonly db: number;
  readonly #keys: string;
  readonly #channels: string;

  constructor(prefix: string = DEFAULT_PREFIX, db = 0) {
    this.prefix = checkKeyPrefix(prefix);
    this.db = db;
    this.#keys = `${prefix}:`;
    this.#channels = `${prefix}:db${db}:`;
  }

  /** `<prefix>:queues`: every queue a producer has used. */
  get queues(): string {
    return `${this.#keys}queues`;
  }
  /** `<prefix>:ids`: job id -> record key, for ids the producer chose. */
  get ids(): string {
    return `${this.#keys}ids`;
  }
  /** The queue of a record key `<prefix>:{<queue>}:job:<id>`, or null. */
  queueOfJobKey(key: string, jobId: string): string | null {
    const head = `${this.#keys}{`;
    const tail = `}:job:${jobId}`;
    if (key.startsWith(head) && key.endsWith(tail) && key.length > head.length + tail.length) {
      return key.slice(head.length, key.length - tail.length);
    }
    return null;
  }
  /** `<prefix>:{<queue>}:job:`, the prefix of every job hash of a queue. */
  jobPrefix(queue: string): string {
    return `${this.#keys}{${queue}}:job:`;
  }
  /** `<prefix>:{<queue>}:job:<id>`: the job record. */
  job(queue: string, jobId: string): string {
    return this.jobPrefix(queue) + jobId;
  }
  /** `<prefix>:{<queue>}:due`: waiting job ids scored by run_at_ms. */
  due(queue: string): string {
    return `${this.#keys}{${queue}}:due`;
  }
  /** `<prefix>:{<queue>}:active`: active job ids scored by lease deadline. */
  active(queue: string): string {
    return `${this.#keys}{${queue}}:active`;
  }
  /** `<prefix>:{<queue>}:dlq`: dead-lettered job ids scored by time of death. */
  dlq(queue: string): string {
    return `${this.#keys}{${queue}}:dlq`;
  }
  /** The key of an enqueue rule: `<prefix>:{<queue>}:<rule>:<key>`. */
  rule(rule: Exclude<EnqueueRule, "">, queue: string, key: string): string {
    return `${this.#keys}{${queue}}:${rule}:${key}`;
  }
  /** `<prefix>:db<N>:{<queue>}:cancel`: ids of running jobs whose cancellation was requested. */
  cancelChannel(queue: string): string {
    return `${this.#channels}{${queue}}:cancel`;
  }
  /** `<prefix>:db<N>:{<queue>}:wake`: published when a job of the queue becomes due. */
  wakeChannel(queue: string): string {
    return `${this.#channels}{${queue}}:wake`;
  }
  /** `<prefix>:db<N>:{<queue>}:done:<id>`: published on the job's terminal transition. */
  doneChannel(queue: string, jobId: string): string {
    return `${this.#channels}{${queue}}:done:${jobId}`;
  }
}

/** The default namespace (prefix `rrq`, database 0), for tools and tests. */
export const DEFAULT_KEYS = new Keys();
export const QUEUES_KEY = DEFAULT_KEYS.queues;
export const jobKeyPrefix = (queue: string): string => DEFAULT_KEYS.jobPrefix(queue);
export const jobKey = (queue: string, jobId: string): string => DEFAULT_KEYS.job(queue, jobId);
export const dueKey = (queue: string): string => DEFAULT_KEYS.due(queue);
export const activeKey = (queue: string): string => DEFAULT_KEYS.active(queue);
export const dlqKey = (queue: string): string => DEFAULT_KEYS.dlq(queue);
export const uniqueKey = (queue: string, key: string): string => DEFAULT_KEYS.rule("unique", queue, key);
export const rateLimitKey = (queue: string, key: string): string => DEFAULT_KEYS.rule("rate_limit", queue, key);
export const debounceKey = (queue: string, key: string): string => DEFAULT_KEYS.rule("debounce", queue, key);
export const doneChannel = (queue: string, jobId: string): string => DEFAULT_KEYS.doneChannel(queue, jobId);

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
  /**
   * The producer chose `jobId`: register it in the id registry
   * (`<prefix>:ids`), so that it names at most one job across every queue.
   */
  readonly registeredId?: boolean;
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
  /** ENQUEUE_EXISTS_IN_QUEUE: the queue of the job that holds the id. */
  readonly queue?: string;
}

/** A registered id is held by a job of another queue (`queue` in the reply). */
export const ENQUEUE_EXISTS_IN_QUEUE = 5;
/** The registry names a record in another queue: call again, passing it. */
const ENQUEUE_ASK = 6;
/** Rounds a registered id may take (the registry may name another record each time). */
const REGISTRY_ROUNDS = 3;

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
function enqueueCall(names: Keys, args: EnqueueArgs, holder?: string): [string[], (string | number)[]] {
  const queue = args.queueName;
  const keys = [names.job(queue, args.jobId), names.due(queue)];
  if (args.rule !== "") {
    keys.push(names.rule(args.rule, queue, args.ruleKey), names.jobPrefix(queue));
  }
  // The id registry follows the rule's keys (KEYS[3] or KEYS[5]), then the
  // record it named in an earlier round.
  if (args.registeredId) {
    keys.push(names.ids);
    if (holder !== undefined) keys.push(holder);
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
    names.wakeChannel(queue),
    args.rule,
    args.ruleKey,
    args.ruleWindowMs,
    args.debounceMaxWaitMs,
  ];
  return [keys, argv];
}

const registering = (names: Keys, register: boolean, queue: string): PipelineCommand[] =>
  register ? [["sadd", [names.queues, queue]]] : [];

/** Key layout and scripts over one ioredis client. */
export class Store {
  readonly redis: Redis;
  readonly keys: Keys;
  #subscriber: SharedSubscriber | null = null;

  constructor(redis: Redis, keys: Keys = DEFAULT_KEYS) {
    this.redis = redis;
    this.keys = keys;
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
    let holder: string | undefined;
    for (let round = 0; round < REGISTRY_ROUNDS; round++) {
      const [keys, argv] = enqueueCall(this.keys, args, holder);
      const reply = await this.run("enqueue", keys, argv, registering(this.keys, registerQueue, args.queueName));
      const [code, second, value] = reply;
      if (Number(code) === ENQUEUE_ASK) {
        holder = asText(second);
        continue;
      }
      if (Number(code) === ENQUEUE_EXISTS_IN_QUEUE && holder !== undefined) {
        const queue = this.keys.queueOfJobKey(holder, args.jobId) ?? "";
        return { code: ENQUEUE_EXISTS_IN_QUEUE, jobId: args.jobId, value: Number(value), queue };
      }
      return { code: Number(code), jobId: asText(second), value: Number(value) };
    }
    throw new RRQError(
      `enqueue of ${JSON.stringify(args.jobId)}: the id registry named another record in each of ${REGISTRY_ROUNDS} rounds`,
    );
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
    const [keys, argv] = enqueueCall(this.keys, first);
    for (const [jobId, paramsJson] of more) argv.push(jobId, paramsJson);
    const [runAt, ...statuses] = await this.run(
      "enqueue",
      keys,
      argv,
      registering(this.keys, registerQueue, first.queueName),
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
    const members = await this.redis.smembers(this.keys.queues);
    return members.sort();
  }

  /** [queue, status number] of the first queue holding `jobId`, in one round trip. */
  /**
   * [queue, job hash] of a job whose id the producer chose, through the id
   * registry: one round trip however many queues there are.
   */
  async findRegisteredJob(jobId: string): Promise<[string, JobHash] | null> {
    const key = await this.redis.hget(this.keys.ids, jobId);
    const queue = key === null ? null : this.keys.queueOfJobKey(key, jobId);
    if (queue === null) return null;
    const fields = await this.getJob(queue, jobId);
    return fields === null ? null : [queue, fields];
  }

  /** [queue, job hash] of the first queue holding `jobId`, in one round trip. */
  async findJob(jobId: string, queues: readonly string[]): Promise<[string, JobHash] | null> {
    if (queues.length === 0) return null;
    const pipeline = this.redis.pipeline();
    for (const queue of queues) pipeline.hgetall(this.keys.job(queue, jobId));
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
    const fields = await this.redis.hgetall(this.keys.job(queue, jobId));
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
      [this.keys.job(queue, jobId), this.keys.due(queue)],
      [jobId, reason, defaultResultTtlMs, this.keys.doneChannel(queue, jobId), this.keys.cancelChannel(queue)],
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
    return this.#subscriber.subscribe(this.keys.doneChannel(queue, jobId), waiter);
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
