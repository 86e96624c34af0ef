/**
 * The conformance producer fixture (conformance-tests/README.md) for the
 * TypeScript client.
 *
 * Reads one JSON request on stdin, makes one call on `RRQClient`, prints one
 * JSON object on stdout and exits 0, also when the call threw. Options arrive
 * with the Python names (`queue_name`) and are passed on in camelCase
 * (`queueName`); a name the client does not know is passed on as well, so the
 * client rejects it as it would any unknown option.
 */
import { RRQClient } from "../client.js";

const METHODS = [
  "enqueue",
  "enqueue_many",
  "enqueue_with_unique_key",
  "enqueue_with_rate_limit",
  "enqueue_with_debounce",
];

const camel = (name: string): string => name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** An ISO 8601 time; like Python's fromisoformat + RRQ's rule, no offset means UTC. */
function parseTime(text: string): Date {
  const hasZone = /(Z|[+-]\d{2}(:?\d{2})?)$/i.test(text) && text.includes("T");
  return new Date(hasZone ? text : `${text}${text.includes("T") ? "" : "T00:00:00"}Z`);
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

async function call(request: Record<string, unknown>): Promise<Record<string, unknown>> {
  const method = String(request["method"]);
  if (!METHODS.includes(method)) {
    return { error: { type: "UnknownMethod", message: `unknown method '${method}'` } };
  }
  const options: Record<string, unknown> = {};
  const raw = (request["options"] ?? {}) as Record<string, unknown>;
  for (const [name, value] of Object.entries(raw)) {
    options[camel(name)] = name === "defer_until" && typeof value === "string" ? parseTime(value) : value;
  }
  if (!options["traceParent"]) delete options["traceParent"];
  const functionName = request["function_name"] as string;
  const client = new RRQClient({ config: { redisDsn: String(request["redis_dsn"]) } });
  try {
    if (method === "enqueue_many") {
      return { job_ids: await client.enqueueMany(functionName, request["params_list"] as never, options) };
    }
    let jobId: string | null;
    switch (method) {
      case "enqueue":
        jobId = await client.enqueue(functionName, options);
        break;
      case "enqueue_with_unique_key":
        jobId = await client.enqueueWithUniqueKey(functionName, request["unique_key"] as string, options);
        break;
      case "enqueue_with_rate_limit":
        jobId = await client.enqueueWithRateLimit(functionName, options as never);
        break;
      default:
        jobId = await client.enqueueWithDebounce(functionName, options as never);
    }
    return { job_id: jobId };
  } catch (error) {
    const err = error instanceof Error ? error : new Error(String(error));
    return { error: { type: err.name, message: err.message } };
  } finally {
    await client.close();
  }
}

const request = JSON.parse(await readStdin()) as Record<string, unknown>;
const response = await call(request);
process.stdout.write(`${JSON.stringify(response)}\n`);
process.exit(0);
