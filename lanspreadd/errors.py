"""Every error a user may see, each with a short name; a leaf that imports nothing.

The short names are what jobs record and what peers are told; the D-Bus adapter
alone turns them into D-Bus error names (`lanspreadd.dbus.errors`).
"""

from __future__ import annotations


class LanspreadError(Exception):
    """Base of every error a user may see; `name` says which, in one word."""

    name = "Failed"


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
    or is not a file, directory, link or copy of a file (FIFOs, devices, sockets)."""

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


class PeerError(LanspreadError):
    """A peer misbehaved, went away or did not answer (control or data channel)."""

    name = "PeerError"


class SourceBusy(PeerError):
    """A source's upload slots are all taken: ask it again shortly, or ask another.
    Never reaches a caller: the download goes on (its D-Bus name stays PeerError)."""


class ChunkNotHeld(PeerError):
    """A peer still downloading a game was asked for a chunk it does not hold yet."""


class NotServable(LanspreadError):
    """We do not serve that game at that version right now."""

    name = "NotServable"


class NoSources(LanspreadError):
    name = "NoSources"


class NoMajority(LanspreadError):
    """Peers disagree on an unpinned game's files and no list has more backers than
    every other: nothing is downloaded rather than trusting a tie-break."""

    name = "NoMajority"


class PeersGone(LanspreadError):
    """Every source left before the download completed: its own outcome, not a failure."""

    name = "PeersGone"


class CorruptData(LanspreadError):
    """Every source sent data that does not match the file list."""

    name = "CorruptData"
