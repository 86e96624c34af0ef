"""Redaction of Redis DSNs: the one way the Python package shows a DSN.

A DSN may carry a password in its user info (``redis://user:pw@host``,
``unix://:pw@/run/redis.sock``) or in its query string (``?password=pw``,
redis-rs's ``?pass=pw``). The redacted form keeps what helps an operator find
the server (scheme, user name, host, port, socket path, database) and puts
``***`` in place of everything else. A DSN whose shape is not
``scheme://...`` is not echoed at all: a typo can sit anywhere in it,
including next to the password. Same rules as the Rust ``rrq_store::redact_dsn``.
"""

from __future__ import annotations

import re

__all__ = ["UNPARSEABLE", "redact_dsn"]

HIDDEN = "***"
UNPARSEABLE = "<unparseable DSN, not shown>"

# Query parameters whose values are shown; every other value is hidden,
# whatever its name, so no spelling of "password" slips through.
_SHOWN_PARAMS = frozenset({"db", "protocol"})
_SCHEME = re.compile(r"[A-Za-z0-9+.\-]+")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every credential replaced by ``***``; see the module documentation."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return UNPARSEABLE
    # A fragment has no meaning to Redis; hide it rather than guess.
    rest, hash_sign, _ = rest.partition("#")
    location, question, query = rest.partition("?")
    out = [scheme, "://"]
    # The last '@' ends the user info (a password may itself contain '@'). A
    # socket path with an '@' in it is over-redacted, never under-redacted.
    userinfo, at, host = location.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # ":pw@" or a bare "pw@": some clients read a lone user info as the
        # password, so it is hidden too.
        out.append(f"{user}:{HIDDEN}@" if colon and user else f"{HIDDEN}@")
        out.append(host)
    else:
        out.append(location)
    if question:
        params = []
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            if eq:
                params.append(
                    f"{key}={value}" if key.lower() in _SHOWN_PARAMS else f"{key}={HIDDEN}"
                )
            else:
                # A bare word could be a password given without its key.
                params.append(HIDDEN if pair else "")
        out.append("?" + "&".join(params))
    if hash_sign:
        out.append("#" + HIDDEN)
    return "".join(out)
