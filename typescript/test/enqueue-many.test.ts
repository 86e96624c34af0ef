/** RRQClient.enqueueMany against a private Redis (no orchestrator). */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Redis } from "ioredis";

import {
  ENQUEUE_MANY_CHUNK,
  InvalidOptionError,
  InvalidParamsError,
  JobStatus,
  PayloadTooLargeError,
  RRQClient,
} from "../src/index.js";
import { ENQUEUE_CREATED, ENQUEUE_EXISTS } from "../src/store.js";
import { CommandLog, command, nothingWritten, type RedisServer, rejectsWith, startRedis } from "./helpers.js";

let redis: RedisServer;
let client: RRQClient;
let admin: Redis;
let log: CommandLog;
let counter = 0;
const queue = (): string => `many${process.pid}-${++counter}`;
const jobKey = (q: string, id: string): string => `rrq:{${q}}:job:${id}`;
const ULID = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;

before(async () => {
  redis = await startRedis();
  client = new RRQClient({ config: { redisDsn: redis.dsn, maxPayloadBytes: 1000 } });
  admin = new Redis(redis.dsn);
  log = await CommandLog.start(admin);
});

after(async () => {
  log?.close();
  admin?.disconnect();
  await client?.close();
  await redis?.stop();
});

/** Runs `block` and fails when it wrote anything, key by key and by DBSIZE. */
async function unwritten<T>(block: () => Promise<T>): Promise<T> {
  const size = await admin.dbsize();
  const result = await nothingWritten(admin, block);
  assert.equal(await admin.dbsize(), size);
  return result;
}

/** Every job hash of `ids`, in one round trip. */
async function records(q: string, ids: readonly string[]): Promise<Record<string, string>[]> {
  const pipeline = admin.pipeline();
  for (const id of ids) pipeline.hgetall(jobKey(q, id));
  const replies = (await pipeline.exec()) ?? [];
  return replies.map(([error, fields]) => {
    assert.equal(error, null);
    return fields as Record<string, string>;
  });
}

const withoutTimes = (hash: Record<string, string>): Record<string, string> => {
  const { enqueued_at_ms: _enqueued, run_at_ms: _runAt, ...rest } = hash;
  return rest;
};

