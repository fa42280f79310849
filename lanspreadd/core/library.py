"""The per-game state model derived from the game directory (see SPEC)."""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lanspreadd.archive.names import VOLUME_RE
from lanspreadd.core.catalog import Catalog, CatalogGame
from lanspreadd.protocol.paths import LOCAL

VERSION_INI = "version.ini"

# Inside local/: the version that tree was installed from. It is written into the staging
# tree before promotion, so it can never disagree with the tree it describes.
INSTALLED_VERSION = ".lanspread-version"
MAX_VERSION_INI = 4096


class Availability(enum.StrEnum):
    READY = "Ready"
    OUTDATED = "Outdated"
    LOCAL_ONLY = "LocalOnly"
    ABSENT = "Absent"


@dataclass(frozen=True)
class GameState:
    id: str
    downloaded: bool
    installed: bool
    local_version: str
    catalog_version: str
    archives: tuple[str, ...] = field(default=())
    archive_bytes: int = 0
    installed_version: str = ""  # "" when installed by hand, or not installed

    @property
    def update_ready(self) -> bool:
        """Downloaded archives are newer than the tree in local/: `update` would apply them."""
        return (
            self.installed
            and self.downloaded
            and bool(self.installed_version)
            and self.installed_version != self.local_version
        )

    @property
    def availability(self) -> Availability:
        if self.downloaded:
            if self.local_version == self.catalog_version:
                return Availability.READY
            return Availability.OUTDATED
        if self.installed:
            return Availability.LOCAL_ONLY
        return Availability.ABSENT


def parse_version_ini(text: str) -> str:
    """The version is the first non-empty line, or its `version=` value."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("[", "#", ";")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            if key.strip().lower() == "version":
                return value.strip()
            continue
        return line
    return ""


def read_version_ini(game_root: Path) -> str | None:
    """Only an exact root-level regular `version.ini` counts as the download sentinel."""
    return _read_version_file(game_root / VERSION_INI)


def _read_version_file(path: Path) -> str | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_VERSION_INI)
    except OSError:
        return None
    return parse_version_ini(data.decode("utf-8", "replace"))


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(".rar")


def first_volumes(names: list[str]) -> list[str]:
    """Archives to unpack: single archives and the first volume of each set."""
    result = []
    for name in sorted(names):
        if not is_archive_name(name):
            continue
        match = VOLUME_RE.match(name)
        if match and int(match.group("num")) != 1:
            continue
        result.append(name)
    return result


def scan_game(game_root: Path, entry: CatalogGame) -> GameState:
    version = read_version_ini(game_root)
    archives: list[str] = []
    total = 0
    try:
        with os.scandir(game_root) as it:
            for dirent in it:
                if is_archive_name(dirent.name) and dirent.is_file(follow_symlinks=False):
                    archives.append(dirent.name)
                    total += dirent.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    local = game_root / LOCAL
    installed = local.is_dir() and not local.is_symlink()
    installed_version = (_read_version_file(local / INSTALLED_VERSION) or "") if installed else ""
    return GameState(
        id=entry.id,
        downloaded=version is not None,
        installed=installed,
        local_version=version or "",
        catalog_version=entry.version,
        archives=tuple(sorted(archives)),
        archive_bytes=total,
        installed_version=installed_version,
    )


class Library:
    """Cached states of every catalog game; rescans are per game so they stay cheap."""

    def __init__(self, game_dir: Path, catalog: Catalog) -> None:
        self.game_dir = game_dir
        self.catalog = catalog
        self.states: dict[str, GameState] = {}

    def game_root(self, game_id: str) -> Path:
        return self.game_dir / game_id

    def move_to(self, game_dir: Path) -> None:
        """Look at another game directory from now on; every state is read anew."""
        self.game_dir = game_dir
        self.states.clear()
        self.scan_all()

    def rescan(self, game_id: str) -> tuple[GameState | None, bool]:
        """Rescan one game; return its state and whether it changed."""
        entry = self.catalog.get(game_id)
        if entry is None:
            old = self.states.pop(game_id, None)
            return None, old is not None
        state = scan_game(self.game_root(game_id), entry)
        changed = self.states.get(game_id) != state
        self.states[game_id] = state
        return state, changed

    def scan_all(self) -> list[str]:
        """Rescan everything; return the ids whose state changed."""
        changed = [gid for gid in list(self.states) if gid not in self.catalog.games]
        for gid in changed:
            del self.states[gid]
        for game_id in sorted(self.catalog.games):
            _, did_change = self.rescan(game_id)
            if did_change:
                changed.append(game_id)
        return changed
