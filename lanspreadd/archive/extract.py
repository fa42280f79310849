"""Unpack RAR archives safely with the best back-end for each archive.

Back-ends: rarfile reads stored members itself (any RAR version, multi-volume
included); compressed archives go to `unar`, or to `bsdtar` for RAR5 files of
2 GiB or more, which unar 1.10 mis-handles. Two tool bugs are worked around
here: unar treats sibling archives whose names differ only by a number as one
volume set, so it only ever sees private links with neutral names; rarfile 4.5
passes `--` to bsdtar, which bsdtar rejects, so bsdtar is run directly.

Only regular files, directories and links pointing inside the game are
installed: other member kinds are refused from the listing, before any tool
runs, and the unpacked tree is checked again and normalised (the daemon's
owner, 0644/0755 files, 0755 directories), whatever a back-end restored.

RAR5 file copies (WinRAR's -oi: identical files stored once) and hard links are
installed as real copies of the file they name, made by us after the back-end
ran: unar makes them symbolic links, bsdtar empty files or hard links. Their
expanded size is in the listing, so the disk-space check counts every copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import rarfile

from lanspreadd.archive.names import VOLUME_RE
from lanspreadd.archive.storedcopy import copy_stored, stored_extent
from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, UnpackStalled, UnsafeArchive
from lanspreadd.protocol.paths import PathRefused, inside

RAR_STORED = 0x30
LARGE_ENTRY = 2 << 30
CHUNK = 1 << 20
LINKS_PREFIX = ".lanspread-links-"
OUTPUT_LIMIT = 256 * 1024
UNPACK_STALL_TIMEOUT = 60.0  # an unpack tool that writes nothing for this long is stuck
TOOL_POLL = 0.2  # how often a running tool is checked for cancel, progress and stalls
FILE_MODE = 0o644
EXEC_MODE = 0o755
DIR_MODE = 0o755
# Hosts whose attributes are a Unix st_mode: libarchive reads MacOS and BeOS ones so too.
UNIX_MODE_HOSTS = (rarfile.RAR_OS_UNIX, rarfile.RAR_OS_MACOS, rarfile.RAR_OS_BEOS)
SPECIAL_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
# Redirections installed as copies of the member they name, and how a refusal calls them.
COPY_KINDS = {
    rarfile.RAR5_XREDIR_HARD_LINK: "a hard link to",
    rarfile.RAR5_XREDIR_FILE_COPY: "a copy of",
}
NEXT_VOLUME_MISSING = "Cannot open next volume: "  # rarfile's words for a missing volume

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
    copy_of: PurePosixPath | None = None  # a file copy or hard link: the file it copies


@dataclass(frozen=True)
class Listing:
    archive: Path
    members: tuple[Member, ...]
    rar5: bool
    volumes: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        """Bytes the installed tree takes: every copy counts its file's full size."""
        return sum(m.size for m in self.members if not m.is_dir)

    @property
    def copies(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.copy_of is not None)

    @property
    def all_stored(self) -> bool:
        return all(m.stored or m.is_dir for m in self.members) and not any(
            m.is_link for m in self.members
        )

    @property
    def has_large_entry(self) -> bool:
        """A regular file of 2 GiB or more; what a directory, link or copy declares is no
        data of its own."""
        return any(
            m.size >= LARGE_ENTRY
            for m in self.members
            if not m.is_dir and not m.is_link and m.copy_of is None
        )


def safe_member_path(name: str) -> PurePosixPath:
    """A member path must stay inside the install directory."""
    try:
        return inside(name)
    except PathRefused as exc:
        raise UnsafeArchive(f"archive member: {exc}") from None


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


