"""The one path policy for names that come from elsewhere: peers, archives, streams.

Two rules, one module, so that a file list, a chunk request, an archive member
and a stream frame can never disagree about what stays inside a game:

- `inside`: a relative name that cannot leave its root (archive members, stream
  frames); `./` parts are tolerated and dropped, as archivers write them.
- `download_path`: a file of a game's download as peers list and request it:
  strictly normal, never `local/` (the installed game) nor a dot-file (ours).
"""

from __future__ import annotations

from pathlib import PurePosixPath

LOCAL = "local"  # a game's installed tree: never served, never downloaded into


class PathRefused(ValueError):
    """The name would leave its root, or names what is not for peers."""


def inside(name: str) -> PurePosixPath:
    if not name or "\x00" in name:
        raise PathRefused(f"empty or NUL name: {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise PathRefused(f"absolute path: {name!r}")
    if any(part == ".." for part in path.parts):
        raise PathRefused(f"escaping with '..': {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"empty path: {name!r}")
    return PurePosixPath(*parts)


def download_path(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise PathRefused(f"invalid file path {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise PathRefused(f"file path {name!r} leaves the game directory")
    if pure.parts[0] == LOCAL or any(part.startswith(".") for part in pure.parts):
        raise PathRefused(f"file path {name!r} is not part of a download")
    return pure
