"""Named errors shared by the domain core and mapped once onto D-Bus errors."""

from __future__ import annotations

ERROR_PREFIX = "org.lanspread.Lanspread1.Error."


class LanspreadError(Exception):
    """Base of every error a user may see; `name` is the D-Bus error suffix."""

    name = "Failed"

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.name


class NotFound(LanspreadError):
    name = "NotFound"


class Busy(LanspreadError):
    name = "Busy"


class NotAuthorized(LanspreadError):
    name = "NotAuthorized"


class InvalidArgument(LanspreadError):
    name = "InvalidArgument"


class NoAccess(LanspreadError):
    """The daemon's permissions or its unit's sandbox keep it from a path; the message
    names the command that grants access."""

    name = "NoAccess"


class InvalidState(LanspreadError):
    """The game is not in a state that allows the operation (e.g. not downloaded)."""

    name = "InvalidState"


class Cancelled(LanspreadError):
    name = "Cancelled"


class ArchiveError(LanspreadError):
    """An archive is corrupt, truncated, unsupported or unsafe."""

    name = "ArchiveError"


class UnsafeArchive(ArchiveError):
    """A member would land outside the install directory (`..`, absolute, links out),
    or is not a file, directory or link (FIFOs, devices, sockets, hard links)."""

    name = "UnsafeArchive"


class UnpackStalled(ArchiveError):
    """An unpack tool wrote nothing for a minute and was stopped (a hung or stuck tool)."""

    name = "UnpackStalled"


class DiskFull(LanspreadError):
    name = "DiskFull"


class CatalogError(LanspreadError):
    name = "CatalogError"


class ConfigError(LanspreadError):
    name = "ConfigError"