def open_rar(archive: Path) -> Any:
    """rarfile's reader with headers read strictly: a missing volume, a broken or
    truncated header fails here, by name, instead of listing part of the game."""
    try:
        return rarfile.RarFile(str(archive), errors="strict")
    except rarfile.NeedFirstVolume as exc:
        raise ArchiveError(f"{archive.name} is not the first volume of its set") from exc
    except (rarfile.Error, OSError, EOFError) as exc:
        message = str(exc)
        if message.startswith(NEXT_VOLUME_MISSING):
            missing = Path(message.removeprefix(NEXT_VOLUME_MISSING)).name
            raise ArchiveError(
                f"{archive.name}: the volume {missing} is missing; "
                "the set cannot be unpacked without it"
            ) from exc
        raise ArchiveError(f"{archive.name} is not a readable RAR archive: {message}") from exc


def list_archive(archive: Path) -> Listing:
    """Read headers with rarfile and refuse unsafe or unsupported archives up front."""
    rf = open_rar(archive)
    with rf:
        if rf.needs_password():
            raise ArchiveError(f"{archive.name} is encrypted; lanspread cannot unpack it")
        members = [_member(rf, info, archive.name) for info in rf.infolist()]
        if not members:
            raise ArchiveError(f"{archive.name} holds no files: it is empty or truncated")
        rar5 = isinstance(rf._file_parser, rarfile.RAR5Parser)
    return Listing(archive, _resolve_copies(members, archive.name), rar5, volume_set(archive))


def _member(rf: Any, info: Any, archive: str) -> Member:
    """One header as a member, or a refusal that names it and says what it is."""
    try:
        path = safe_member_path(info.filename)
    except UnsafeArchive as exc:
        raise UnsafeArchive(f"{archive}: {exc}") from None
    is_link = bool(info.is_symlink())
    if is_link:
        target = _link_target(rf, info)
        if not _link_target_inside(path, target):
            raise UnsafeArchive(
                f"{archive}: archive member {info.filename!r} links outside the game: {target!r}"
            )
    is_dir = bool(info.is_dir())
    kind = _refused_kind(info, is_dir, is_link)
    if kind:
        raise UnsafeArchive(
            f"{archive}: archive member {info.filename!r} is {kind}; only files, "
            "directories, links inside the game and copies of files are installed"
        )
    return Member(
        path=path,
        size=int(info.file_size or 0),
        is_dir=is_dir,
        is_link=is_link,
        mode=_permissions(info, is_dir),
        crc=int(info.CRC or 0),
        stored=info.compress_type == RAR_STORED,
        copy_of=None if is_link else _copied_file(info, archive),
    )


def _copied_file(info: Any, archive: str) -> PurePosixPath | None:
    """The member a file copy or hard link names (an archive member name, under the
    same path policy as the members themselves); None for anything else."""
    redir = getattr(info, "file_redir", None)
    if not redir or redir[0] not in COPY_KINDS:
        return None
    try:
        return inside(str(redir[2]))
    except PathRefused as exc:
        raise UnsafeArchive(
            f"{archive}: archive member {info.filename!r} is {COPY_KINDS[redir[0]]} "
            f"{redir[2]!r}, outside the game ({exc})"
        ) from None


def _resolve_copies(members: list[Member], archive: str) -> tuple[Member, ...]:
    """Each copy points at the regular file its chain of copies ends in, with that
    file's size and CRC: the expanded size is what the disk-space check counts.

    A copy of a member the archive does not hold, of a directory or link, or in a
    cycle of copies is refused by name. Chains are followed once (memoised): ten
    thousand chained copies cost no more than ten thousand copies of one file."""
    by_path = {m.path: m for m in members}
    resolved: dict[PurePosixPath, Member] = {}

    def refuse(member: Member, why: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"{archive}: archive member {str(member.path)!r} is a copy of "
            f"{str(member.copy_of)!r}, {why}; only copies of files are installed"
        )

    def final(member: Member) -> Member:
        chain: dict[PurePosixPath, Member] = {}
        current = member
        while current.copy_of is not None and current.path not in resolved:
            if current.path in chain:
                raise refuse(member, "and its copies form a cycle")
            chain[current.path] = current
            source = by_path.get(current.copy_of)
            if source is None:
                raise ArchiveError(
                    f"{archive}: archive member {str(current.path)!r} is a copy of "
                    f"{str(current.copy_of)!r}, which the archive does not hold"
                )
            if source.is_dir or source.is_link:
                what = "a directory" if source.is_dir else "a link"
                raise refuse(current, f"which is {what}")
            current = source
        found = resolved.get(current.path, current)
        for path in chain:
            resolved[path] = found
        return found

    out = []
    for member in members:
        if member.copy_of is None:
            out.append(member)
            continue
        source = final(member)
        out.append(
            dataclasses.replace(
                member, copy_of=source.path, size=source.size, crc=source.crc, stored=True
            )
        )
    return tuple(out)


