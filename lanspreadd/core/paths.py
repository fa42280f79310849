"""The download path rule, as the domain's error: see protocol.paths for the rule itself."""

from __future__ import annotations

from pathlib import PurePosixPath

from lanspreadd.errors import InvalidArgument
from lanspreadd.protocol.paths import PathRefused, download_path


def check_relative_path(path: str) -> PurePosixPath:
    """A served or downloaded path: relative, inside the game, not local/ or a dot-file."""
    try:
        return download_path(path)
    except PathRefused as exc:
        raise InvalidArgument(str(exc)) from None
