"""Our error names on D-Bus: the one place that knows `org.lanspread.Lanspread1.Error.*`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dbus_fast import DBusError

from lanspreadd.core.escape import escape_unsafe
from lanspreadd.errors import LanspreadError

ERROR_PREFIX = "org.lanspread.Lanspread1.Error."


def dbus_error_name(short: str) -> str:
    """A job's or an error's short name as a D-Bus error name; "" stays "" (no error)."""
    return ERROR_PREFIX + short if short else ""


@contextlib.contextmanager
def dbus_errors() -> Iterator[None]:
    """Map domain errors once, at the D-Bus edge."""
    try:
        yield
    except LanspreadError as exc:
        raise DBusError(dbus_error_name(exc.name), escape_unsafe(str(exc))) from exc
