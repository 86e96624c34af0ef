"""Escaping of log text that carries job data.

Function names, job ids, cancel reasons and error messages come from
producers and handlers. Logged raw, a ``\\n`` in one of them starts a line
that looks like the runner's own, and an ANSI or bidi control sequence
rewrites what a terminal shows. ``EscapingFilter`` on the runner's logger
escapes the whole formatted message of every record it emits, so no call
site can forget. Same character set as the orchestrator's ``rrq::logging``.
"""

from __future__ import annotations

import logging
import re

__all__ = ["EscapingFilter", "escape"]

# C0 controls, DEL, C1 controls, the line and paragraph separators, and the
# bidi embedding, override and isolate controls.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _replace(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{{{ord(char):x}}}"


def escape(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\u{1b}``)."""
    return _UNSAFE.sub(_replace, text)


class EscapingFilter(logging.Filter):
    """Replaces a record's message by its escaped, already formatted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True
