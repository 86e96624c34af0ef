/** rrq-ts-runner as built (dist/) works as a `cmd` in rrq.toml, and rejects bad settings. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { JobStatus, RRQClient } from "../src/index.js";
import { type Orchestrator, PACKAGE_DIR, type RedisServer, startOrchestrator, startRedis, tempDir } from "./helpers.js";

const BIN = join(PACKAGE_DIR, "dist", "bin", "rrq-ts-runner.js");

let redis: RedisServer | undefined;
let orchestrator: Orchestrator | undefined;

before(async () => {
  // `npm test` builds first (pretest); a missing dist/ is a failure, never a skip.
  assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build`);
  redis = await startRedis();
  orchestrator = await startOrchestrator({
    redisDsn: redis.dsn,
    settings: "./dist/conformance/fixture-runner.js",
    useDist: true,
  });
});
after(async () => {
  await orchestrator?.stop();
  await redis?.stop();
});

test("the built CLI serves jobs", async () => {
  const client = new RRQClient({ config: { redisDsn: redis?.dsn ?? "" } });
  try {
    const id = await client.enqueue("whoami");
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.equal((result.result as { language: string }).language, "typescript");
  } finally {
    await client.close();
  }
});

test("bad settings exit 2 with a clear message", () => {
  const dir = tempDir();
  writeFileSync(join(dir, "empty.mjs"), "export const other = 1;\n");
  for (const args of [[], ["--settings", "./missing.js"], ["--settings", "./empty.mjs"], ["--bogus"]]) {
    const run = spawnSync("node", [BIN, ...args], { cwd: dir, encoding: "utf8", env: { ...process.env, RRQ_ORCHESTRATOR_ADDR: "127.0.0.1:1" } });
    assert.equal(run.status, 2, `${args.join(" ")}: ${run.stderr}`);
    assert.match(run.stderr, /rrq-ts-runner: error: /);
  }
});