def _refused_kind(info: Any, is_dir: bool, is_link: bool) -> str | None:
    """What a member is when it is not a file, directory, link or copy we can check,
    else None.

    Tools create what the header's mode says (bsdtar even makes device nodes), so the
    mode's file type must agree with what rarfile reads the member as.
    """
    redir = getattr(info, "file_redir", None)
    if redir and not is_link:
        if redir[0] not in COPY_KINDS:
            return f"a redirection of unknown type {redir[0]}"
        if is_dir:
            return "a directory and a copy at once"
    if info.host_os not in UNIX_MODE_HOSTS:
        return None
    kind = stat.S_IFMT(int(info.mode or 0))
    if kind in SPECIAL_KINDS:
        return SPECIAL_KINDS[kind]
    if kind == stat.S_IFLNK and not is_link:
        return "a link whose target cannot be checked"
    expected = stat.S_IFLNK if is_link else stat.S_IFDIR if is_dir else stat.S_IFREG
    if kind not in (0, expected):
        return "of one type by its mode and another by its flags"
    return None


def _permissions(info: Any, is_dir: bool) -> int:
    """Permission bits only: set-id and sticky bits are never installed; non-Unix
    hosts store DOS attributes here, whose read-only bit is no execute bit."""
    if info.host_os in UNIX_MODE_HOSTS and info.mode:
        return int(info.mode) & 0o777
    return DIR_MODE if is_dir else FILE_MODE


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
    """One archive unpacked into `dest`; `cancel` may be set from another thread.

    An unpack tool that writes nothing for `stall_timeout` seconds is killed.
    """

    def __init__(
        self,
        listing: Listing,
        dest: Path,
        progress: Progress,
        cancel: threading.Event,
        stall_timeout: float = UNPACK_STALL_TIMEOUT,
    ):
        self.listing = listing
        self.dest = dest
        self.progress = progress
        self.cancel = cancel
        self.stall_timeout = stall_timeout
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
            self._check_tree()
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
        with open_rar(self.listing.archive) as rf:
            for info, member in zip(rf.infolist(), self.listing.members, strict=True):
                target = self._target(member)
                if member.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if member.copy_of is not None:
                    continue  # made from its file once everything is unpacked
                target.parent.mkdir(parents=True, exist_ok=True)
                extent = stored_extent(info)
                if extent is not None:
                    name = f"{self.listing.archive.name}: {info.filename}"
                    copy_stored(extent, target, name, self.cancel, self.progress, done)
                    done += extent.size
                    self.log(f"  {member.path} ({member.size} B)\n")
                    continue
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
                # As root, bsdtar restores owners and set-id bits unless told not to.
                cmd = [
                    "bsdtar",
                    "-x",
                    "--no-same-owner",
                    "--no-same-permissions",
                    "-f",
                    str(self.listing.archive),
                    "-C",
                    str(self.dest),
                ]
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
                self._watch(proc, cmd[0], out)
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

    def _watch(self, proc: subprocess.Popen[bytes], tool: str, out: Any) -> None:
        """Wait for the tool in this thread (the one that started it: see
        `dies_with_daemon`), reporting progress; stop it on cancel or when stuck."""
        activity = -1
        since = time.monotonic()
        while True:
            try:
                proc.wait(TOOL_POLL)
                return
            except subprocess.TimeoutExpired:
                pass
            if self.cancel.is_set():
                raise Cancelled("unpack cancelled")
            done = _tree_bytes(self.dest)
            self.progress(done)
            now = time.monotonic()
            written = done + os.fstat(out.fileno()).st_size
            if written != activity:
                activity, since = written, now
            elif now - since >= self.stall_timeout:
                raise UnpackStalled(
                    f"{tool} wrote nothing for {self.stall_timeout:g} s while unpacking "
                    f"{self.listing.archive.name} and was stopped"
                )

    def _check_tree(self) -> None:
        """The whole tree normalised (so every directory can be read), the copies
        made, then every member there with its size."""
        self._normalise_tree()
        make_copies(self.listing, self.dest, self.cancel, self.progress)
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

    def _normalise_tree(self) -> None:
        """Only files, directories and links pointing inside; the daemon's owner; files
        0644 or 0755 by the listing's execute bit (unar ignores RAR5 modes), directories
        0755. Whatever a back-end restored, set-id and sticky bits and owners are gone."""
        name = self.listing.archive.name
        root = self.dest.resolve()
        owner = tree_owner(self.dest)
        members = {str(m.path): m for m in self.listing.members}
        copies = {str(m.path) for m in self.listing.copies}
        shared: list[tuple[str, str]] = []  # files sharing an inode, decided at the end

        def fail(exc: OSError) -> None:
            raise exc

        # Top-down, so a directory is made 0755 before the walk tries to list it.
        for dirpath, dirnames, filenames in os.walk(self.dest, onerror=fail):
            for entry in dirnames + filenames:
                path = os.path.join(dirpath, entry)
                rel = os.path.relpath(path, self.dest)
                st = os.lstat(path)
                if rel in copies and not stat.S_ISDIR(st.st_mode):
                    # The back-end's stand-in for a copy (unar: a link; bsdtar: an
                    # empty file or a hard link): `make_copies` writes the real one.
                    os.unlink(path)
                    if entry in dirnames:
                        dirnames.remove(entry)
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
                    shared.append((path, rel))
                    continue
                want = _wanted_mode(path, rel, st, root, members.get(rel), name)
                _own(path, st, owner, want)
        for path, rel in shared:
            # Hard links among the copies' stand-ins are gone now; chmod on any other
            # would reach whatever file it shares its inode with.
            st = os.lstat(path)
            if st.st_nlink != 1:
                raise UnsafeArchive(f"{name}: unpacking made {rel!r} a hard link")
            _own(path, st, owner, _file_mode(members.get(rel), st))


