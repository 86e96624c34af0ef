/** Key prefixes and databases: every key starts with the prefix, every channel names the database too. */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ConfigError, RRQClient } from "../src/index.js";
import { type RedisServer, startRedis } from "./helpers.js";

let redis: RedisServer;

before(async () => {
  redis = await startRedis();
});

after(async () => {
  await redis?.stop();
});

test("keys carry the prefix and channels the database", async () => {
  const dsn = redis.dsn.replace(/\/\d+$/, "/9");
  const client = new RRQClient({ config: { redisDsn: dsn, keyPrefix: "app.x" } });
  try {
    const keys = client.store.keys;
    assert.equal(keys.job("q", "1"), "app.x:{q}:job:1");
    assert.equal(keys.queues, "app.x:queues");
    assert.equal(keys.wakeChannel("q"), "app.x:db9:{q}:wake");
    assert.equal(keys.doneChannel("q", "1"), "app.x:db9:{q}:done:1");
    const id = await client.enqueue("f", { queueName: "q" });
    assert.equal(await client.store.redis.exists(`app.x:{q}:job:${id}`), 1);
    assert.equal((await client.getJobStatus(id))?.queueName, "q");
  } finally {
    await client.close();
  }
});

test("a bad prefix is a ConfigError naming key_prefix", () => {
  for (const bad of ["", "a{b}", "a*", "with space", "é", "x".repeat(65)]) {
    assert.throws(
      () => new RRQClient({ config: { redisDsn: redis.dsn, keyPrefix: bad } }),
      (error: unknown) => error instanceof ConfigError && error.message.includes("key_prefix"),
      bad,
    );
  }
});
