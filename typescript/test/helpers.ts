/**
 * Test harness: a private redis-server per test file and the real orchestrator
 * binary spawning rrq-ts-runner. Nothing is mocked; nothing sleeps to
 * synchronise: tests wait on process output lines, files and job results.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, watch, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Redis } from "ioredis";

export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO_DIR = resolve(PACKAGE_DIR, "..");

export function tempDir(prefix = "rrq-ts-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => res(port));
    });
  });
}

/** Collects a child's output and resolves waiters when a line matches. */
export class OutputWatcher {
  text = "";
  #waiters: { pattern: RegExp; count: number; resolve: () => void }[] = [];

  attach(child: ChildProcess): void {
    const onData = (chunk: Buffer): void => {
      this.text += chunk.toString("utf8");
      this.#check();
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
  }

  #check(): void {
    this.#waiters = this.#waiters.filter((w) => {
      const matches = this.text.match(new RegExp(w.pattern.source, "g"))?.length ?? 0;
      if (matches >= w.count) {
        w.resolve();
        return false;
      }
      return true;
    });
  }

  /** Resolves once `pattern` occurred `count` times; rejects after `timeoutMs`. */
  waitFor(pattern: RegExp, count = 1, timeoutMs = 20_000): Promise<void> {
    return new Promise((res, rej) => {
      const timer = setTimeout(
        () => rej(new Error(`timed out waiting for ${pattern} x${count}; output:\n${this.text}`)),
        timeoutMs,
      );
      this.#waiters.push({
        pattern,
        count,
        resolve: () => {
          clearTimeout(timer);
          res();
        },
      });
      this.#check();
    });
  }
}

export interface RedisServer {
  readonly dsn: string;
  readonly port: number;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  const dir = tempDir("rrq-ts-redis-");
  const child = spawn(
    "redis-server",
    // AOF, as the orchestrator requires of a Redis it trusts with jobs.
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", dir],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const output = new OutputWatcher();
  output.attach(child);
  await output.waitFor(/Ready to accept connections/);
  return {
    dsn: `redis://127.0.0.1:${port}/0`,
    port,
    stop: async () => {
      await stopChild(child, "SIGKILL");
    },
  };
}

export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  return new Promise((res) => {
    child.once("exit", (code) => res(code));
    child.kill(signal);
  });
}

export function orchestratorBinary(): string {
  const bin = resolve(process.env["RRQ_BIN"] ?? join(REPO_DIR, "rust", "target", "debug", "rrq"));
  if (!existsSync(bin)) {
    throw new Error(`orchestrator binary not found at ${bin}: build it (cd rust && cargo build -p rrq) or set RRQ_BIN`);
  }
  return bin;
}

export const TIMINGS = `lease_seconds = 2
lease_renew_interval_seconds = 0.5
recovery_interval_seconds = 0.5
runner_heartbeat_interval_seconds = 0.5
cancel_grace_seconds = 1
shutdown_grace_seconds = 3
retry_backoff_initial_seconds = 0.05
retry_backoff_max_seconds = 0.2
`;

export interface OrchestratorOptions {
  readonly redisDsn: string;
  readonly maxInFlight?: number;
  /** Settings module for rrq-ts-runner, relative to the package directory. */
  readonly settings?: string;
  readonly extraToml?: string;
  /** Run the built dist/ runner instead of the sources through tsx. */
  readonly useDist?: boolean;
}

export interface Orchestrator {
  readonly output: OutputWatcher;
  readonly child: ChildProcess;
  readonly configPath: string;
  stop(): Promise<number | null>;
}

/** Starts `rrq worker run` with one TypeScript runner and waits until it connected. */
export async function startOrchestrator(options: OrchestratorOptions): Promise<Orchestrator> {
  const dir = tempDir("rrq-ts-orch-");
  const port = await freePort();
  const settings = options.settings ?? "test/fixtures/test-runner.ts";
  const cmd = options.useDist
    ? ["node", join(PACKAGE_DIR, "dist", "bin", "rrq-ts-runner.js"), "--settings", settings]
    : ["node", "--import", "tsx", join(PACKAGE_DIR, "src", "bin", "rrq-ts-runner.ts"), "--settings", settings];
  const configPath = join(dir, "rrq.toml");
  writeFileSync(
    configPath,
    `[rrq]
redis_dsn = "${options.redisDsn}"
default_runner_name = "typescript"
${TIMINGS}${options.extraToml ?? ""}
[rrq.runners.typescript]
type = "socket"
cmd = [${cmd.map((part) => JSON.stringify(part)).join(", ")}]
tcp_socket = "127.0.0.1:${port}"
max_in_flight = ${options.maxInFlight ?? 4}
cwd = ${JSON.stringify(PACKAGE_DIR)}
`,
  );
  const child = spawn(orchestratorBinary(), ["worker", "run", "--config", configPath], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env["RUST_LOG"] ?? "info" },
  });
  const output = new OutputWatcher();
  output.attach(child);
  await output.waitFor(/runner connected/);
  return { output, child, configPath, stop: () => stopChild(child, "SIGTERM") };
}

/** Resolves when `path` exists (watching its directory; no polling loop). */
export function waitForFile(path: string, timeoutMs = 20_000): Promise<void> {
  return new Promise((res, rej) => {
    const dir = dirname(path);
    const watcher = watch(dir);
    const done = (error?: Error): void => {
      clearTimeout(timer);
      watcher.close();
      if (error) rej(error);
      else res();
    };
    const timer = setTimeout(() => done(new Error(`timed out waiting for ${path}`)), timeoutMs);
    watcher.on("change", () => {
      if (existsSync(path)) done();
    });
    if (existsSync(path)) done();
  });
}