def _wanted_mode(
    path: str, rel: str, st: os.stat_result, root: Path, member: Member | None, name: str
) -> int | None:
    """The mode an unpacked entry gets (None: a link, left as it is), or its refusal."""
    if stat.S_ISLNK(st.st_mode):
        if not Path(path).resolve().is_relative_to(root):
            os.unlink(path)
            raise UnsafeArchive(f"unpacked link {rel!r} points outside the game")
        return None
    if stat.S_ISDIR(st.st_mode):
        return DIR_MODE
    if stat.S_ISREG(st.st_mode):
        return _file_mode(member, st)
    kind = SPECIAL_KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
    raise UnsafeArchive(
        f"{name}: unpacking made {rel!r} {kind}; only files, directories "
        "and links inside the game are installed"
    )


def tree_owner(dest: Path) -> tuple[int, int]:
    """Who owns an installed tree: the daemon, in the group of the directory it fills."""
    return os.geteuid(), os.lstat(dest).st_gid


def _file_mode(member: Member | None, st: os.stat_result) -> int:
    """0755 if the listing (else the file) says executable, 0644 otherwise."""
    executable = member.mode & 0o111 if member else st.st_mode & 0o100
    return EXEC_MODE if executable else FILE_MODE


def _own(path: str, st: os.stat_result, owner: tuple[int, int], mode: int | None) -> None:
    if (st.st_uid, st.st_gid) != owner:
        os.lchown(path, *owner)
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def make_copies(listing: Listing, dest: Path, cancel: threading.Event, progress: Progress) -> None:
    """Write each file copy and hard link as a real file holding its file's bytes.

    Runs on a normalised tree: the file copied is a regular file of the listed size,
    opened without following a link; the copy is new (O_EXCL), in real directories
    that this makes, like the rest of the tree, 0755 and ours."""
    copies = listing.copies
    if not copies:
        return
    name = listing.archive.name
    owner = tree_owner(dest)
    done = listing.total_bytes - sum(m.size for m in copies)
    for member in copies:
        assert member.copy_of is not None
        source = dest.joinpath(*member.copy_of.parts)
        target = dest.joinpath(*member.path.parts)
        _real_dirs(dest, member.path.parent, owner, name)
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or st.st_size != member.size:
                raise ArchiveError(
                    f"{name}: {member.copy_of} was not unpacked as the file of "
                    f"{member.size} bytes that {member.path} copies"
                )
            try:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                raise ArchiveError(
                    f"{name}: {member.path} is a copy, but unpacking made a directory there"
                ) from None
            try:
                copy_file_bytes(src, out, member.size, cancel, progress, done)
                done += member.size
                os.fchown(out, *owner)
                os.fchmod(out, _file_mode(member, st))
            finally:
                os.close(out)
        finally:
            os.close(src)


