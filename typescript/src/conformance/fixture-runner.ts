/**
 * The standard conformance handlers (conformance-tests/README.md), for the
 * TypeScript runner. Started by the orchestrator (the `runner_cmd` of
 * conformance-tests/runners/typescript/features.yaml) with the standard runner
 * environment.
 */
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleepMs } from "node:timers/promises";

import { RetryJob } from "../errors.js";
import { type ExecutionRequest, Registry } from "../registry.js";
import { Runner, RunnerConfigError } from "../runner.js";

const LANGUAGE = "typescript";

/** The error type the failing handlers throw (recorded as `FixtureError`). */
class FixtureError extends Error {
  override name = "FixtureError";
}

/** Writes `<params.dir>/<name>` atomically (temp file, then rename), synchronously. */
function write(request: ExecutionRequest, name: string, text: string): void {
  const dir = String(request.params["dir"]);
  const tmp = join(dir, `.${name}.tmp`);
  writeFileSync(tmp, text, "utf8");
  renameSync(tmp, join(dir, name));
}

function traceIdOf(traceparent: string): string {
  const parts = traceparent.split("-");
  return parts.length >= 4 && parts[1]?.length === 32 ? parts[1] : "";
}

/** Resolves when `signal` aborts; rejects never. */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}

export const registry = new Registry()
  .register("echo", (request) => request.params)
  .register("whoami", () => ({ language: LANGUAGE, pid: process.pid }))
  .register("sleep", async (request, signal) => {
    const seconds = Number(request.params["seconds"]);
    await sleepMs(seconds * 1000, undefined, { signal }); // rejects on cancel
    return { slept: request.params["seconds"] };
  })
  .register("fail_then_succeed", (request) => {
    if (request.attempt <= Number(request.params["failures"])) {
      throw new FixtureError(`attempt ${request.attempt} fails`);
    }
    return { attempt: request.attempt };
  })
  .register("always_fail", () => {
    throw new FixtureError("always fails");
  })
  .register("fail_with_bytes", (request) => {
    throw new FixtureError("x".repeat(Number(request.params["bytes"])));
  })
  .register("retry_with_delay", (request) => {
    if (request.attempt === 1) {
      throw new RetryJob({ deferSeconds: Number(request.params["delay_seconds"]), message: "retry later" });
    }
    return { attempt: request.attempt };
  })
  .register("hang_ignore_cancel", async (request) => {
    write(request, `started-${request.attempt}`, String(process.pid));
    await new Promise<never>(() => undefined); // never settles; the signal is ignored
  })
  .register("crash", (request) => {
    write(request, `started-${request.attempt}`, String(process.pid));
    const crashAttempts = request.params["crash_attempts"] ?? 1;
    if (request.attempt <= Number(crashAttempts)) {
      process.exit(137); // at once, no cleanup, as a crash
    }
    return { attempt: request.attempt };
  })
  .register("large_result", (request) => ({ data: "x".repeat(Number(request.params["bytes"])) }))
  .register("non_serializable", () => BigInt(1)) // a BigInt: not JSON
  .register("trace_id", (request) => ({
    trace_id: traceIdOf(request.traceContext.traceparent ?? ""),
  }))
  .register("report_cancel", async (request, signal) => {
    write(request, `started-${request.attempt}`, String(process.pid));
    await aborted(signal);
    write(request, `cancelled-${request.attempt}`, "1");
    throw signal.reason;
  });

export const settings = { registry };

// Run as a program (not when imported, e.g. by `rrq-ts-runner --settings`).
if (process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/\\/g, "/"))) {
  let runner: Runner;
  try {
    runner = new Runner(settings);
  } catch (error) {
    if (!(error instanceof RunnerConfigError)) throw error;
    process.stderr.write(`fixture-runner: error: ${error.message}\n`);
    process.exit(2);
  }
  runner.run().then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`fixture-runner: ${String(error)}\n`);
      process.exit(1);
    },
  );
}
