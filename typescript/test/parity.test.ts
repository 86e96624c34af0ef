/**
 * Producer parity: the TypeScript and Python producer fixtures write
 * byte-identical job records for the same call (ids and times aside).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { RRQClient } from "../src/index.js";
import { PACKAGE_DIR, REPO_DIR, type RedisServer, startRedis } from "./helpers.js";

const PYTHON = process.env["RRQ_PYTHON"] ?? join(REPO_DIR, ".venv", "bin", "python");
const PY_PRODUCER = join(REPO_DIR, "conformance-tests", "runners", "python", "fixture_producer.py");

let redis: RedisServer;
let client: RRQClient;

before(async () => {
  // The Python fixture is part of this repository: its absence is a failure, never a skip.
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: run make setup (or set RRQ_PYTHON)`);
  assert.ok(existsSync(PY_PRODUCER), `${PY_PRODUCER} is missing`);
  redis = await startRedis();
  client = new RRQClient({ config: { redisDsn: redis.dsn } });
});
after(async () => {
  await client?.close();
  await redis?.stop();
});

function produce(command: string[], cwd: string, request: object): Record<string, unknown> {
  const run = spawnSync(command[0] as string, command.slice(1), { cwd, input: JSON.stringify(request), encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

const PARAMS = {
  text: "héllo wörld ✓ 日本 \u0001\t\n\"quoted\" \\ slash/ \u2028",
  ints: [0, -1, 9007199254740991],
  floats: [0.1, 2.5, 1e-5, 1.5e-7, 123.456, -0.001],
  nested: { a: [true, false, null], b: {} },
  emoji: "😀",
};

const CALLS: { name: string; method: string; options: Record<string, unknown>; unique_key?: string }[] = [
  {
    name: "enqueue",
    method: "enqueue",
    options: {
      params: PARAMS,
      queue_name: "parity",
      max_retries: 2,
      job_timeout_seconds: 30.0025,
      result_ttl_seconds: 60,
      defer_until: "2030-01-01T00:00:00Z",
      trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
  },
  { name: "unique", method: "enqueue_with_unique_key", unique_key: "u", options: { params: PARAMS, queue_name: "parity", unique_ttl_seconds: 60 } },
  { name: "rate", method: "enqueue_with_rate_limit", options: { params: { a: 1 }, queue_name: "parity", rate_limit_key: "r", rate_limit_seconds: 10 } },
  { name: "debounce", method: "enqueue_with_debounce", options: { params: { a: 1 }, queue_name: "parity", debounce_key: "d", debounce_seconds: 100, debounce_max_wait_seconds: 500 } },
];

for (const call of CALLS) {
  test(`parity: ${call.name}`, async () => {
    const records: Record<string, string>[] = [];
    for (const [lang, command, cwd] of [
      ["py", [PYTHON, PY_PRODUCER], join(REPO_DIR, "conformance-tests", "runners", "python")],
      ["ts", ["node", "--import", "tsx", join(PACKAGE_DIR, "src", "conformance", "fixture-producer.ts")], PACKAGE_DIR],
    ] as const) {
      const options = { ...call.options };
      for (const key of ["rate_limit_key", "debounce_key"]) if (key in options) options[key] = `${options[key]}-${lang}`;
      const reply = produce([...command], cwd, {
        redis_dsn: redis.dsn,
        method: call.method,
        function_name: "echo",
        ...(call.unique_key ? { unique_key: `${call.unique_key}-${lang}` } : {}),
        options,
      });
      const id = reply["job_id"];
      assert.equal(typeof id, "string", JSON.stringify(reply));
      const hash = await client.store.redis.hgetall(`rrq:{parity}:job:${String(id)}`);
      for (const key of ["id", "enqueued_at_ms", "run_at_ms", "unique_key", "rate_limit_key", "debounce_key"]) delete hash[key];
      records.push(hash);
    }
    assert.deepEqual(records[1], records[0]);
  });
}