describe("enqueueMany", () => {
  test("writes the records enqueue writes, over several chunks, and returns the ids in order", async () => {
    const q = queue();
    const count = 1_200; // two full chunks and a partial one
    const options = {
      queueName: q,
      maxRetries: 1,
      jobTimeoutSeconds: 30,
      resultTtlSeconds: 60.0005,
      deferBySeconds: 5,
      traceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      traceState: "vendor=1",
    };
    const paramsList = Array.from({ length: count }, (_, n) => ({ n, text: `wörld ✓ ${n}` }));
    const from = log.mark;

    const ids = await client.enqueueMany("work", paramsList, options);

    assert.equal(ids.length, count);
    assert.equal(new Set(ids).size, count);
    for (const id of ids) assert.match(id, ULID);
    // One script call per chunk of ENQUEUE_MANY_CHUNK jobs: 2 keys, 17 shared
    // ARGV, then (id, params) pairs. A call answered NOSCRIPT is sent again
    // with EVAL: each chunk counts once, by its first job's key.
    await log.sync(admin);
    const calls = log.matching((c) => c.args[0] === "evalsha" || c.args[0] === "eval", from);
    const jobsPerChunk = new Map(calls.map((c) => [c.args[3], 1 + (c.args.length - 3 - 2 - 17) / 2]));
    assert.deepEqual([...jobsPerChunk.values()], [ENQUEUE_MANY_CHUNK, ENQUEUE_MANY_CHUNK, count - 2 * ENQUEUE_MANY_CHUNK]);
    assert.ok((await admin.smembers("rrq:queues")).includes(q));
    assert.equal(await admin.zcard(`rrq:{${q}}:due`), count);

    const single = await client.enqueue("work", { ...options, params: { n: 0, text: "wörld ✓ 0" } });
    const [reference] = await records(q, [single]);
    assert.ok(reference);
    const hashes = await records(q, ids);
    hashes.forEach((hash, n) => {
      // The ids come back in params order, and each record is enqueue's but for its params.
      assert.deepEqual(withoutTimes(hash), {
        ...withoutTimes(reference),
        params_json: JSON.stringify(paramsList[n]),
      });
      assert.equal(Number(hash["run_at_ms"]) - Number(hash["enqueued_at_ms"]), 5_000);
    });
    const scores = await admin.zmscore(`rrq:{${q}}:due`, ...ids);
    assert.deepEqual(scores.map(Number), hashes.map((hash) => Number(hash["run_at_ms"])));
  });

  test("remembers the ids' queue for status lookups, as enqueue does", async () => {
    const q = queue();
    const ids = await client.enqueueMany("work", [{}, {}, {}], { queueName: q });
    // Unregistered, the queue is found only through what the client remembered.
    await admin.srem("rrq:queues", q);
    const stranger = new RRQClient({ config: { redisDsn: redis.dsn } });
    try {
      assert.equal(await stranger.getJobStatus(ids[2] ?? ""), null);
    } finally {
      await stranger.close();
    }
    for (const id of ids) {
      const status = await client.getJobStatus(id);
      assert.equal(status?.queueName, q);
      assert.equal(status?.status, JobStatus.PENDING);
    }
  });

  test("an empty list writes nothing and returns [], but the options are still checked", async () => {
    const q = queue();
    assert.deepEqual(await unwritten(() => client.enqueueMany("work", [], { queueName: q })), []);
    await unwritten(async () => {
      await assert.rejects(client.enqueueMany("work", [], { maxRetries: -1 }), InvalidOptionError);
      await assert.rejects(client.enqueueMany("", []), InvalidOptionError);
      await assert.rejects(client.enqueueMany("work", [], { queueName: "a{b}" }), InvalidOptionError);
    });
  });

  test("one job answers as enqueue does", async () => {
    const q = queue();
    const [id] = await client.enqueueMany("work", [null], { queueName: q });
    assert.ok(id);
    assert.equal((await admin.hgetall(jobKey(q, id)))["params_json"], "{}");
  });

  test("sends the script again after SCRIPT FLUSH", async () => {
    const q = queue();
    await client.enqueueMany("work", [{}], { queueName: q });
    await admin.script("FLUSH");
    assert.equal((await client.enqueueMany("work", [{}, {}], { queueName: q })).length, 2);
    assert.equal(await admin.zcard(`rrq:{${q}}:due`), 3);
  });
});

describe("enqueueMany validation: nothing is written on rejection", () => {
  const circular: Record<string, unknown> = {};
  circular["self"] = circular;
  // Good entries around the bad one, which sits in the second chunk: every
  // entry is validated before the first chunk is sent.
  const around = (bad: unknown): never =>
    [...Array.from({ length: 700 }, (_, n) => ({ n })), bad, { n: 701 }] as never;
  const cases: [string, () => Promise<unknown>, new (...args: never[]) => Error, string?][] = [
    ["params an array", () => client.enqueueMany("f", around([1, 2])), InvalidParamsError],
    ["params a string", () => client.enqueueMany("f", around("x")), InvalidParamsError],
    ["params a number", () => client.enqueueMany("f", around(5)), InvalidParamsError],
    ["params with NaN", () => client.enqueueMany("f", around({ x: Number.NaN })), InvalidParamsError],
    ["params with undefined", () => client.enqueueMany("f", around({ x: undefined })), InvalidParamsError],
    ["circular params", () => client.enqueueMany("f", around(circular)), InvalidParamsError],
    ["params too large", () => client.enqueueMany("f", around({ x: "é".repeat(500) })), PayloadTooLargeError],
    ["a bad first entry", () => client.enqueueMany("f", [{ x: Number.NaN }, {}]), InvalidParamsError],
    ["paramsList an object", () => client.enqueueMany("f", { not: "a list" } as never), InvalidParamsError],
    ["paramsList a string", () => client.enqueueMany("f", "{}" as never), InvalidParamsError],
    ["paramsList missing", () => client.enqueueMany("f", undefined as never), InvalidParamsError],
    ["option params", () => client.enqueueMany("f", [{}], { params: {} } as never), InvalidOptionError, "params"],
    ["option params undefined", () => client.enqueueMany("f", [{}], { params: undefined } as never), InvalidOptionError, "params"],
    ["option jobId", () => client.enqueueMany("f", [{}], { jobId: "fixed" } as never), InvalidOptionError, "jobId"],
    ["option jobId with an empty list", () => client.enqueueMany("f", [], { jobId: "fixed" } as never), InvalidOptionError, "jobId"],
    ["unknown option", () => client.enqueueMany("f", [{}], { bogus: 1 } as never), InvalidOptionError, "bogus"],
    ["rule option", () => client.enqueueMany("f", [{}], { uniqueTtlSeconds: 5 } as never), InvalidOptionError, "uniqueTtlSeconds"],
    ["negative retries", () => client.enqueueMany("f", [{}], { maxRetries: -1 }), InvalidOptionError, "maxRetries"],
    ["options not an object", () => client.enqueueMany("f", [{}], 5 as never), InvalidOptionError, "options"],
    ["empty function name", () => client.enqueueMany("", [{}]), InvalidOptionError, "functionName"],
  ];
  for (const [name, call, ErrorType, option] of cases) {
    test(name, async () => {
      await unwritten(() => rejectsWith(call, ErrorType, option));
    });
  }
});

