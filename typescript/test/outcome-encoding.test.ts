/** Issue 13 items 4 and 5: one outcome that is hard to encode (lone
 * surrogates, an out-of-range retry delay, a BigInt result, megabytes of
 * error text) ends its own job with a recorded error and never costs the
 * other jobs of its batch their outcome. */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { JobStatus, RRQClient, type JobResult } from "../src/index.js";
import { type Orchestrator, type RedisServer, startOrchestrator, startRedis } from "./helpers.js";

let redis: RedisServer;
let orchestrator: Orchestrator;
let client: RRQClient;

before(async () => {
  redis = await startRedis();
  orchestrator = await startOrchestrator({
    redisDsn: redis.dsn,
    settings: "test/fixtures/outcome-runner.ts",
    extraToml: "max_error_message_bytes = 1024\n",
  });
  client = new RRQClient({ config: { redisDsn: redis.dsn } });
});

after(async () => {
  await client?.close();
  await orchestrator?.stop();
  await redis?.stop();
});

async function together(modes: Record<string, unknown>[]): Promise<JobResult[]> {
  const group = randomUUID();
  const ids: string[] = [];
  for (const mode of modes) {
    ids.push(
      await client.enqueue("together", {
        params: { group, size: modes.length, ...mode },
        maxRetries: 0,
        jobTimeoutSeconds: 10,
      }),
    );
  }
  return Promise.all(ids.map((id) => client.waitForResult(id, { timeoutSeconds: 30 })));
}

const connections = (): number => orchestrator.output.text.split("runner connected").length - 1;

describe("a poisoned outcome does not cost its batch", () => {
  const cases: [string, Record<string, unknown>, string, string][] = [
    ["lone surrogate", { mode: "surrogate" }, "Error", "characters could not be encoded and were replaced]"],
    ["defer 1e300", { mode: "defer", defer: 1e300 }, "InvalidRetryDelay", "got 1e+300"],
    ["defer NaN", { mode: "defer", defer: "nan" }, "InvalidRetryDelay", "got NaN"],
    ["BigInt result", { mode: "bigint" }, "ResultNotSerializable", "BigInt"],
    ["unprintable throw", { mode: "unprintable" }, "Error", "cannot be converted to a string"],
  ];
  for (const [name, mode, errorType, needle] of cases) {
    test(name, async () => {
      const [ok, poisoned] = (await together([{ mode: "ok" }, mode])) as [JobResult, JobResult];
      assert.equal(ok.status, JobStatus.COMPLETED, ok.lastError);
      assert.equal(ok.attempt, 1);
      assert.deepEqual(ok.errors, []);
      assert.equal(poisoned.status, JobStatus.FAILED);
      assert.equal(poisoned.attempt, 1);
      assert.equal(poisoned.lastErrorType, errorType, poisoned.lastError);
      assert.ok(poisoned.lastError.includes(needle), poisoned.lastError);
      if (mode["mode"] === "surrogate") assert.ok(poisoned.lastError.includes("report-\ufffd.csv"));
      const [later] = (await together([{ mode: "ok" }])) as [JobResult];
      assert.equal((later.result as { pid: number }).pid, (ok.result as { pid: number }).pid);
      assert.equal(connections(), 1);
    });
  }
});

test("megabytes of error text are cut and marked", async () => {
  const [ok, huge] = (await together([{ mode: "ok" }, { mode: "huge", bytes: 5 * 1024 * 1024 }])) as [
    JobResult,
    JobResult,
  ];
  assert.equal(ok.status, JobStatus.COMPLETED);
  assert.equal(huge.status, JobStatus.FAILED);
  assert.ok(huge.lastError.startsWith("xxxx"));
  assert.ok(huge.lastError.includes("[truncated by rrq: "), huge.lastError.slice(-80));
  assert.ok(Buffer.byteLength(huge.lastError) <= 1024 + 96);
  const [error] = huge.errors;
  assert.ok(error !== undefined);
  assert.ok(Buffer.byteLength(error.traceback) <= 16_384 + 96);
  assert.ok(error.traceback.startsWith("[truncated by rrq: "), error.traceback.slice(0, 80));
});
