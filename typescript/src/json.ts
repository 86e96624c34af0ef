/**
 * JSON encoding that produces the same text as Python's
 * `json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))`,
 * which is how every RRQ producer and runner writes params and results.
 *
 * Unlike `JSON.stringify` it rejects what Python rejects instead of dropping
 * or rewriting it: NaN and Infinity, BigInt, functions, symbols, cycles, and
 * objects other than plain objects and arrays (Date, Map, Set, class
 * instances). Numbers that are not integers below 1e-4 in magnitude are
 * written the way Python writes floats (`1e-05`, not `0.00001`).
 */

/** The value cannot be encoded as JSON. */
export class JsonEncodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "JsonEncodeError";
  }
}

export interface EncodeOptions {
  /**
   * What to do with `undefined` inside objects and arrays: "error" (params:
   * nothing may be dropped silently) or "omit" (results: like JSON.stringify,
   * an undefined property is left out and an undefined array item is null).
   */
  readonly undefinedValues: "error" | "omit";
}

function formatNumber(value: number, path: string): string {
  if (!Number.isFinite(value)) {
    throw new JsonEncodeError(`${path} is ${value}: NaN and Infinity are not JSON`);
  }
  if (Number.isInteger(value)) {
    return JSON.stringify(value);
  }
  const magnitude = Math.abs(value);
  if (magnitude < 1e-4) {
    // Python's float repr switches to exponent notation below 1e-4, with at
    // least two exponent digits: 1e-05, 2.5e-07.
    const [mantissa, exponent] = value.toExponential().split("e");
    const exp = Number(exponent);
    const sign = exp < 0 ? "-" : "+";
    return `${mantissa}e${sign}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return JSON.stringify(value);
}

function isPlainObject(value: object): boolean {
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") {
    const ctor = (value as { constructor?: { name?: unknown } }).constructor;
    return typeof ctor?.name === "string" ? ctor.name : "object";
  }
  return typeof value;
}

/** Encodes `value` as compact JSON text; throws JsonEncodeError when it cannot. */
export function encodeJson(value: unknown, options: EncodeOptions): string {
  const parts: string[] = [];
  const stack = new Set<object>();

  const write = (item: unknown, path: string): void => {
    switch (typeof item) {
      case "string":
        parts.push(JSON.stringify(item));
        return;
      case "number":
        parts.push(formatNumber(item, path));
        return;
      case "boolean":
        parts.push(item ? "true" : "false");
        return;
      case "bigint":
        throw new JsonEncodeError(`${path} is a BigInt, which is not JSON-serializable`);
      case "undefined":
      case "function":
      case "symbol":
        throw new JsonEncodeError(`${path} is a ${typeof item}, which is not JSON-serializable`);
      case "object":
        break;
    }
    if (item === null) {
      parts.push("null");
      return;
    }
    const object = item as object;
    if (stack.has(object)) {
      throw new JsonEncodeError(`${path} is a circular reference`);
    }
    if (Array.isArray(object)) {
      stack.add(object);
      parts.push("[");
      object.forEach((element: unknown, index: number) => {
        if (index > 0) parts.push(",");
        if (element === undefined && options.undefinedValues === "omit") {
          parts.push("null");
        } else {
          write(element, `${path}[${index}]`);
        }
      });
      parts.push("]");
      stack.delete(object);
      return;
    }
    if (!isPlainObject(object)) {
      throw new JsonEncodeError(
        `${path} is a ${describe(object)}, which is not JSON-serializable (only plain objects, arrays, strings, finite numbers, booleans and null are)`,
      );
    }
    stack.add(object);
    parts.push("{");
    let first = true;
    for (const [key, element] of Object.entries(object)) {
      if (element === undefined && options.undefinedValues === "omit") continue;
      if (!first) parts.push(",");
      first = false;
      parts.push(JSON.stringify(key), ":");
      write(element, `${path}.${key}`);
    }
    parts.push("}");
    stack.delete(object);
  };

  write(value, "value");
  return parts.join("");
}

/** Size of a string in UTF-8 bytes. */
export function utf8Length(text: string): number {
  return Buffer.byteLength(text, "utf8");
}
