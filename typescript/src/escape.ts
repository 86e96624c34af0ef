/**
 * Escaping of log text that carries job data. Job ids, cancel reasons and
 * error messages come from producers and handlers; logged raw, a `\n` starts
 * a line that looks like the runner's own, and an ANSI or bidi control
 * sequence rewrites what a terminal shows. The runner's `log()` passes every
 * message through `escapeControl`. Same character set as the orchestrator's
 * `rrq::logging`: C0 controls, DEL, C1 controls, U+2028/U+2029 and the bidi
 * embedding, override and isolate controls.
 */

// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED: Readonly<Record<string, string>> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/** `text` with every control character written as an escape (`\n`, `\u{1b}`). */
export function escapeControl(text: string): string {
  return text.replace(
    UNSAFE,
    (c) => NAMED[c] ?? `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`,
  );
}