type Snapshot = Map<string, { value: string; expires: boolean }>;

/** Every key's serialized value (DUMP, hex), and whether it carries a TTL. */
async function keyspaceSnapshot(redis: Redis): Promise<Snapshot> {
  const names: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "COUNT", 1000);
    names.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  const pipe = redis.pipeline();
  for (const name of names) pipe.dumpBuffer(name).pttl(name);
  const replies = (await pipe.exec()) ?? [];
  const snapshot: Snapshot = new Map();
  names.forEach((name, index) => {
    const value = replies[2 * index]?.[1] as Buffer | null;
    const ttl = replies[2 * index + 1]?.[1] as number;
    if (value !== null) snapshot.set(name, { value: value.toString("hex"), expires: ttl >= 0 }); // null: expired after SCAN
  });
  return snapshot;
}

/**
 * Runs `block` and fails when it added, changed or deleted a key. A key that
 * had a TTL and is gone expired meanwhile; it is not a write (comparing
 * DBSIZE instead failed whenever one did).
 */
export async function nothingWritten<T>(redis: Redis, block: () => Promise<T>): Promise<T> {
  const before = await keyspaceSnapshot(redis);
  const result = await block();
  const after = await keyspaceSnapshot(redis);
  const added = [...after.keys()].filter((k) => !before.has(k));
  const changed = [...after.keys()].filter((k) => before.has(k) && before.get(k)?.value !== after.get(k)?.value);
  const deleted = [...before.keys()].filter((k) => !after.has(k) && !before.get(k)?.expires);
  assert.deepEqual({ added, changed, deleted }, { added: [], changed: [], deleted: [] }, "the block wrote to Redis");
  return result;
}

/**
 * Asserts that `call` rejects with an `ErrorType`; for an option error, one
 * that names `option`.
 */
export function rejectsWith(
  call: () => Promise<unknown>,
  ErrorType: new (...args: never[]) => Error,
  option?: string,
): Promise<void> {
  return assert.rejects(call, (error: unknown) => {
    assert.ok(error instanceof ErrorType, `${String(error)} is not a ${ErrorType.name}`);
    if (option !== undefined) assert.equal((error as { option?: unknown }).option, option);
    return true;
  });
}

/** A command Redis ran, as MONITOR reported it. */
export interface MonitoredCommand {
  /** The command name, in lower case, then its arguments. */
  readonly args: readonly string[];
  /** The connection that sent it, `ip:port` (`lua` for a script's commands). */
  readonly source: string;
}

/**
 * Every command Redis runs after `start` resolved (MONITOR), in order.
 * `waitFor` resolves once commands matching a test ran, so a test waits for
 * what a client did rather than for time to pass. Once a command is in the
 * log, Redis has finished running it.
 */
export class CommandLog {
  readonly commands: MonitoredCommand[] = [];
  readonly #monitor: Redis;
  #waiters: { match: (command: MonitoredCommand) => boolean; seen: number; count: number; resolve: () => void }[] = [];

  private constructor(monitor: Redis) {
    this.#monitor = monitor;
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      const [name = "", ...rest] = args;
      const entry = { args: [name.toLowerCase(), ...rest], source };
      this.commands.push(entry);
      this.#waiters = this.#waiters.filter((w) => {
        if (w.match(entry)) w.seen += 1;
        if (w.seen < w.count) return true;
        w.resolve();
        return false;
      });
    });
  }

  /** Starts monitoring on a new connection made from `redis`'s options. */
  static async start(redis: Redis): Promise<CommandLog> {
    return new CommandLog(await redis.monitor());
  }

  /** The log's current length, to pass as `from` for commands after this point. */
  get mark(): number {
    return this.commands.length;
  }

  /** The commands from index `from` on that match. */
  matching(match: (command: MonitoredCommand) => boolean, from = 0): MonitoredCommand[] {
    return this.commands.slice(from).filter(match);
  }

  /**
   * Resolves with the matching commands once `count` of them (from index
   * `from` on) ran; rejects after `timeoutMs`.
   */
  waitFor(
    match: (command: MonitoredCommand) => boolean,
    count = 1,
    from = 0,
    timeoutMs = 20_000,
  ): Promise<MonitoredCommand[]> {
    return new Promise((res, rej) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        rej(new Error(`timed out waiting for ${count} commands; saw ${this.matching(match, from).length}`));
      }, timeoutMs);
      const waiter = {
        match,
        seen: this.matching(match, from).length,
        count,
        resolve: () => {
          clearTimeout(timer);
          res(this.matching(match, from));
        },
      };
      if (waiter.seen >= count) waiter.resolve();
      else this.#waiters.push(waiter);
    });
  }

  /** Resolves once every command `redis` sent before this call is in the log. */
  async sync(redis: Redis): Promise<void> {
    const token = `sync-${++CommandLog.#tokens}`;
    const from = this.mark;
    await redis.echo(token);
    await this.waitFor((c) => c.args[0] === "echo" && c.args[1] === token, 1, from);
  }

  static #tokens = 0;

  close(): void {
    this.#monitor.disconnect();
  }
}

/** Matches a command by name and, when given, its first argument. */
export const command =
  (name: string, first?: string) =>
  (c: MonitoredCommand): boolean =>
    c.args[0] === name && (first === undefined || c.args[1] === first);
