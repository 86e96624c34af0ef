"""Error text a runner can always send: valid UTF-8 and of bounded size.

An outcome travels as protobuf, whose strings must be valid UTF-8; a Python
``str`` may hold lone surrogates (a file name read with ``surrogateescape``),
which protobuf refuses. And the orchestrator keeps only so many bytes of a
message or traceback (``HelloAck.max_error_bytes``): sending more only costs
the stream. The cuts and markers match the orchestrator's (rust/rrq/src/
error_text.rs), so a text cut here is not cut again there.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MARKER_ROOM", "cut_head", "cut_tail", "replace_unencodable"]

# Bytes a text may exceed its cap by and still be kept whole (the marker's room).
MARKER_ROOM: Final = 96

_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_unencodable(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate replaced by U+FFFD, and how many were."""
    if text.isascii():
        return text, 0
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.subn("\ufffd", text)
    return text, 0


def cut_head(text: str, cap: int) -> str:
    """``text`` cut to its first ``cap`` UTF-8 bytes plus a marker when longer
    than ``cap`` + MARKER_ROOM; ``cap <= 0`` means no cap. ``text`` must be
    encodable (see :func:`replace_unencodable`)."""
    if cap <= 0 or len(text) <= cap:  # a str has at most as many chars as bytes
        return text
    data = text.encode("utf-8")
    if len(data) <= cap + MARKER_ROOM:
        return text
    head = data[:cap].decode("utf-8", "ignore")  # drops a split last character
    kept = len(head.encode("utf-8"))
    return f"{head}… [truncated by rrq: {len(data)} bytes, kept {kept}]"


def cut_tail(text: str, cap: int) -> str:
    """``text`` cut to its last ``cap`` UTF-8 bytes after a marker when longer
    than ``cap`` + MARKER_ROOM; ``cap <= 0`` means no cap."""
    if cap <= 0 or len(text) <= cap:
        return text
    data = text.encode("utf-8")
    if len(data) <= cap + MARKER_ROOM:
        return text
    tail = data[len(data) - cap :].decode("utf-8", "ignore")  # drops a split first character
    kept = len(tail.encode("utf-8"))
    return f"[truncated by rrq: {len(data)} bytes, kept the last {kept}] …{tail}"
