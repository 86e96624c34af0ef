/** The producer client against a private Redis (no orchestrator). */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  DuplicateJobError,
  InvalidOptionError,
  InvalidParamsError,
  JobNotFoundError,
  JobStatus,
  PayloadTooLargeError,
  RRQClient,
  ulid,
  WaitTimeoutError,
} from "../src/index.js";
import { MAX_DURATION_MS, MAX_RETRIES } from "../src/gen/limits.js";
import { nothingWritten, type RedisServer, rejectsWith, startRedis } from "./helpers.js";

let redis: RedisServer;
let client: RRQClient;
let counter = 0;
const queue = (): string => `q${process.pid}-${++counter}`;

before(async () => {
  redis = await startRedis();
  client = new RRQClient({ config: { redisDsn: redis.dsn, maxPayloadBytes: 1000 } });
});

after(async () => {
  await client?.close();
  await redis?.stop();
});

const unwritten = <T>(block: () => Promise<T>): Promise<T> => nothingWritten(client.store.redis, block);

describe("validation: nothing is written on rejection", () => {
  const circular: Record<string, unknown> = {};
  circular["self"] = circular;
  const cases: [string, () => Promise<unknown>, new (...args: never[]) => Error, string?][] = [
    ["unknown option", () => client.enqueue("f", { bogus: 1 } as never), InvalidOptionError, "bogus"],
    ["snake_case option", () => client.enqueue("f", { queue_name: "q" } as never), InvalidOptionError, "queue_name"],
    ["rule option in enqueue", () => client.enqueue("f", { uniqueTtlSeconds: 1 } as never), InvalidOptionError, "uniqueTtlSeconds"],
    ["debounce option in rate limit", () => client.enqueueWithRateLimit("f", { rateLimitKey: "k", rateLimitSeconds: 1, debounceKey: "d" } as never), InvalidOptionError, "debounceKey"],
    ["jobId with debounce", () => client.enqueueWithDebounce("f", { debounceKey: "k", debounceSeconds: 1, jobId: "x" } as never), InvalidOptionError, "jobId"],
    ["empty function name", () => client.enqueue(""), InvalidOptionError, "functionName"],
    ["non-string function name", () => client.enqueue(3 as never), InvalidOptionError, "functionName"],
    ["params an array", () => client.enqueue("f", { params: [1] as never }), InvalidParamsError],
    ["params a string", () => client.enqueue("f", { params: "x" as never }), InvalidParamsError],
    ["params with NaN", () => client.enqueue("f", { params: { x: Number.NaN } }), InvalidParamsError],
    ["params with Infinity", () => client.enqueue("f", { params: { x: [Infinity] } }), InvalidParamsError],
    ["params with BigInt", () => client.enqueue("f", { params: { x: 1n } }), InvalidParamsError],
    ["params with a function", () => client.enqueue("f", { params: { x: () => 1 } }), InvalidParamsError],
    ["params with undefined", () => client.enqueue("f", { params: { x: undefined } }), InvalidParamsError],
    ["params with a Date", () => client.enqueue("f", { params: { x: new Date() } }), InvalidParamsError],
    ["params with a Map", () => client.enqueue("f", { params: { x: new Map() } }), InvalidParamsError],
    ["circular params", () => client.enqueue("f", { params: circular }), InvalidParamsError],
    ["payload too large", () => client.enqueue("f", { params: { x: "é".repeat(500) } }), PayloadTooLargeError],
    ["empty queue", () => client.enqueue("f", { queueName: "" }), InvalidOptionError, "queueName"],
    ["queue with braces", () => client.enqueue("f", { queueName: "a{b}" }), InvalidOptionError, "queueName"],
    ["empty job id", () => client.enqueue("f", { jobId: "" }), InvalidOptionError, "jobId"],
    ["negative retries", () => client.enqueue("f", { maxRetries: -1 }), InvalidOptionError, "maxRetries"],
    ["fractional retries", () => client.enqueue("f", { maxRetries: 1.5 }), InvalidOptionError, "maxRetries"],
    ["negative timeout", () => client.enqueue("f", { jobTimeoutSeconds: -1 }), InvalidOptionError, "jobTimeoutSeconds"],
    ["zero timeout", () => client.enqueue("f", { jobTimeoutSeconds: 0 }), InvalidOptionError, "jobTimeoutSeconds"],
    ["tiny timeout", () => client.enqueue("f", { jobTimeoutSeconds: 0.0001 }), InvalidOptionError, "jobTimeoutSeconds"],
    ["NaN ttl", () => client.enqueue("f", { resultTtlSeconds: Number.NaN }), InvalidOptionError, "resultTtlSeconds"],
    ["infinite defer", () => client.enqueue("f", { deferBySeconds: Infinity }), InvalidOptionError, "deferBySeconds"],
    ["string defer", () => client.enqueue("f", { deferBySeconds: "1" as never }), InvalidOptionError, "deferBySeconds"],
    ["both defers", () => client.enqueue("f", { deferBySeconds: 1, deferUntil: new Date() }), InvalidOptionError, "deferUntil"],
    ["invalid date", () => client.enqueue("f", { deferUntil: new Date("nope") }), InvalidOptionError, "deferUntil"],
    ["date before 1970", () => client.enqueue("f", { deferUntil: new Date(-1000) }), InvalidOptionError, "deferUntil"],
    ["non-string traceParent", () => client.enqueue("f", { traceParent: 1 as never }), InvalidOptionError, "traceParent"],
    ["empty unique key", () => client.enqueueWithUniqueKey("f", ""), InvalidOptionError, "uniqueKey"],
    ["zero unique ttl", () => client.enqueueWithUniqueKey("f", "k", { uniqueTtlSeconds: 0 }), InvalidOptionError, "uniqueTtlSeconds"],
    ["empty rate limit key", () => client.enqueueWithRateLimit("f", { rateLimitKey: "", rateLimitSeconds: 1 }), InvalidOptionError, "rateLimitKey"],
    ["missing rate limit window", () => client.enqueueWithRateLimit("f", { rateLimitKey: "k" } as never), InvalidOptionError, "rateLimitSeconds"],
    ["empty debounce key", () => client.enqueueWithDebounce("f", { debounceKey: "", debounceSeconds: 1 }), InvalidOptionError, "debounceKey"],
    ["missing debounce window", () => client.enqueueWithDebounce("f", { debounceKey: "k" } as never), InvalidOptionError, "debounceSeconds"],
    ["max wait below window", () => client.enqueueWithDebounce("f", { debounceKey: "k", debounceSeconds: 2, debounceMaxWaitSeconds: 1 }), InvalidOptionError, "debounceMaxWaitSeconds"],
    ["options not an object", () => client.enqueue("f", 5 as never), InvalidOptionError, "options"],
    // Ranges (rust/rrq-store/limits.toml): checked before the first write.
    ["retries over the limit", () => client.enqueue("f", { maxRetries: MAX_RETRIES + 1 }), InvalidOptionError, "maxRetries"],
    ["huge retries", () => client.enqueue("f", { maxRetries: Number.MAX_SAFE_INTEGER }), InvalidOptionError, "maxRetries"],
    ["huge timeout", () => client.enqueue("f", { jobTimeoutSeconds: Number.MAX_SAFE_INTEGER }), InvalidOptionError, "jobTimeoutSeconds"],
    ["ttl of 1e14 s", () => client.enqueue("f", { resultTtlSeconds: 1e14 }), InvalidOptionError, "resultTtlSeconds"],
    ["defer past the limit", () => client.enqueue("f", { deferBySeconds: MAX_DURATION_MS / 1000 + 1 }), InvalidOptionError, "deferBySeconds"],
    ["date in 9999", () => client.enqueue("f", { deferUntil: new Date("9999-01-01T00:00:00Z") }), InvalidOptionError, "deferUntil"],
    ["huge unique ttl", () => client.enqueueWithUniqueKey("f", "k", { uniqueTtlSeconds: 1e300 }), InvalidOptionError, "uniqueTtlSeconds"],
    ["huge rate limit window", () => client.enqueueWithRateLimit("f", { rateLimitKey: "k", rateLimitSeconds: 1e18 }), InvalidOptionError, "rateLimitSeconds"],
    ["huge debounce max wait", () => client.enqueueWithDebounce("f", { debounceKey: "k", debounceSeconds: 1, debounceMaxWaitSeconds: 1e18 }), InvalidOptionError, "debounceMaxWaitSeconds"],
    ["lone surrogate in function name", () => client.enqueue("f\udcff"), InvalidOptionError, "functionName"],
    ["lone surrogate in queue", () => client.enqueue("f", { queueName: "q\ud800" }), InvalidOptionError, "queueName"],
    ["lone surrogate in job id", () => client.enqueue("f", { jobId: "\udcffid" }), InvalidOptionError, "jobId"],
  ];
  for (const [name, call, ErrorType, option] of cases) {
    test(name, async () => {
      await unwritten(() => rejectsWith(call, ErrorType, option));
    });
  }
});