test("a rejected entry is named by its index in paramsList", async () => {
  const list = (bad: unknown, at: number): never =>
    Array.from({ length: 800 }, (_, n) => (n === at ? bad : { n })) as never;
  const cases: [number, unknown, new (...args: never[]) => Error][] = [
    [0, [1, 2], InvalidParamsError],
    [3, { x: Number.NaN }, InvalidParamsError],
    [701, { x: "é".repeat(500) }, PayloadTooLargeError],
  ];
  for (const [at, bad, ErrorType] of cases) {
    await unwritten(() =>
      assert.rejects(client.enqueueMany("f", list(bad, at)), (error: unknown) => {
        assert.ok(error instanceof ErrorType, `${String(error)} is not a ${ErrorType.name}`);
        assert.match((error as Error).message, new RegExp(`^paramsList\\[${at}\\]: params `));
        return true;
      }),
    );
  }
});

test("Store.enqueueMany reports an existing id without writing it", async () => {
  const q = queue();
  const existing = await client.enqueue("work", { queueName: q, params: { old: true } });
  const store = client.store;
  const shared = {
    jobId: "",
    functionName: "work",
    queueName: q,
    paramsJson: "",
    maxRetries: 0,
    jobTimeoutMs: 0,
    resultTtlMs: 0,
    deferMs: 0,
    runAtMs: 0,
    maxParamsBytes: 1000,
    traceParent: "",
    traceState: "",
    rule: "",
    ruleKey: "",
    ruleWindowMs: 0,
    debounceMaxWaitMs: 0,
  } as const;
  const replies = await store.enqueueMany(
    shared,
    [
      ["fresh-1", '{"n":1}'],
      [existing, '{"new":true}'],
      ["fresh-2", '{"n":2}'],
    ],
    false,
  );
  assert.deepEqual(
    replies.map((r) => [r.code, r.jobId]),
    [
      [ENQUEUE_CREATED, "fresh-1"],
      [ENQUEUE_EXISTS, existing],
      [ENQUEUE_CREATED, "fresh-2"],
    ],
  );
  assert.equal(replies[1]?.value, 1); // PENDING's number
  assert.ok((replies[0]?.value ?? 0) > 0); // run_at_ms
  assert.equal((await admin.hgetall(jobKey(q, existing)))["params_json"], '{"old":true}');
  assert.deepEqual(await store.enqueueMany(shared, [], false), []);
});

test("queue registration uses SADD rrq:queues as enqueue does", async () => {
  const q = queue();
  const from = log.mark;
  await client.enqueueMany("work", [{}, {}], { queueName: q });
  await client.enqueueMany("work", [{}, {}], { queueName: q });
  await client.enqueue("work", { queueName: q });
  await log.sync(admin);
  // The first call registers the queue; the client then knows it.
  assert.equal(log.matching(command("sadd", "rrq:queues"), from).length, 1);
  assert.ok((await admin.smembers("rrq:queues")).includes(q));
});
