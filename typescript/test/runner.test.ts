/** End to end: the real orchestrator spawns rrq-ts-runner, jobs go through Redis. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { JobStatus, RRQClient } from "../src/index.js";
import {
  type Orchestrator,
  type RedisServer,
  startOrchestrator,
  startRedis,
  tempDir,
  waitForFile,
} from "./helpers.js";

let redis: RedisServer;
let orchestrator: Orchestrator;
let client: RRQClient;
let counter = 0;
const queue = (): string => `q${process.pid}-${++counter}`;

before(async () => {
  redis = await startRedis();
  orchestrator = await startOrchestrator({ redisDsn: redis.dsn });
  client = new RRQClient({ config: { redisDsn: redis.dsn } });
});

after(async () => {
  await client?.close();
  await orchestrator?.stop();
  await redis?.stop();
});

describe("runner end to end", () => {
  test("an async handler's result is stored", async () => {
    const id = await client.enqueue("echo", { params: { hello: "wörld", n: [1, 2.5] }, queueName: queue() });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.deepEqual(result.result, { hello: "wörld", n: [1, 2.5] });
    assert.equal(result.attempt, 1);
    assert.ok(result.startedAt && result.finishedAt);
  });

  test("a synchronous handler returning a number", async () => {
    const id = await client.enqueue("add", { params: { a: 2, b: 3 } });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.equal(result.result, 5);
  });

  test("the handler sees the request", async () => {
    const traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const q = queue();
    const id = await client.enqueue("request_info", { queueName: q, maxRetries: 2, traceParent, traceState: "k=v" });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.deepEqual(result.result, {
      jobId: id,
      functionName: "request_info",
      attempt: 1,
      queueName: q,
      maxRetries: 2,
      enqueuedAtOk: true,
      deadlineAfterEnqueue: true,
      traceContext: { traceparent: traceParent, tracestate: "k=v" },
    });
    const traced = await client.enqueue("trace_id", { traceParent });
    assert.deepEqual((await client.waitForResult(traced, { timeoutSeconds: 20 })).result, {
      trace_id: "0af7651916cd43dd8448eb211c80319c",
    });
  });

  test("failures are retried, then the job succeeds", async () => {
    const id = await client.enqueue("fail_then_succeed", { params: { failures: 2 }, maxRetries: 3 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.deepEqual(result.result, { attempt: 3 });
    assert.equal(result.errors.length, 2);
    assert.equal(result.errors[0]?.errorType, "FixtureError");
    assert.equal(result.errors[0]?.message, "attempt 1 fails");
    assert.match(result.errors[0]?.traceback ?? "", /FixtureError: attempt 1 fails\n\s+at /);
  });

  test("RetryJob with deferSeconds delays the next attempt", async () => {
    const id = await client.enqueue("retry_with_delay", { params: { delay_seconds: 0.5 } });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.deepEqual(result.result, { attempt: 2 });
    const [error] = result.errors;
    assert.equal(error?.message, "retry later");
    assert.ok(result.startedAt && error);
    // The second attempt started no earlier than the requested delay after the retry.
    assert.ok(result.startedAt.getTime() - error.at.getTime() >= 490, `${result.startedAt.getTime() - error.at.getTime()}ms`);
  });

  test("a job that always fails is dead-lettered after its retries", async () => {
    const id = await client.enqueue("always_fail", { maxRetries: 1 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.FAILED);
    assert.equal(result.attempt, 2);
    assert.equal(result.lastErrorType, "FixtureError");
    assert.equal(result.lastError, "always fails");
    const score = await client.store.redis.zscore(`rrq:{default}:dlq`, id);
    assert.notEqual(score, null);
  });

  test("FatalJobError fails the job at once", async () => {
    const id = await client.enqueue("fatal", { maxRetries: 3 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.FAILED);
    assert.equal(result.attempt, 1);
    assert.equal(result.lastErrorType, "FatalJobError");
  });

  test("a built-in error type is recorded by name", async () => {
    const id = await client.enqueue("type_error", { maxRetries: 0 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.lastErrorType, "TypeError");
    assert.equal(result.lastError, "bad type");
  });

  test("an unknown function fails at once with UnknownFunction", async () => {
    const id = await client.enqueue("no_such_handler", { maxRetries: 3 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.FAILED);
    assert.equal(result.attempt, 1);
    assert.equal(result.lastErrorType, "UnknownFunction");
  });

  test("results that are not JSON or too large fail the attempt", async () => {
    for (const fn of ["non_serializable", "circular"]) {
      const id = await client.enqueue(fn, { maxRetries: 0 });
      const result = await client.waitForResult(id, { timeoutSeconds: 20 });
      assert.equal(result.status, JobStatus.FAILED, fn);
      assert.equal(result.lastErrorType, "ResultNotSerializable", fn);
    }
    const id = await client.enqueue("large_result", { params: { bytes: 2 * 1024 * 1024 }, maxRetries: 0 });
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.FAILED);
    assert.equal(result.lastErrorType, "ResultTooLarge");
  });

  test("a timeout aborts the handler's signal with reason timeout", async () => {
    const dir = tempDir();
    const id = await client.enqueue("abort_reason", { params: { dir }, jobTimeoutSeconds: 0.5, maxRetries: 0 });
    await waitForFile(join(dir, "aborted-1"));
    assert.equal(readFileSync(join(dir, "aborted-1"), "utf8"), "timeout");
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.FAILED);
  });

  test("cancelling a running job aborts the handler's signal", async () => {
    const dir = tempDir();
    const id = await client.enqueue("abort_reason", { params: { dir } });
    await waitForFile(join(dir, "started-1"));
    assert.equal(await client.cancel(id), true);
    const result = await client.waitForResult(id, { timeoutSeconds: 20 });
    assert.equal(result.status, JobStatus.CANCELLED);
    assert.equal(readFileSync(join(dir, "aborted-1"), "utf8"), "requested");
  });

  test("report_cancel: the conformance handler observes its cancellation", async () => {
    const dir = tempDir();
    const id = await client.enqueue("report_cancel", { params: { dir } });
    await waitForFile(join(dir, "started-1"));
    assert.equal(await client.cancel(id), true);
    assert.equal((await client.waitForResult(id, { timeoutSeconds: 20 })).status, JobStatus.CANCELLED);
    assert.equal(readFileSync(join(dir, "cancelled-1"), "utf8"), "1");
  });

  test("a runner that crashes mid-job is replaced and the job completes", async () => {
    const dir = tempDir();
    const id = await client.enqueue("crash", { params: { dir, crash_attempts: 1 }, maxRetries: 2 });
    const result = await client.waitForResult(id, { timeoutSeconds: 30 });
    assert.equal(result.status, JobStatus.COMPLETED);
    assert.deepEqual(result.result, { attempt: 2 });
    const firstPid = readFileSync(join(dir, "started-1"), "utf8");
    const secondPid = readFileSync(join(dir, "started-2"), "utf8");
    assert.notEqual(firstPid, secondPid);
  });

  test("many jobs run concurrently and all complete", async () => {
    const ids = await Promise.all(
      Array.from({ length: 50 }, (_, i) => client.enqueue("echo", { params: { i } })),
    );
    const results = await Promise.all(ids.map((id) => client.waitForResult(id, { timeoutSeconds: 30 })));
    results.forEach((result, i) => assert.deepEqual(result.result, { i }));
  });
});