test("generated job ids are ULIDs that carry their millisecond", () => {
  const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const first = Date.now();
  const ids = Array.from({ length: 100 }, () => ulid());
  const last = Date.now();
  assert.equal(new Set(ids).size, 100);
  for (const id of ids) {
    assert.match(id, /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/);
    const ms = [...id.slice(0, 10)].reduce((acc, c) => acc * 32 + crockford.indexOf(c), 0);
    assert.ok(first <= ms && ms <= last, `${ms} not in ${first}..${last}`);
  }
});

describe("enqueue", () => {
  test("the record follows the schema", async () => {
    const q = queue();
    const id = await client.enqueue("send", {
      params: { to: "ä@example.com", n: 1, f: 0.00001, nested: { list: [true, null] } },
      queueName: q,
      maxRetries: 2,
      jobTimeoutSeconds: 30,
      resultTtlSeconds: 60.0005,
      traceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    });
    assert.match(id, /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/); // a ULID
    const redis = client.store.redis;
    assert.ok((await redis.smembers("rrq:queues")).includes(q));
    const hash = await redis.hgetall(`rrq:{${q}}:job:${id}`);
    assert.equal(hash["id"], undefined); // the id and the queue are in the key
    assert.equal(hash["queue_name"], undefined);
    assert.equal(hash["function_name"], "send");
    assert.equal(hash["params_json"], '{"to":"ä@example.com","n":1,"f":1e-05,"nested":{"list":[true,null]}}');
    assert.equal(hash["status"], "1");
    assert.equal(hash["attempt"], undefined); // 0 is not stored
    assert.equal(hash["max_retries"], "2");
    assert.equal(hash["job_timeout_ms"], "30000");
    assert.equal(hash["result_ttl_ms"], "60000"); // 60000.5 rounds half to even, as Python does
    assert.equal(hash["trace_parent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert.equal(hash["trace_state"], undefined); // empty fields are not stored
    assert.ok(Number(hash["enqueued_at_ms"]) > 0);
    assert.equal(hash["run_at_ms"], undefined); // due at once: run_at is enqueued_at
    const score = await redis.zscore(`rrq:{${q}}:due`, id);
    assert.equal(Number(score), Number(hash["enqueued_at_ms"]));
    const status = await client.getJobStatus(id);
    assert.equal(status?.attempt, 0);
    assert.equal(status?.runAt?.getTime(), status?.enqueuedAt?.getTime());
  });

  test("defaults, deferBySeconds and deferUntil", async () => {
    const id = await client.enqueue("f");
    const status = await client.getJobStatus(id);
    assert.equal(status?.queueName, "default");
    assert.equal(status?.maxRetries, 3);
    assert.equal(status?.status, JobStatus.PENDING);
    const deferred = await client.getJobStatus(await client.enqueue("f", { deferBySeconds: 100 }));
    assert.ok(deferred?.runAt && deferred.enqueuedAt);
    assert.equal(deferred.runAt.getTime() - deferred.enqueuedAt.getTime(), 100_000);
    const at = new Date("2030-01-01T00:00:00Z");
    const later = await client.getJobStatus(await client.enqueue("f", { deferUntil: at }));
    assert.equal(later?.runAt?.getTime(), at.getTime());
  });

  test("an explicit job id is unique across queues", async () => {
    const id = `job-${queue()}`;
    assert.equal(await client.enqueue("f", { jobId: id, queueName: queue() }), id);
    // A producer registers a queue before its first enqueue there (so that a
    // crash cannot leave a job in an unknown queue): register this one first.
    const other = queue();
    await client.enqueue("f", { queueName: other });
    await unwritten(async () => {
      await assert.rejects(client.enqueue("f", { jobId: id }), (error: unknown) => {
        assert.ok(error instanceof DuplicateJobError);
        assert.equal(error.status, JobStatus.PENDING);
        return true;
      });
      await assert.rejects(client.enqueue("f", { jobId: id, queueName: other }), DuplicateJobError);
    });
  });

  test("one id raced into two queues makes one job", async () => {
    const other = new RRQClient({ config: { redisDsn: redis.dsn } });
    try {
      for (let n = 0; n < 20; n++) {
        const id = `race-${queue()}`;
        const [qa, qb] = [queue(), queue()];
        const results = await Promise.allSettled([
          client.enqueue("f", { jobId: id, queueName: qa }),
          other.enqueue("f", { jobId: id, queueName: qb }),
        ]);
        const won = results.filter((r) => r.status === "fulfilled");
        const lost = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
        assert.equal(won.length, 1);
        assert.equal(lost.length, 1);
        assert.ok(lost[0]?.reason instanceof DuplicateJobError);
        const winner = results[0]?.status === "fulfilled" ? qa : qb;
        assert.equal((lost[0]?.reason as DuplicateJobError).queueName, winner);
      }
    } finally {
      await other.close();
    }
  });

  test("a unique key returns the holder's id", async () => {
    const q = queue();
    const first = await client.enqueueWithUniqueKey("f", "k", { queueName: q, uniqueTtlSeconds: 60 });
    const second = await unwritten(() => client.enqueueWithUniqueKey("f", "k", { queueName: q, params: { other: 1 } }));
    assert.equal(second, first);
    assert.equal(await client.store.redis.get(`rrq:{${q}}:unique:k`), first);
    const ttl = await client.store.redis.pttl(`rrq:{${q}}:unique:k`);
    assert.ok(ttl > 50_000 && ttl <= 60_000);
    assert.equal((await client.getJobStatus(first))?.uniqueKey, "k");
    assert.notEqual(await client.enqueueWithUniqueKey("f", "k2", { queueName: q }), first);
  });

  test("a rate-limit window admits one job", async () => {
    const q = queue();
    const first = await client.enqueueWithRateLimit("f", { queueName: q, rateLimitKey: "r", rateLimitSeconds: 60 });
    assert.ok(first);
    const again = await unwritten(() => client.enqueueWithRateLimit("f", { queueName: q, rateLimitKey: "r", rateLimitSeconds: 60 }));
    assert.equal(again, null);
    assert.equal((await client.getJobStatus(first))?.rateLimitKey, "r");
  });

  test("debounce keeps one waiting job with the newest params", async () => {
    const q = queue();
    const first = await client.enqueueWithDebounce("f", { queueName: q, debounceKey: "d", debounceSeconds: 10, params: { v: 1 } });
    const before = await client.getJobStatus(first);
    const second = await client.enqueueWithDebounce("f", {
      queueName: q,
      debounceKey: "d",
      debounceSeconds: 10,
      debounceMaxWaitSeconds: 15,
      params: { v: 2 },
    });
    assert.equal(second, first);
    const hash = await client.store.redis.hgetall(`rrq:{${q}}:job:${first}`);
    assert.equal(hash["params_json"], '{"v":2}');
    assert.equal(hash["debounce_key"], "d");
    const after = await client.getJobStatus(first);
    assert.ok(before?.runAt && after?.runAt && before.enqueuedAt);
    assert.ok(after.runAt.getTime() >= before.runAt.getTime());
    assert.ok(after.runAt.getTime() - before.enqueuedAt.getTime() <= 15_000);
    assert.equal(await client.store.redis.zcard(`rrq:{${q}}:due`), 1);
  });
});

describe("status, cancel and waiting", () => {
  test("getJobStatus of an unknown id is null", async () => {
    assert.equal(await client.getJobStatus("nope"), null);
  });

  test("cancel of a waiting job ends it at once and wakes waiters", async () => {
    const id = await client.enqueue("f", { queueName: queue(), deferBySeconds: 60 });
    const waiting = client.waitForResult(id, { timeoutSeconds: 10 });
    // A second client (a fresh connection, no cache) cancels it.
    const other = new RRQClient({ config: { redisDsn: redis.dsn } });
    try {
      assert.equal(await other.cancel(id), true);
      assert.equal(await other.cancel(id), false);
    } finally {
      await other.close();
    }
    const result = await waiting;
    assert.equal(result.status, JobStatus.CANCELLED);
    assert.ok(result.finishedAt);
  });

  test("cancel and waitForResult of an unknown id throw JobNotFoundError", async () => {
    await assert.rejects(client.cancel("nope"), JobNotFoundError);
    await assert.rejects(client.waitForResult("nope"), JobNotFoundError);
  });

  test("waitForResult times out", async () => {
    const id = await client.enqueue("f", { queueName: queue() });
    await assert.rejects(client.waitForResult(id, { timeoutSeconds: 0.2 }), WaitTimeoutError);
  });
});

describe("configuration", () => {
  test("unknown config keys are rejected", () => {
    assert.throws(() => new RRQClient({ config: { redis_dsn: "x" } as never }), /unknown config key/);
  });

  test("rrq.toml is read", async () => {
    const { mkdtempSync, writeFileSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "rrq-ts-cfg-"));
    const path = join(dir, "rrq.toml");
    writeFileSync(path, `[rrq]\nredis_dsn = "${redis.dsn}"\ndefault_queue_name = "toml-q"\ndefault_max_retries = 7\n[rrq.runners.x]\ncmd = ["x"]\n`);
    const saved = process.env["RRQ_REDIS_DSN"];
    delete process.env["RRQ_REDIS_DSN"];
    const fromFile = new RRQClient({ configPath: path });
    if (saved !== undefined) process.env["RRQ_REDIS_DSN"] = saved;
    try {
      assert.equal(fromFile.config.defaultQueueName, "toml-q");
      assert.equal(fromFile.config.defaultMaxRetries, 7);
      const id = await fromFile.enqueue("f");
      assert.equal((await fromFile.getJobStatus(id))?.queueName, "toml-q");
    } finally {
      await fromFile.close();
    }
  });
});
