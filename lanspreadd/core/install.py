"""Install, update, uninstall and remove-download with crash-safe staging.

Every mutation of a game root is bracketed by an atomic `.lanspread.json`
intent. New trees are staged in `.local.installing/`, the old tree is parked in
`.local.backup/` during updates, and both carry a `.lanspread_owned` marker so
recovery only ever deletes directories this daemon created. `recover()` runs at
start-up and always ends in the old or the new install, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lanspreadd.archive.extract import (
    LINKS_PREFIX,
    Extraction,
    Listing,
    free_bytes,
    list_archive,
)
from lanspreadd.core.library import (
    INSTALLED_VERSION,
    VERSION_INI,
    first_volumes,
    is_archive_name,
    read_version_ini,
)
from lanspreadd.errors import DiskFull, InvalidState, LanspreadError
from lanspreadd.protocol.paths import LOCAL

INTENT = ".lanspread.json"
INSTALLING = ".local.installing"
BACKUP = ".local.backup"
MARKER = ".lanspread_owned"
VERSION_TMP = ".version.ini.tmp"
RESUME_FILE = ".lanspread-download.json"  # the verified chunks of an unfinished download
SPACE_MARGIN = 16 << 20

Step = Callable[[str], None]
Progress = Callable[[int, int], None]


def _no_step(_name: str) -> None:
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write through a temporary file and rename, so readers see old or new bytes.

    `durable` adds fsyncs, which can stall for seconds behind other writeback:
    never from the event loop thread.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Make a staged tree durable before it is promoted. Only our files: a global
    sync() would flush every process's writes and can stall the host for seconds.

    Only regular files are opened: opening a FIFO blocks until a writer comes, and
    the tree came from an archive. O_NONBLOCK|O_NOFOLLOW cover a swap after lstat."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@dataclass(frozen=True)
class Intent:
    op: str
    started: float


def write_intent(root: Path, op: str) -> None:
    atomic_write(root / INTENT, json.dumps({"op": op, "started": time.time()}).encode())


def read_intent(root: Path) -> Intent | None:
    try:
        raw = (root / INTENT).read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Intent(op=str(data["op"]), started=float(data.get("started", 0)))
    except (ValueError, KeyError, TypeError):
        # A torn or foreign intent: recover as conservatively as for an unknown op.
        return Intent(op="unknown", started=0)


def clear_intent(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / INTENT).unlink()
    _fsync_dir(root)


def is_owned(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def _mark(path: Path) -> None:
    (path / MARKER).write_bytes(b"")


def _unmark(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        (path / MARKER).unlink()


def _remove_owned(path: Path) -> None:
    """Delete a staging directory only if we own it (or it is empty)."""
    if is_owned(path):
        shutil.rmtree(path)
    elif path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            path.rmdir()


def root_archives(root: Path) -> list[Path]:
    try:
        names = [e.name for e in os.scandir(root) if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return [root / name for name in first_volumes(names)]


class GameFiles:
    """Filesystem mutations of one game root; runs in a worker thread."""

    def __init__(
        self,
        root: Path,
        cancel: threading.Event | None = None,
        progress: Progress | None = None,
        step: Step = _no_step,
    ) -> None:
        self.root = root
        self.cancel = cancel or threading.Event()
        self.progress: Progress = progress or (lambda _d, _t: None)
        self.step = step
        self.output: list[str] = []
        self.backends: list[str] = []

    def install(self, source: Path | None = None) -> bool:
        """Unpack the root archives into local/; return True if it was an update.

        `source`: another game root whose archives to unpack (the organiser's tool
        pins a game's installed tree this way, unpacking into a scratch root)."""
        source = source or self.root
        archives = root_archives(source)
        if not archives:
            raise InvalidState(f"{source.name} has no archives to install")
        listings = [list_archive(a) for a in archives]
        total = sum(lst.total_bytes for lst in listings)
        self.check_space(total)
        return self.replace_local(
            lambda staging: self._unpack(listings, staging, total),
            version=read_version_ini(source) or "",
        )

    def check_space(self, install_bytes: int) -> None:
        free = free_bytes(self.root)
        if free < install_bytes + SPACE_MARGIN:
            raise DiskFull(
                f"{self.root.name} needs {install_bytes} bytes to install, only {free} are free"
            )

    def replace_local(
        self, fill: Callable[[Path], None], op: str | None = None, version: str = ""
    ) -> bool:
        """Have `fill` build a new tree in staging, then swap it in for local/.

        `version` is recorded inside the new tree, so the library can tell which
        version is installed even after the archives are gone.

        Returns True if an existing install was replaced. Any failure, or a crash
        at any point followed by recover(), leaves the old tree or the new one.
        """
        local = self.root / LOCAL
        update = local.is_dir()
        self._refuse_foreign(INSTALLING, BACKUP)
        write_intent(self.root, op or ("update" if update else "install"))
        self.step("intent")
        staging = self.root / INSTALLING
        try:
            _remove_owned(staging)
            staging.mkdir()
            _mark(staging)
            self.step("staging")
            fill(staging)
            if version:
                (staging / INSTALLED_VERSION).write_text(version + "\n", "utf-8")
            fsync_tree(staging)
            if update:
                _mark(local)
                self.step("marked")
                os.rename(local, self.root / BACKUP)
                self.step("backed-up")
            os.rename(staging, local)
            _fsync_dir(self.root)
        except BaseException:
            self._rollback()
            raise
        self.step("promoted")
        _unmark(local)
        _remove_owned(self.root / BACKUP)
        self.step("cleaned")
        clear_intent(self.root)
        return update

    def _refuse_foreign(self, *names: str) -> None:
        """Staging names we find but did not create belong to someone else: stop."""
        for name in names:
            path = self.root / name
            if path.is_symlink() or path.is_file():
                raise InvalidState(f"{path} was not created by lanspread; move it away first")
            if path.is_dir() and not is_owned(path) and any(path.iterdir()):
                raise InvalidState(f"{path} was not created by lanspread; move it away first")

    def _unpack(self, listings: list[Listing], staging: Path, total: int) -> None:
        base = 0
        for index, listing in enumerate(listings):
            extraction = Extraction(
                listing,
                staging,
                lambda done, base=base: self.progress(base + done, total),  # type: ignore[misc]
                self.cancel,
            )
            try:
                self.backends.append(extraction.run())
            finally:
                self.output.extend(extraction.output)
            base += listing.total_bytes
            self.step(f"unpacked-{index}")

    def _rollback(self) -> None:
        with contextlib.suppress(OSError):
            local = self.root / LOCAL
            backup = self.root / BACKUP
            staging = self.root / INSTALLING
            if not local.exists() and is_owned(backup):
                os.rename(backup, local)
            _unmark(local)
            _remove_owned(staging)
            clear_intent(self.root)

    def uninstall(self) -> None:
        local = self.root / LOCAL
        if not local.is_dir() or local.is_symlink():
            raise InvalidState(f"{self.root.name} is not installed")
        self._refuse_foreign(BACKUP)
        write_intent(self.root, "uninstall")
        self.step("intent")
        _mark(local)
        self.step("marked")
        os.rename(local, self.root / BACKUP)
        _fsync_dir(self.root)
        self.step("moved")
        shutil.rmtree(self.root / BACKUP)
        self.step("deleted")
        clear_intent(self.root)

    def remove_download(self) -> None:
        archives = (
            [e for e in os.scandir(self.root) if e.is_file(follow_symlinks=False)]
            if self.root.is_dir()
            else []
        )
        has_sentinel = (self.root / VERSION_INI).is_file()
        if not has_sentinel and not any(is_archive_name(e.name) for e in archives):
            raise InvalidState(f"{self.root.name} is not downloaded")
        write_intent(self.root, "remove_download")
        self.step("intent")
        _delete_download(self.root)
        self.step("deleted")
        clear_intent(self.root)


def _delete_download(root: Path) -> None:
    """The sentinel goes first, so a crash midway leaves 'not downloaded'."""
    for name in (VERSION_INI, VERSION_TMP, RESUME_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    _fsync_dir(root)
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False) and is_archive_name(entry.name):
            os.unlink(entry.path)


def recover(root: Path) -> str | None:
    """Finish or roll back whatever a crash interrupted; say what was done."""
    intent = read_intent(root)
    local = root / LOCAL
    staging = root / INSTALLING
    backup = root / BACKUP
    for stale in root.glob(LINKS_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    if intent is None and not is_owned(staging) and not is_owned(backup):
        return None
    op = intent.op if intent else "none"
    action: str
    if op == "remove_download":
        _delete_download(root)
        action = "finished removing the download"
    elif op == "uninstall":
        if is_owned(backup):
            shutil.rmtree(backup)
            action = "finished uninstalling"
        else:
            action = "rolled back the uninstall"
        _unmark(local)
    elif staging.exists() or not local.exists():
        # Not promoted: discard the new tree and put the old one back.
        _remove_owned(staging)
        if not local.exists() and is_owned(backup):
            os.rename(backup, local)
        _unmark(local)
        action = f"rolled back the interrupted {op}"
    else:
        # Promoted: the old tree in the backup is no longer needed.
        _remove_owned(backup)
        _unmark(local)
        action = f"finished the interrupted {op}"
    clear_intent(root)
    return action


def recover_all(game_dir: Path, game_ids: list[str]) -> dict[str, str]:
    done: dict[str, str] = {}
    for game_id in game_ids:
        root = game_dir / game_id
        if not root.is_dir():
            continue
        try:
            action = recover(root)
        except (OSError, LanspreadError) as exc:
            action = f"recovery failed: {exc}"
        if action:
            done[game_id] = action
    return done
