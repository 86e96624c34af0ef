/**
 * Reads the `[rrq]` table of rrq.toml (docs/configuration.md): the keys a
 * producer needs. The orchestrator validates the whole file; keys the client
 * does not use are accepted as they are, so one file serves both.
 */
import { existsSync, readFileSync } from "node:fs";
import { parse as parseToml } from "smol-toml";

import { ConfigError } from "./errors.js";
import { isKeyPrefix, KEY_PREFIX_RULE } from "./store.js";

export const CONFIG_ENV = "RRQ_CONFIG";
export const REDIS_DSN_ENV = "RRQ_REDIS_DSN";
export const DEFAULT_CONFIG_FILE = "rrq.toml";

/** The settings a producer uses, with the documented defaults. */
export interface ClientConfig {
  readonly redisDsn: string;
  readonly defaultQueueName: string;
  readonly defaultMaxRetries: number;
  readonly maxPayloadBytes: number;
  readonly defaultResultTtlSeconds: number;
  readonly defaultUniqueJobLockTtlSeconds: number;
  /** First part of every Redis key and channel (`key_prefix`). */
  readonly keyPrefix: string;
}

/** Client settings given in code; every key is optional. */
export type ClientConfigInput = Partial<ClientConfig>;

export const DEFAULT_CONFIG: ClientConfig = Object.freeze({
  redisDsn: "redis://localhost:6379/0",
  defaultQueueName: "default",
  defaultMaxRetries: 3,
  maxPayloadBytes: 1024 * 1024,
  defaultResultTtlSeconds: 86_400,
  defaultUniqueJobLockTtlSeconds: 21_600,
  keyPrefix: "rrq",
});

// camelCase key of ClientConfig -> the rrq.toml key.
const TOML_KEYS: Readonly<Record<keyof ClientConfig, string>> = {
  redisDsn: "redis_dsn",
  defaultQueueName: "default_queue_name",
  defaultMaxRetries: "default_max_retries",
  maxPayloadBytes: "max_payload_bytes",
  defaultResultTtlSeconds: "default_result_ttl_seconds",
  defaultUniqueJobLockTtlSeconds: "default_unique_job_lock_ttl_seconds",
  keyPrefix: "key_prefix",
};

function show(value: unknown): string {
  try {
    return typeof value === "bigint" ? `${value}n` : (JSON.stringify(value) ?? String(value));
  } catch {
    return String(value);
  }
}

function nonEmptyString(key: string, value: unknown): string {
  if (typeof value !== "string" || value === "") {
    throw new ConfigError(`rrq.${key} must be a non-empty string, got ${show(value)}`);
  }
  return value;
}

function nonNegativeInteger(key: string, value: unknown): number {
  // smol-toml returns TOML integers as numbers (or BigInt past 2^53).
  const number = typeof value === "bigint" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isSafeInteger(number) || number < 0) {
    throw new ConfigError(`rrq.${key} must be a non-negative integer, got ${show(value)}`);
  }
  return number;
}

function positiveSeconds(key: string, value: unknown): number {
  const number = typeof value === "bigint" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isFinite(number)) {
    throw new ConfigError(`rrq.${key} must be a finite number, got ${show(value)}`);
  }
  if (number < 0.001) {
    throw new ConfigError(`rrq.${key} must be at least 0.001 seconds, got ${show(value)}`);
  }
  return number;
}

/** Builds a ClientConfig from `[rrq]` keys (snake_case, as in rrq.toml). */
function fromTable(table: Readonly<Record<string, unknown>>, env: NodeJS.ProcessEnv): ClientConfig {
  const get = (key: keyof ClientConfig): unknown => table[TOML_KEYS[key]] ?? DEFAULT_CONFIG[key];
  let redisDsn = nonEmptyString("redis_dsn", get("redisDsn"));
  const defaultQueueName = nonEmptyString("default_queue_name", get("defaultQueueName"));
  const defaultMaxRetries = nonNegativeInteger("default_max_retries", get("defaultMaxRetries"));
  const maxPayloadBytes = nonNegativeInteger("max_payload_bytes", get("maxPayloadBytes"));
  if (maxPayloadBytes === 0) {
    throw new ConfigError("rrq.max_payload_bytes must be at least 1");
  }
  const defaultResultTtlSeconds = positiveSeconds(
    "default_result_ttl_seconds",
    get("defaultResultTtlSeconds"),
  );
  const defaultUniqueJobLockTtlSeconds = positiveSeconds(
    "default_unique_job_lock_ttl_seconds",
    get("defaultUniqueJobLockTtlSeconds"),
  );
  const keyPrefix = get("keyPrefix");
  if (!isKeyPrefix(keyPrefix)) {
    throw new ConfigError(`rrq.key_prefix must be ${KEY_PREFIX_RULE}, got ${show(keyPrefix)}`);
  }
  const envDsn = env[REDIS_DSN_ENV];
  if (envDsn) redisDsn = envDsn;
  return {
    redisDsn,
    defaultQueueName,
    defaultMaxRetries,
    maxPayloadBytes,
    defaultResultTtlSeconds,
    defaultUniqueJobLockTtlSeconds,
    keyPrefix,
  };
}

function readFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new ConfigError(`config file '${path}' not found`);
    throw new ConfigError(`cannot read config file '${path}': ${String(error)}`);
  }
  let data: Record<string, unknown>;
  try {
    data = parseToml(text) as Record<string, unknown>;
  } catch (error) {
    throw new ConfigError(`config file '${path}' is not valid TOML: ${String(error)}`);
  }
  const table = data["rrq"] ?? {};
  if (typeof table !== "object" || table === null || Array.isArray(table)) {
    throw new ConfigError(`[rrq] in '${path}' must be a table`);
  }
  return table as Record<string, unknown>;
}

export interface LoadConfigOptions {
  readonly configPath?: string | undefined;
  readonly config?: ClientConfigInput | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
}

/**
 * Builds the client configuration.
 *
 * `config` holds settings in camelCase; `configPath` names an rrq.toml.
 * With neither: `$RRQ_CONFIG`, else `./rrq.toml` when present, else the
 * defaults. `$RRQ_REDIS_DSN` overrides `redis_dsn`.
 */
export function loadConfig(options: LoadConfigOptions = {}): ClientConfig {
  const env = options.env ?? process.env;
  const { configPath, config } = options;
  if (config !== undefined && configPath !== undefined) {
    throw new ConfigError("pass either configPath or config, not both");
  }
  if (config !== undefined) {
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      throw new ConfigError(`config must be an object, got ${show(config)}`);
    }
    const table: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(config)) {
      if (!(key in TOML_KEYS)) {
        const known = Object.keys(TOML_KEYS).sort().join(", ");
        throw new ConfigError(`unknown config key '${key}'; known keys are ${known}`);
      }
      if (value !== undefined) table[TOML_KEYS[key as keyof ClientConfig]] = value;
    }
    return fromTable(table, env);
  }
  if (configPath !== undefined) return fromTable(readFile(configPath), env);
  const envPath = env[CONFIG_ENV];
  if (envPath) return fromTable(readFile(envPath), env);
  if (existsSync(DEFAULT_CONFIG_FILE)) return fromTable(readFile(DEFAULT_CONFIG_FILE), env);
  return fromTable({}, env);
}
