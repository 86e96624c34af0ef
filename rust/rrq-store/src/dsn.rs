//! Redaction of Redis DSNs: the one way every Rust component shows a DSN in a
//! log line or an error.
//!
//! A DSN may carry a password in its user info (`redis://user:pw@host`,
//! `unix://:pw@/run/redis.sock`) or in its query string (redis-rs reads
//! `redis+unix:///s.sock?pass=pw`, other clients `?password=pw`). The
//! redacted form keeps what helps an operator find the server (scheme, user
//! name, host, port, socket path, database) and replaces everything else
//! with `***`. A DSN whose shape is not `scheme://...` is not echoed at all:
//! a typo can sit anywhere in it, including next to the password.

/// What replaces a hidden value.
const HIDDEN: &str = "***";

/// Shown instead of a DSN that does not have the shape `scheme://...`.
pub const UNPARSEABLE: &str = "<unparseable DSN, not shown>";

/// Query parameters whose values are shown; every other value is hidden,
/// whatever its name, so no spelling of "password" slips through.
const SHOWN_PARAMS: &[&str] = &["db", "protocol"];

/// `dsn` with every credential replaced by `***`; see the module documentation.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return UNPARSEABLE.to_owned();
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return UNPARSEABLE.to_owned();
    }
    // A fragment has no meaning to Redis; hide it rather than guess.
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, _)) => (r, true),
        None => (rest, false),
    };
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    // The last '@' ends the user info (a password may itself contain '@'). A
    // socket path with an '@' in it is over-redacted, never under-redacted.
    match location.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) if !user.is_empty() => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                // `:pw@` or a bare `pw@`: some clients read a lone user
                // info as the password, so it is hidden too.
                _ => out.push_str(HIDDEN),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(location),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if SHOWN_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                    format!("{k}={v}")
                }
                Some((k, _)) => format!("{k}={HIDDEN}"),
                // A bare word could be a password given without its key.
                None if pair.is_empty() => String::new(),
                None => HIDDEN.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if fragment {
        out.push('#');
        out.push_str(HIDDEN);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_redacted() {
        for (dsn, want) in [
            ("redis://localhost:6379/0", "redis://localhost:6379/0"),
            ("redis://:secret@host:6379/0", "redis://***@host:6379/0"),
            (
                "redis://alice:secret@host:6379/0",
                "redis://alice:***@host:6379/0",
            ),
            ("redis://secret@host/0", "redis://***@host/0"),
            ("rediss://u:p%40ss@h:6380/1", "rediss://u:***@h:6380/1"),
            ("redis://:p@ss@host/0", "redis://***@host/0"),
            (
                "unix://:secret@/path/redis.sock?db=0",
                "unix://***@/path/redis.sock?db=0",
            ),
            (
                "redis+unix://:secret@/path/redis.sock?db=3",
                "redis+unix://***@/path/redis.sock?db=3",
            ),
            (
                "redis+unix:///path/redis.sock?db=2&pass=secret",
                "redis+unix:///path/redis.sock?db=2&pass=***",
            ),
            (
                "unix:///s.sock?password=secret&db=1",
                "unix:///s.sock?password=***&db=1",
            ),
            (
                "redis://host/0?PassWord=secret&user=bob&secret",
                "redis://host/0?PassWord=***&user=***&***",
            ),
            ("redis://h/0#secret", "redis://h/0#***"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ] {
            assert_eq!(redact_dsn(dsn), want, "{dsn}");
            assert!(!redact_dsn(dsn).contains("secret"), "{dsn}");
        }
    }

    #[test]
    fn malformed_dsns_are_not_echoed() {
        for dsn in [
            "",
            "secret",
            "redis:/:secret@host",
            "redis//:secret@host",
            "://:secret@host",
            "re dis://:secret@host",
            "host:6379:secret",
        ] {
            assert_eq!(redact_dsn(dsn), UNPARSEABLE, "{dsn}");
        }
    }
}
