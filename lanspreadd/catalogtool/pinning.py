"""A game version's pin, computed with the daemon's own code so that seats agree with it.

The manifest root is taken over the file list a daemon serves for that directory (the
same files, the same 4 MiB chunk hashes); the tree root over what the daemon's install
leaves in `local/`, made by that same install in a private scratch directory. A seat
then accepts a file list or an installed tree only if its root is the pinned one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lanspreadd.catalogtool.document import file_error
from lanspreadd.core.catalog import Pin
from lanspreadd.core.escape import echoed
from lanspreadd.core.hashes import CHUNK_SIZE, hash_file, servable_files
from lanspreadd.core.install import GameFiles
from lanspreadd.core.library import VERSION_INI, is_archive_name, read_version_ini
from lanspreadd.core.manifest import manifest_root, tree_entries, tree_root
from lanspreadd.core.paths import check_relative_path
from lanspreadd.errors import InvalidArgument, InvalidState, NotFound
from lanspreadd.protocol.codec import FrameDecoder, encode
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import FileEntry, FileList
from lanspreadd.protocol.paths import LOCAL

Step = Callable[[str], None]


def _quiet(_what: str) -> None:
    pass


def pin_game(
    game_id: str, version: str, game_dir: Path, scratch: Path | None = None, step: Step = _quiet
) -> tuple[Pin, int]:
    """The pin of `version` from a directory laid out as a seat's game directory
    (archives and `version.ini`), and the download's real size in bytes.

    `scratch` is where the game is unpacked to hash its tree (default: $TMPDIR); it
    needs the installed size free (and the download's, if `game_dir` is not writable)
    and is emptied again whatever happens."""
    if not game_dir.is_dir():
        raise NotFound(f"game directory {game_dir} does not exist")
    if scratch is not None and not scratch.is_dir():
        raise NotFound(f"scratch directory {scratch} does not exist")
    found = read_version_ini(game_dir)
    if found is None:
        raise InvalidState(
            f"{game_dir} has no {VERSION_INI}: a game directory holds the archives and "
            f"{VERSION_INI} (the version, last), as a seat's does"
        )
    if found != version:
        raise InvalidState(
            f"{game_dir / VERSION_INI} says {echoed(found)!r}, but the catalog's {game_id} "
            f"is {echoed(version)!r}: pin a directory of the catalog's version"
        )
    before = _stamps(game_dir)
    step(f"hashing the download of {game_id} {version}")
    files = served_files(game_id, version, game_dir)
    step(f"unpacking {game_id} {version} to hash its installed tree")
    tree = installed_tree(game_id, game_dir, scratch)
    if _stamps(game_dir) != before:
        raise InvalidState(f"{game_dir} changed while it was pinned: pin it again")
    pin = Pin(manifest=manifest_root(CHUNK_SIZE, files), chunk_size=CHUNK_SIZE, tree=tree)
    return pin, sum(f.size for f in files)


def served_files(game_id: str, version: str, game_dir: Path) -> list[FileEntry]:
    """The file list a daemon serves for `game_dir`, checked as a peer receiving it would."""
    files = []
    for rel, size in servable_files(game_dir):
        check_relative_path(rel)  # a name no peer would ask for is refused here, by name
        files.append(FileEntry(rel, size, tuple(hash_file(game_dir / rel, CHUNK_SIZE))))
    listed = FileList(0, game_id, version, CHUNK_SIZE, tuple(files), bytes(16))
    try:
        FrameDecoder().feed(encode(listed))
    except (ValueError, RemoteProtocolError) as exc:
        raise InvalidArgument(f"peers would refuse the files of {game_dir}: {exc}") from None
    return files


def installed_tree(game_id: str, game_dir: Path, scratch: Path | None = None) -> str:
    """The tree root of what a seat's install of `game_dir` holds: the daemon's install,
    into a private directory that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="lanspread-pin-", dir=scratch) as tmp:
        source = game_dir
        if not os.access(game_dir, os.W_OK):
            source = _copy_download(game_dir, Path(tmp) / "download")
        root = Path(tmp) / game_id
        root.mkdir()
        GameFiles(root).install(source=source)
        return tree_root(tree_entries(root / LOCAL))


def _copy_download(game_dir: Path, into: Path) -> Path:
    """The archives and version.ini of a directory we may not write (a seat's game
    directory owned by the daemon, a read-only disk): the unpack tools see archives
    through hard links made beside them, so they are unpacked from a copy."""
    into.mkdir()
    for entry in sorted(os.scandir(game_dir), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and (
            is_archive_name(entry.name) or entry.name == VERSION_INI
        ):
            try:
                shutil.copyfile(entry.path, into / entry.name)
            except OSError as exc:
                raise file_error(into / entry.name, exc, "copy") from None
    return into


def _stamps(game_dir: Path) -> list[tuple[str, int, int]]:
    """Each download file's size and modification time: a file changed mid-pin shows."""
    return [
        (rel, size, (game_dir / rel).stat().st_mtime_ns) for rel, size in servable_files(game_dir)
    ]
