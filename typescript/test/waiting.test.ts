/**
 * waitForResult's shared subscriber connection, against a private Redis (no
 * orchestrator). Jobs are completed by cancelling them (cancel.lua publishes
 * on the done channel) or, for a lost message, by writing the record alone.
 * MONITOR (CommandLog) shows when a wait subscribed and read its job.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Redis } from "ioredis";

import { JobStatus, RRQClient, RRQError, WaitTimeoutError } from "../src/index.js";
import { doneChannel } from "../src/store.js";
import type { ChannelSubscription } from "../src/waiting.js";
import { CommandLog, command, type MonitoredCommand, type RedisServer, startRedis } from "./helpers.js";

let redis: RedisServer;
let client: RRQClient;
let canceller: RRQClient;
let admin: Redis;
let log: CommandLog;
let counter = 0;
const queue = (): string => `wait${process.pid}-${++counter}`;
const jobKey = (q: string, id: string): string => `rrq:{${q}}:job:${id}`;

before(async () => {
  redis = await startRedis();
  client = new RRQClient({ config: { redisDsn: redis.dsn } });
  canceller = new RRQClient({ config: { redisDsn: redis.dsn } });
  admin = new Redis(redis.dsn);
  log = await CommandLog.start(admin);
});

after(async () => {
  log?.close();
  admin?.disconnect();
  await canceller?.close();
  await client?.close();
  await redis?.stop();
});

async function numsub(channels: readonly string[]): Promise<number[]> {
  const reply = (await admin.call("PUBSUB", "NUMSUB", ...channels)) as (string | number)[];
  return reply.filter((_, index) => index % 2 === 1).map(Number);
}

async function pubsubClients(): Promise<string[]> {
  const list = String(await admin.call("CLIENT", "LIST", "TYPE", "pubsub"));
  return list.split("\n").filter((line) => line.trim() !== "");
}

/**
 * Resolves once the wait for `id` subscribed and then read the job: it is
 * waiting for the message. (Its first read, to find the queue, comes before
 * the SUBSCRIBE.)
 */
async function waiting(q: string, id: string, from: number): Promise<MonitoredCommand> {
  const [subscribe] = await log.waitFor(command("subscribe", doneChannel(q, id)), 1, from);
  assert.ok(subscribe);
  await log.waitFor(command("hgetall", jobKey(q, id)), 1, log.commands.indexOf(subscribe));
  return subscribe;
}

test("concurrent waits share one subscriber connection and all resolve", async () => {
  const q = queue();
  const ids = await client.enqueueMany("f", Array.from({ length: 50 }, (_, n) => ({ n })), { queueName: q });
  const channels = ids.map((id) => doneChannel(q, id));
  const from = log.mark;
  const waits = ids.map((id) => client.waitForResult(id, { timeoutSeconds: 20 }));

  const subscribes = await log.waitFor((c) => c.args[0] === "subscribe" && channels.includes(c.args[1] ?? ""), 50, from);
  assert.equal(new Set(subscribes.map((c) => c.source)).size, 1, "one connection sent every SUBSCRIBE");
  const clients = await pubsubClients();
  assert.equal(clients.length, 1, clients.join("\n"));
  assert.match(clients[0] ?? "", / sub=50 /);
  assert.deepEqual(await numsub(channels), channels.map(() => 1));

  const unsubscribed = log.waitFor(
    (c) => c.args[0] === "unsubscribe" && channels.includes(c.args[1] ?? ""),
    50,
    from,
  );
  await Promise.all(ids.map((id) => canceller.cancel(id)));
  const results = await Promise.all(waits);
  assert.deepEqual(
    results.map((r) => [r.jobId, r.status]),
    ids.map((id) => [id, JobStatus.CANCELLED]),
  );
  await unsubscribed;
  assert.deepEqual(await numsub(channels), channels.map(() => 0));
  assert.deepEqual(await pubsubClients(), []);
});

test("a wait that times out unsubscribes its channel", async () => {
  const q = queue();
  const id = await client.enqueue("f", { queueName: q });
  const from = log.mark;
  await assert.rejects(client.waitForResult(id, { timeoutSeconds: 0.5 }), WaitTimeoutError);
  await log.waitFor(command("subscribe", doneChannel(q, id)), 1, from);
  await log.waitFor(command("unsubscribe", doneChannel(q, id)), 1, from);
  assert.deepEqual(await numsub([doneChannel(q, id)]), [0]);
});

