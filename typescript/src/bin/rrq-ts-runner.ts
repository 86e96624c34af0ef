#!/usr/bin/env node
/**
 * `rrq-ts-runner --settings ./runner.js [--connect HOST:PORT|unix:PATH]`: starts a
 * TypeScript runner process.
 *
 * The settings module (a path relative to the current directory) exports
 * `settings` (or a default export): `{ registry, maxInFlight?,
 * shutdownGraceSeconds? }`. The orchestrator runs this command (`cmd` in
 * rrq.toml) with the address to dial in `RRQ_ORCHESTRATOR_ADDR`.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { Runner, RunnerConfigError, type RunnerSettings } from "../runner.js";

const EXIT_USAGE = 2;

class SettingsError extends Error {}

function usage(message: string): never {
  process.stderr.write(
    `rrq-ts-runner: error: ${message}\nusage: rrq-ts-runner --settings ./runner.js [--connect HOST:PORT|unix:PATH]\n`,
  );
  process.exit(EXIT_USAGE);
}

async function loadSettings(reference: string): Promise<RunnerSettings> {
  const path = resolve(process.cwd(), reference);
  let module: Record<string, unknown>;
  try {
    module = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ERR_MODULE_NOT_FOUND" && String((error as Error).message).includes(path)) {
      throw new SettingsError(`cannot import settings module '${reference}' (resolved to ${path})`);
    }
    throw error;
  }
  const settings = module["settings"] ?? module["default"];
  if (typeof settings !== "object" || settings === null) {
    throw new SettingsError(
      `${reference} must export 'settings' (or a default export): an object { registry, maxInFlight? }`,
    );
  }
  const registry = (settings as { registry?: unknown }).registry;
  if (
    typeof registry !== "object" ||
    registry === null ||
    typeof (registry as { names?: unknown }).names !== "function" ||
    typeof (registry as { get?: unknown }).get !== "function"
  ) {
    throw new SettingsError(`the settings exported by ${reference} have no 'registry' (a Registry)`);
  }
  return settings as RunnerSettings;
}

async function main(): Promise<number> {
  let values: { settings?: string | undefined; connect?: string | undefined; help?: boolean | undefined };
  try {
    ({ values } = parseArgs({
      options: {
        settings: { type: "string" },
        connect: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  if (values.help) {
    process.stdout.write("usage: rrq-ts-runner --settings ./runner.js [--connect HOST:PORT|unix:PATH]\n");
    return 0;
  }
  if (!values.settings) usage("--settings is required");
  let runner: Runner;
  try {
    const settings = await loadSettings(values.settings);
    runner = new Runner(settings, { addr: values.connect });
  } catch (error) {
    if (error instanceof SettingsError || error instanceof RunnerConfigError) {
      usage(error.message);
    }
    throw error;
  }
  return runner.run();
}

main().then(
  (code) => {
    // A handler that ignores cancellation may still hold timers: do not wait for it.
    process.exit(code);
  },
  (error: unknown) => {
    process.stderr.write(`rrq-ts-runner: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
