/**
 * Redaction of Redis DSNs: the one way the TypeScript package shows a DSN.
 *
 * A DSN may carry a password in its user info (`redis://user:pw@host`,
 * `unix://:pw@/run/redis.sock`) or in its query string (`?password=pw`,
 * redis-rs's `?pass=pw`). The redacted form keeps what helps an operator find
 * the server (scheme, user name, host, port, socket path, database) and puts
 * `***` in place of everything else. A DSN whose shape is not `scheme://...`
 * is not echoed at all: a typo can sit anywhere in it, including next to the
 * password. Same rules as the Rust `rrq_store::redact_dsn` and Python's
 * `rrq._dsn.redact_dsn`.
 */

const HIDDEN = "***";

/** Shown instead of a DSN that does not have the shape `scheme://...`. */
export const UNPARSEABLE = "<unparseable DSN, not shown>";

/** Query parameters whose values are shown; every other value is hidden. */
const SHOWN_PARAMS = new Set(["db", "protocol"]);

function partition(text: string, sep: string, last = false): [string, string, string] {
  const at = last ? text.lastIndexOf(sep) : text.indexOf(sep);
  return at < 0 ? [text, "", ""] : [text.slice(0, at), sep, text.slice(at + sep.length)];
}

/** `dsn` with every credential replaced by `***`; see the module documentation. */
export function redactDsn(dsn: string): string {
  const [scheme, sep, afterScheme] = partition(dsn, "://");
  if (!sep || !/^[A-Za-z0-9+.-]+$/.test(scheme)) return UNPARSEABLE;
  // A fragment has no meaning to Redis; hide it rather than guess.
  const [rest, hash] = partition(afterScheme, "#");
  const [location, question, query] = partition(rest, "?");
  let out = `${scheme}://`;
  // The last '@' ends the user info (a password may itself contain '@').
  const [userinfo, at, host] = partition(location, "@", true);
  if (at) {
    const [user, colon] = partition(userinfo, ":");
    // ":pw@" or a bare "pw@": some clients read a lone user info as the password.
    out += colon && user ? `${user}:${HIDDEN}@` : `${HIDDEN}@`;
    out += host;
  } else {
    out += location;
  }
  if (question) {
    const params = query.split("&").map((pair) => {
      const [key, eq, value] = partition(pair, "=");
      if (eq) return SHOWN_PARAMS.has(key.toLowerCase()) ? `${key}=${value}` : `${key}=${HIDDEN}`;
      // A bare word could be a password given without its key.
      return pair ? HIDDEN : "";
    });
    out += `?${params.join("&")}`;
  }
  if (hash) out += `#${HIDDEN}`;
  return out;
}