test("waits on one job share its subscription until the last one leaves", async () => {
  const q = queue();
  const id = await client.enqueue("f", { queueName: q });
  const channel = doneChannel(q, id);
  const from = log.mark;
  const staying = client.waitForResult(id, { timeoutSeconds: 20 });
  await waiting(q, id, from);

  await assert.rejects(client.waitForResult(id, { timeoutSeconds: 0.2 }), WaitTimeoutError);
  // A wait on a finished job subscribes on the same connection, after any
  // UNSUBSCRIBE the timed-out wait sent: once it resolved, Redis ran that.
  const finished = await client.enqueue("f", { queueName: q });
  await canceller.cancel(finished);
  assert.equal((await client.waitForResult(finished)).status, JobStatus.CANCELLED);
  assert.deepEqual(await numsub([channel]), [1]);
  await log.sync(admin);
  assert.equal(log.matching(command("subscribe", channel), from).length, 1);
  assert.equal(log.matching(command("unsubscribe", channel), from).length, 0);

  await canceller.cancel(id);
  assert.equal((await staying).status, JobStatus.CANCELLED);
  await log.waitFor(command("unsubscribe", channel), 1, from);
  assert.deepEqual(await numsub([channel]), [0]);
});

test("after the connection drops, a wait reads the job again: a lost message does not hang it", async () => {
  const q = queue();
  const id = await client.enqueue("f", { queueName: q });
  const channel = doneChannel(q, id);
  const from = log.mark;
  const result = client.waitForResult(id, { timeoutSeconds: 20 });
  const first = await waiting(q, id, from);

  // The job completes with no message (as if it were published while the
  // connection was down), then the connection drops.
  await admin.hset(jobKey(q, id), "status", "4", "result_json", '"done"');
  assert.equal(await admin.call("CLIENT", "KILL", "TYPE", "pubsub"), 1);

  const done = await result;
  assert.equal(done.status, JobStatus.COMPLETED);
  assert.equal(done.result, "done");
  // It was read again only after the new connection subscribed again.
  const again = log.matching((c) => command("subscribe")(c) && c.args.includes(channel) && c.source !== first.source, from);
  assert.ok(again.length > 0, "the channel was subscribed again on the new connection");
  await log.waitFor(command("unsubscribe", channel), 1, from);
  assert.deepEqual(await numsub([channel]), [0]);

  // The reconnected connection still serves later waits.
  const next = await client.enqueue("f", { queueName: q });
  const nextFrom = log.mark;
  const nextResult = client.waitForResult(next, { timeoutSeconds: 20 });
  await waiting(q, next, nextFrom);
  await canceller.cancel(next);
  assert.equal((await nextResult).status, JobStatus.CANCELLED);
});

test("a channel subscribed while the shared connection is still connecting", async () => {
  // ioredis writes a SUBSCRIBE made during its handshake at once (Redis
  // allows it while loading); the connection's ready check must not fail for it.
  const fresh = new RRQClient({ config: { redisDsn: redis.dsn } });
  try {
    const q = queue();
    const [first = "", second = ""] = await fresh.enqueueMany("f", [{}, {}], { queueName: q });
    const store = fresh.store;
    const duplicate = store.redis.duplicate.bind(store.redis);
    let woken = (): void => undefined;
    const wokenSecond = new Promise<void>((resolve) => {
      woken = resolve;
    });
    let during: ChannelSubscription | undefined;
    store.redis.duplicate = (options) => {
      const connection = duplicate(options);
      // "connect": the socket is open and the handshake under way.
      connection.once("connect", () => {
        during = store.subscribeDone(q, second, { wake: () => woken(), fail: () => undefined });
      });
      return connection;
    };
    const from = log.mark;
    const result = fresh.waitForResult(first, { timeoutSeconds: 20 });
    await waiting(q, first, from);
    assert.ok(during, "the second channel was subscribed during the handshake");
    await during.ready;
    await canceller.cancel(second);
    await wokenSecond;
    during.release();
    await canceller.cancel(first);
    assert.equal((await result).status, JobStatus.CANCELLED);
  } finally {
    await fresh.close();
  }
});

test("close() fails the waits still waiting and closes the shared connection", async () => {
  const closing = new RRQClient({ config: { redisDsn: redis.dsn } });
  const q = queue();
  const id = await closing.enqueue("f", { queueName: q });
  const from = log.mark;
  const result = closing.waitForResult(id); // no timeout: only close() ends it
  await waiting(q, id, from);
  await closing.close();
  await assert.rejects(result, (error: unknown) => {
    assert.ok(error instanceof RRQError, String(error));
    assert.match(error.message, /closed/);
    return true;
  });
  // Used again, the client opens new connections.
  await canceller.cancel(id);
  try {
    assert.equal((await closing.waitForResult(id)).status, JobStatus.CANCELLED);
  } finally {
    await closing.close();
  }
});
