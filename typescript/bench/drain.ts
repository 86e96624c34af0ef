/**
 * Drain rate of one rrq-ts-runner process: enqueue N no-op jobs first, then
 * run `rrq worker run --burst` with one runner (max_in_flight M) until the
 * queue is empty, and compute N / (max finished_at_ms - min started_at_ms)
 * from the job records.
 *
 *   npm run build && node --import tsx bench/drain.ts [jobs=10000] [maxInFlight=256]
 */
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { RRQClient } from "../src/index.js";
import { freePort, orchestratorBinary, OutputWatcher, PACKAGE_DIR, startRedis, tempDir, TIMINGS } from "../test/helpers.js";

const jobs = Number(process.argv[2] ?? 10_000);
const maxInFlight = Number(process.argv[3] ?? 256);
const queue = "bench";

const redis = await startRedis();
const client = new RRQClient({ config: { redisDsn: redis.dsn } });
try {
  const enqueueStart = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < jobs; i += 500) {
    const batch = Array.from({ length: Math.min(500, jobs - i) }, () => client.enqueue("echo", { queueName: queue }));
    ids.push(...(await Promise.all(batch)));
  }
  const enqueueMs = performance.now() - enqueueStart;

  const dir = tempDir("rrq-ts-bench-");
  const config = join(dir, "rrq.toml");
  const cmd = ["node", join(PACKAGE_DIR, "dist", "conformance", "fixture-runner.js")];
  writeFileSync(
    config,
    `[rrq]
redis_dsn = "${redis.dsn}"
${TIMINGS}
[rrq.runners.typescript]
cmd = [${cmd.map((p) => JSON.stringify(p)).join(", ")}]
tcp_socket = "127.0.0.1:${await freePort()}"
max_in_flight = ${maxInFlight}
`,
  );
  const child = spawn(orchestratorBinary(), ["worker", "run", "--config", config, "--burst"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  const output = new OutputWatcher();
  output.attach(child);
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  if (code !== 0) throw new Error(`orchestrator exited ${code}:\n${output.text}`);

  const pipeline = client.store.redis.pipeline();
  for (const id of ids) pipeline.hmget(`rrq:{${queue}}:job:${id}`, "status", "started_at_ms", "finished_at_ms");
  const rows = ((await pipeline.exec()) ?? []).map(([, value]) => value as [string, string, string]);
  const completed = rows.filter(([status]) => status === "4");
  const start = Math.min(...completed.map(([, started]) => Number(started)));
  const end = Math.max(...completed.map(([, , finished]) => Number(finished)));
  const seconds = (end - start) / 1000;
  console.log(
    JSON.stringify({
      jobs,
      completed: completed.length,
      maxInFlight,
      enqueueSeconds: +(enqueueMs / 1000).toFixed(3),
      drainSeconds: seconds,
      jobsPerSecond: Math.round(completed.length / seconds),
      orchestrator: orchestratorBinary(),
    }),
  );
} finally {
  await client.close();
  await redis.stop();
}
