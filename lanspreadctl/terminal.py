"""Text from the daemon made harmless for a terminal.

Names, ids and error texts may come from other machines on the LAN. Printed
raw, an escape sequence re-titles or clears the terminal, a newline forges a
table row, U+202E reverses what follows. In human output every character that
a terminal would not show as itself is written as its Python escape (`\\x1b`,
`\\u202e`); `--json` output stays exact (JSON escapes what it must itself).
"""

from __future__ import annotations


def escape(text: str) -> str:
    """One line: every unprintable character, newlines included, escaped."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )


def escape_lines(text: str) -> str:
    """Several lines: each line escaped, the line breaks kept."""
    return "\n".join(escape(line) for line in text.split("\n"))
