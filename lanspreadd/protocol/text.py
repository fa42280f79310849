"""What a peer may put in a string, checked where its frames are decoded.

A peer's strings reach log files, the journal, D-Bus and terminals. Refusing
control characters, bidi overrides and lone surrogates at the boundary keeps
each of those sinks from being the one that breaks (a lone surrogate is valid
JSON but not UTF-8; a NUL is not a valid D-Bus string; an escape sequence
re-titles the terminal of whoever lists the peers).
"""

from __future__ import annotations

import re

from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.identity import PEER_ID_LEN

MAX_NAME = 64
MAX_TEXT = 1024
PEER_ID_RE = re.compile(f"^[0-9a-f]{{{PEER_ID_LEN}}}$")


def first_unprintable(value: str) -> str | None:
    """The first character no sink shows as itself, or None.

    `str.isprintable` refuses every category C (controls, formats such as the
    bidi overrides, surrogates, private use, unassigned) and every separator but
    the plain space.
    """
    if value.isprintable():
        return None
    return next(ch for ch in value if not ch.isprintable())


def check_text(value: str, key: str, limit: int = MAX_TEXT) -> str:
    """A peer string fit for every sink, or a named protocol error."""
    if len(value) > limit:
        raise RemoteProtocolError(f"field {key!r} is longer than {limit} characters")
    bad = first_unprintable(value)
    if bad is not None:
        raise RemoteProtocolError(f"field {key!r} holds the unprintable character U+{ord(bad):04X}")
    return value


def check_peer_id(value: str, key: str = "peer_id") -> str:
    if not PEER_ID_RE.fullmatch(value):
        raise RemoteProtocolError(f"field {key!r} is not a peer id (lowercase hex)")
    return value


def printable(value: str, limit: int = MAX_TEXT) -> str:
    """Our own text made fit to send: unprintable characters escaped, length capped,
    so a peer that validates what it receives never refuses us for a file name."""
    if first_unprintable(value) is not None:
        value = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
            for ch in value
        )
    return value[:limit]
