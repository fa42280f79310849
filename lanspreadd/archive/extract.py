"""Unpack RAR archives safely with the best back-end for each archive.

Back-ends: rarfile reads stored members itself (any RAR version, multi-volume
included); compressed archives go to `unar`, or to `bsdtar` for RAR5 entries of
2 GiB or more, which unar 1.10 mis-handles. Two tool bugs are worked around
here: unar treats sibling archives whose names differ only by a number as one
volume set, so it only ever sees private links with neutral names; rarfile 4.5
passes `--` to bsdtar, which bsdtar rejects, so bsdtar is run directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import rarfile

from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, UnsafeArchive
from lanspreadd.library import VOLUME_RE

RAR_STORED = 0x30
LARGE_ENTRY = 2 << 30
CHUNK = 1 << 20
LINKS_PREFIX = ".lanspread-links-"
OUTPUT_LIMIT = 256 * 1024

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Member:
    path: PurePosixPath
    size: int
    is_dir: bool
    is_link: bool
    mode: int
    crc: int
    stored: bool


@dataclass(frozen=True)
class Listing:
    archive: Path
    members: tuple[Member, ...]
    rar5: bool
    volumes: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self.members if not m.is_dir)

    @property
    def all_stored(self) -> bool:
        return all(m.stored or m.is_dir for m in self.members) and not any(
            m.is_link for m in self.members
        )

    @property
    def has_large_entry(self) -> bool:
        return any(m.size >= LARGE_ENTRY for m in self.members)


def safe_member_path(name: str) -> PurePosixPath:
    """A member path must stay inside the install directory."""
    if not name or "\x00" in name:
        raise UnsafeArchive(f"archive member with an empty or NUL name: {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive member with an absolute path: {name!r}")
    if any(part == ".." for part in path.parts):
        raise UnsafeArchive(f"archive member escaping the game with '..': {name!r}")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchive(f"archive member with an empty path: {name!r}")
    return PurePosixPath(*parts)


def _link_target_inside(member: PurePosixPath, target: str) -> bool:
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(member.parts) - 1
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def volume_set(archive: Path) -> tuple[Path, ...]:
    """The archive and, for a `.partN.rar` set, its existing siblings in order."""
    match = VOLUME_RE.match(archive.name)
    if not match:
        return (archive,)
    stem = match.group("stem").lower()
    found = []
    for sibling in archive.parent.iterdir():
        m = VOLUME_RE.match(sibling.name)
        if m and m.group("stem").lower() == stem:
            found.append((int(m.group("num")), sibling))
    return tuple(p for _, p in sorted(found))


def list_archive(archive: Path) -> Listing:
    """Read headers with rarfile and refuse unsafe or unsupported archives up front."""
    try:
        rf: Any = rarfile.RarFile(str(archive))
    except rarfile.NeedFirstVolume as exc:
        raise ArchiveError(f"{archive.name} is not the first volume of its set") from exc
    except (rarfile.Error, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive.name} is not a readable RAR archive: {exc}") from exc
    with rf:
        if rf.needs_password():
            raise ArchiveError(f"{archive.name} is encrypted; lanspread cannot unpack it")
        members = []
        for info in rf.infolist():
            try:
                path = safe_member_path(info.filename)
            except UnsafeArchive as exc:
                raise UnsafeArchive(f"{archive.name}: {exc}") from None
            is_link = bool(info.is_symlink())
            if is_link:
                target = _link_target(rf, info)
                if not _link_target_inside(path, target):
                    raise UnsafeArchive(
                        f"{archive.name}: archive member {info.filename!r} links outside "
                        f"the game: {target!r}"
                    )
            redir = getattr(info, "file_redir", None)
            if redir and not is_link:
                raise UnsafeArchive(
                    f"{archive.name}: archive member {info.filename!r} is a hard link or copy"
                )
            members.append(
                Member(
                    path=path,
                    size=int(info.file_size or 0),
                    is_dir=bool(info.is_dir()),
                    is_link=is_link,
                    mode=int(getattr(info, "mode", 0) or 0),
                    crc=int(info.CRC or 0),
                    stored=info.compress_type == RAR_STORED,
                )
            )
        if not members:
            raise ArchiveError(f"{archive.name} holds no files: it is empty or truncated")
        rar5 = isinstance(rf._file_parser, rarfile.RAR5Parser)
    return Listing(archive, tuple(members), rar5, volume_set(archive))


def _link_target(rf: Any, info: Any) -> str:
    redir = getattr(info, "file_redir", None)
    if redir:
        return str(redir[2])
    try:
        return str(rf.read(info).decode("utf-8", "replace"))
    except (rarfile.Error, OSError) as exc:
        raise ArchiveError(f"cannot read link {info.filename!r}: {exc}") from exc


def choose_backend(listing: Listing) -> str:
    if listing.all_stored:
        return "rarfile"
    if listing.rar5 and listing.has_large_entry:
        if len(listing.volumes) > 1:
            raise ArchiveError(
                f"{listing.archive.name}: compressed multi-volume RAR5 with entries of 2 GiB "
                "or more is not supported by any installed back-end"
            )
        return "bsdtar"
    return "unar"


class Extraction:
    """One archive unpacked into `dest`; `cancel` may be set from another thread."""

    def __init__(self, listing: Listing, dest: Path, progress: Progress, cancel: threading.Event):
        self.listing = listing
        self.dest = dest
        self.progress = progress
        self.cancel = cancel
        self.output: list[str] = []

    def log(self, line: str) -> None:
        self.output.append(line)

    def run(self, backend: str | None = None) -> str:
        backend = backend or choose_backend(self.listing)
        self.log(f"unpacking {self.listing.archive.name} with {backend}\n")
        try:
            if backend == "rarfile":
                self._native()
            else:
                self._tool(backend)
            self._verify_tree()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                name = self.listing.archive.name
                raise DiskFull(f"no space left while unpacking {name}") from exc
            raise ArchiveError(f"unpacking {self.listing.archive.name} failed: {exc}") from exc
        return backend

    def _target(self, member: Member) -> Path:
        return self.dest.joinpath(*member.path.parts)

    def _native(self) -> None:
        done = 0
        with rarfile.RarFile(str(self.listing.archive)) as rf:
            for info, member in zip(rf.infolist(), self.listing.members, strict=True):
                target = self._target(member)
                if member.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with rf.open(info) as src, target.open("wb") as out:
                        while chunk := src.read(CHUNK):
                            if self.cancel.is_set():
                                raise Cancelled("unpack cancelled")
                            out.write(chunk)
                            done += len(chunk)
                            self.progress(done)
                except (rarfile.Error, EOFError) as exc:
                    raise ArchiveError(
                        f"{self.listing.archive.name}: member {info.filename!r} is corrupt: {exc}"
                    ) from exc
                self.log(f"  {member.path} ({member.size} B)\n")

    def _tool(self, backend: str) -> None:
        links = Path(tempfile.mkdtemp(prefix=LINKS_PREFIX, dir=self.listing.archive.parent))
        try:
            if backend == "unar":
                archive = neutral_links(self.listing, links)
                cmd = ["unar", "-f", "-D", "-o", str(self.dest), str(archive)]
            elif backend == "bsdtar":
                cmd = ["bsdtar", "-x", "-f", str(self.listing.archive), "-C", str(self.dest)]
            else:
                raise ArchiveError(f"unknown unpack back-end {backend!r}")
            self._run_tool(cmd)
        finally:
            shutil.rmtree(links, ignore_errors=True)

    def _run_tool(self, cmd: list[str]) -> None:
        if shutil.which(cmd[0]) is None:
            raise ArchiveError(f"the unpack tool {cmd[0]!r} is not installed")
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                dies_with_daemon(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
            try:
                while proc.poll() is None:
                    if self.cancel.is_set():
                        raise Cancelled("unpack cancelled")
                    self.progress(_tree_bytes(self.dest))
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            out.seek(0)
            text = out.read()[-OUTPUT_LIMIT:].decode("utf-8", "replace")
        self.log(text)
        self.progress(_tree_bytes(self.dest))
        if proc.returncode != 0:
            if "No space left" in text or _disk_full(self.dest):
                raise DiskFull(f"no space left while unpacking {self.listing.archive.name}")
            tail = text.strip().splitlines()[-3:]
            raise ArchiveError(
                f"{cmd[0]} failed on {self.listing.archive.name} "
                f"(exit {proc.returncode}): {' / '.join(tail)}"
            )

    def _verify_tree(self) -> None:
        """Every member must exist with its size and exec bit; no link may point outside."""
        root = self.dest.resolve()
        for member in self.listing.members:
            target = self._target(member)
            if member.is_link:
                continue
            try:
                st = target.lstat()
            except FileNotFoundError as exc:
                raise ArchiveError(
                    f"{self.listing.archive.name}: member {member.path} was not unpacked"
                ) from exc
            if not member.is_dir and st.st_size != member.size:
                raise ArchiveError(
                    f"{self.listing.archive.name}: member {member.path} unpacked to "
                    f"{st.st_size} bytes, expected {member.size}"
                )
            if not member.is_dir and member.mode & 0o111 and not st.st_mode & 0o100:
                # Not every back-end restores Unix modes (unar ignores them in RAR5).
                target.chmod((st.st_mode | 0o755) & 0o7777)
        for dirpath, dirnames, filenames in os.walk(self.dest):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    path.unlink()
                    raise UnsafeArchive(f"unpacked link {name!r} points outside the game")


def neutral_links(listing: Listing, links: Path) -> Path:
    """Link the archive's volumes into `links` under neutral names, for unar's sake."""
    volumes = listing.volumes
    names = (
        ["archive.rar"]
        if len(volumes) == 1
        else [f"archive.part{i + 1}.rar" for i in range(len(volumes))]
    )
    for volume, name in zip(volumes, names, strict=True):
        try:
            os.link(volume, links / name)
        except OSError:
            os.symlink(volume.resolve(), links / name)
    return links / names[0]


def dies_with_daemon(cmd: list[str]) -> list[str]:
    """If the daemon is killed, its unpack tool must die too: a survivor would keep
    writing into a staging directory that recovery is removing."""
    if shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
    return cmd


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _disk_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < CHUNK