def copy_file_bytes(
    src: int, out: int, size: int, cancel: threading.Event, progress: Progress, base: int = 0
) -> None:
    """Copy `size` bytes from the start of `src` in the kernel, a chunk at a time so
    that cancel is heard; `progress` is told `base` plus the bytes copied so far."""
    offset = 0
    while offset < size:
        if cancel.is_set():
            raise Cancelled("cancelled while copying a file")
        sent = os.sendfile(out, src, offset, min(CHUNK, size - offset))
        if not sent:
            raise ArchiveError("a copied file shrank while it was copied")
        offset += sent
        progress(base + offset)


def _real_dirs(dest: Path, parent: PurePosixPath, owner: tuple[int, int], name: str) -> None:
    """`parent` under `dest` as real directories (never through a link), made 0755 and
    ours where missing."""
    path = dest
    for part in parent.parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, DIR_MODE)
            _own(str(path), os.lstat(path), owner, DIR_MODE)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ArchiveError(
                f"{name}: a copy goes into {path.relative_to(dest)}, which is not a directory"
            )


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


# Run in the tool's own process, then exec'd away: set PR_SET_PDEATHSIG (no capability
# needed), make sure the daemon did not die before that, drop the daemon's ambient
# CAP_FOWNER (PR_CAP_AMBIENT_CLEAR_ALL) and become the tool.
# `setpriv --pdeathsig` also calls capset(2), which the unit's
# SystemCallFilter=~@privileged refuses (exit 127); preexec_fn is unsafe with threads.
_PDEATHSIG_EXEC = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(1, 9, 0, 0, 0):
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
libc.prctl(47, 4, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit("lanspreadd is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dies_with_daemon(cmd: list[str]) -> list[str]:
    """If the daemon is killed, its unpack tool must die too: a survivor would keep
    writing into a staging directory that recovery is removing.

    PR_SET_PDEATHSIG fires when the *thread* that started the tool exits, not only the
    process. `Extraction` waits for its tool in the thread that started it. The stream
    provider starts unar from an asyncio executor thread and may read on in others;
    executor threads live until the loop shuts down, when the tool must die anyway.
    """
    if not sys.executable:
        return cmd
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *cmd]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _disk_full(path: Path) -> bool:
    try:
        return free_bytes(path) < CHUNK
    except OSError:
        return False
