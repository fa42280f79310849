"""Text made safe for the daemon's sinks, whatever its origin.

Peer strings are checked at the protocol boundary, but file names, tool output
and exception texts reach the same sinks: the log file, the journal and D-Bus.
A NUL ends a D-Bus string, a lone surrogate is not UTF-8 (both make dbus-fast
or a strict file raise), an escape sequence rewrites the terminal of whoever
reads the log. Escaping them keeps every character visible and no sink raises.
"""

from __future__ import annotations

import re

# C0 and C1 controls but newline and tab, DEL, and lone surrogates.
UNSAFE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def escape_unsafe(text: str) -> str:
    """`text` with each unsafe character as its Python backslash escape."""
    return UNSAFE_RE.sub(lambda m: ascii(m.group())[1:-1], text)


ECHO_LIMIT = 80


def echoed(text: str, limit: int = ECHO_LIMIT) -> str:
    """What a caller sent, made safe and cut short, to quote back in an error.

    A 100,000-character id must not come back whole in the reply and the log line.
    """
    text = escape_unsafe(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
