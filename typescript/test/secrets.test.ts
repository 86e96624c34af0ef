// Secrets stay out of errors, job text is escaped in the runner's log (issue 13, items 7 and 8).
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { test } from "node:test";

import { ConfigError, RRQClient, redactDsn } from "../src/index.js";
import { UNPARSEABLE } from "../src/dsn.js";
import { escapeControl } from "../src/escape.js";

const PASSWORD = "pw-5ecret-Zq9";

test("every DSN form is redacted", () => {
  const cases: [string, string][] = [
    ["redis://localhost:6379/0", "redis://localhost:6379/0"],
    ["redis://:secret@host:6379/0", "redis://***@host:6379/0"],
    ["redis://alice:secret@host:6379/0", "redis://alice:***@host:6379/0"],
    ["redis://secret@host/0", "redis://***@host/0"],
    ["rediss://u:p%40ss-secret@h:6380/1", "rediss://u:***@h:6380/1"],
    ["redis://:p@ss-secret@host/0", "redis://***@host/0"],
    ["unix://:secret@/path/redis.sock?db=0", "unix://***@/path/redis.sock?db=0"],
    ["redis+unix://:secret@/path/redis.sock?db=3", "redis+unix://***@/path/redis.sock?db=3"],
    ["redis+unix:///path/redis.sock?db=2&pass=secret", "redis+unix:///path/redis.sock?db=2&pass=***"],
    ["unix:///s.sock?password=secret&db=1", "unix:///s.sock?password=***&db=1"],
    ["redis://host/0?PassWord=secret&user=bob&secret", "redis://host/0?PassWord=***&user=***&***"],
    ["redis://h/0#secret", "redis://h/0#***"],
    ["unix:///run/redis.sock", "unix:///run/redis.sock"],
  ];
  for (const [dsn, shown] of cases) {
    assert.equal(redactDsn(dsn), shown, dsn);
    assert.ok(!redactDsn(dsn).includes("secret"), dsn);
  }
});

test("a malformed DSN is not echoed", () => {
  for (const dsn of [
    "",
    "secret",
    "redis:/:secret@host",
    "redis//:secret@host",
    "://:secret@host",
    "re dis://:secret@host",
    "host:6379:secret",
  ]) {
    assert.equal(redactDsn(dsn), UNPARSEABLE, dsn);
  }
});

test("an invalid DSN fails with a ConfigError that holds no password", () => {
  for (const dsn of [`redis://:${PASSWORD}@host:notaport/0`, `unix://:${PASSWORD}@[x/sock`]) {
    const client = new RRQClient({ redisDsn: dsn });
    let caught: unknown;
    try {
      void client.store;
    } catch (error) {
      caught = error;
    }
    assert.ok(caught instanceof ConfigError, inspect(caught));
    const shown = inspect(caught, { depth: 10 });
    assert.ok(!shown.includes(PASSWORD), shown);
    assert.match(shown, /not a valid Redis DSN/);
  }
});

test("control characters are escaped", () => {
  assert.equal(escapeControl("plain café ☕"), "plain café ☕");
  assert.equal(
    escapeControl("x\n2026-01-01T00:00:00Z  INFO forged\x1b[31m"),
    "x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[31m",
  );
  assert.equal(escapeControl("a\rb\tc\x00d\x7f\x85\x9b"), "a\\rb\\tc\\u{0}d\\u{7f}\\u{85}\\u{9b}");
  assert.equal(
    escapeControl("\u202e\u2066\u2069\u2028"),
    "\\u{202e}\\u{2066}\\u{2069}\\u{2028}",
  );
});
