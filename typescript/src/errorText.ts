/**
 * Error text a runner can always send: well-formed UTF-16 (so it encodes as
 * UTF-8 without loss) and of bounded size.
 *
 * A JS string may hold lone surrogates; protobuf's UTF-8 encoder would replace
 * them silently, so they are replaced here and the message says how many. The
 * orchestrator keeps only so many bytes of a message or traceback
 * (`HelloAck.max_error_bytes`); the cuts and markers match its own
 * (rust/rrq/src/error_text.rs), so a text cut here is not cut again there.
 */

/** Bytes a text may exceed its cap by and still be kept whole (the marker's room). */
export const MARKER_ROOM = 96;

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** `text` with every lone surrogate replaced by U+FFFD, and how many were. */
export function replaceUnencodable(text: string): [string, number] {
  let count = 0;
  const fixed = text.replace(LONE_SURROGATE, () => {
    count += 1;
    return "\ufffd";
  });
  return [fixed, count];
}

/** Index in `bytes` at or before `at` where a UTF-8 character starts. */
function charStartAtOrBefore(bytes: Buffer, at: number): number {
  let i = at;
  while (i > 0 && i < bytes.length && ((bytes[i] as number) & 0xc0) === 0x80) i -= 1;
  return i;
}

/** `text` cut to its first `cap` UTF-8 bytes plus a marker when longer than
 * `cap` + MARKER_ROOM; `cap <= 0` means no cap. */
export function cutHead(text: string, cap: number): string {
  if (cap <= 0 || text.length * 3 <= cap) return text;
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= cap + MARKER_ROOM) return text;
  const end = charStartAtOrBefore(bytes, cap);
  return `${bytes.subarray(0, end).toString("utf8")}… [truncated by rrq: ${bytes.length} bytes, kept ${end}]`;
}

/** `text` cut to its last `cap` UTF-8 bytes after a marker when longer than
 * `cap` + MARKER_ROOM; `cap <= 0` means no cap. */
export function cutTail(text: string, cap: number): string {
  if (cap <= 0 || text.length * 3 <= cap) return text;
  const bytes = Buffer.from(text, "utf8");
  if (bytes.length <= cap + MARKER_ROOM) return text;
  let start = bytes.length - cap;
  while (start < bytes.length && ((bytes[start] as number) & 0xc0) === 0x80) start += 1;
  const kept = bytes.length - start;
  return `[truncated by rrq: ${bytes.length} bytes, kept the last ${kept}] …${bytes.subarray(start).toString("utf8")}`;
}
