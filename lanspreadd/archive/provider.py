"""StreamInstallProvider: the archive side of stream install.

A provider yields an installed tree as (entry, byte pieces) in one pass. The RAR
provider decompresses each root archive exactly once, in order: stored members
are read by rarfile directly; compressed ones, solid and multi-volume included,
come from one `unar -o -` run whose output is cut at the listed member sizes.
A unar that writes nothing for the stall timeout is killed; one that fails is
reported with its exit status and its own words.

File copies and hard links carry no bytes of their own (unar writes none for
them): each archive's copies follow its other entries, naming the file they copy,
which the receiver has written by then and copies itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from lanspreadd.archive.extract import (
    LINKS_PREFIX,
    UNPACK_STALL_TIMEOUT,
    Listing,
    Member,
    dies_with_daemon,
    list_archive,
    neutral_links,
    open_rar,
)
from lanspreadd.errors import ArchiveError, UnpackStalled

PIECE = 1 << 20


@dataclass(frozen=True)
class TreeEntry:
    path: str
    size: int
    mode: int
    is_dir: bool
    crc32: int | None  # as the archive recorded it, when it did
    copy_of: str | None = None  # a copy of this file, sent earlier: no bytes of its own


class StreamInstallProvider(Protocol):
    """Yields every entry of an installed tree with its bytes, in one pass."""

    def total_bytes(self) -> int: ...

    def entries(self) -> Generator[tuple[TreeEntry, Iterator[bytes]], None, None]: ...


def _entry(member: Member) -> TreeEntry:
    mode = member.mode & 0o7777 or (0o755 if member.is_dir else 0o644)
    copy_of = None if member.copy_of is None else str(member.copy_of)
    return TreeEntry(
        str(member.path), member.size, mode, member.is_dir, member.crc or None, copy_of
    )


def _copies(listing: Listing) -> Generator[tuple[TreeEntry, Iterator[bytes]], None, None]:
    """An archive's copies, once every file they may copy has been sent."""
    for member in listing.copies:
        yield _entry(member), iter(())


def _checked(entry: TreeEntry, pieces: Iterator[bytes], archive: str) -> Iterator[bytes]:
    """Pass bytes through, and refuse to finish a file that does not match its header."""
    crc = 0
    size = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        size += len(piece)
        yield piece
    if size != entry.size:
        raise ArchiveError(f"{archive}: {entry.path} gave {size} bytes, expected {entry.size}")
    if entry.crc32 is not None and crc != entry.crc32:
        raise ArchiveError(f"{archive}: {entry.path} failed its CRC check on this source")


class _ToolOutput:
    """A tool's stdout, read with a stall timeout. Its end is only an end if the tool
    succeeded: otherwise the tool's exit status and last words are the error."""

    def __init__(
        self, proc: subprocess.Popen[bytes], errors: IO[bytes], archive: str, stall_timeout: float
    ) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.errors = errors
        self.archive = archive
        self.stall_timeout = stall_timeout
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)

    def read(self, size: int) -> bytes:
        if not self.poll.poll(self.stall_timeout * 1000):
            raise self._kill_stalled()
        data = os.read(self.fd, size)
        if not data:
            self._check_exit()
        return data

    def _check_exit(self) -> None:
        try:
            code = self.proc.wait(self.stall_timeout)
        except subprocess.TimeoutExpired:
            raise self._kill_stalled() from None
        if code != 0:
            self.errors.seek(0)
            text = self.errors.read()[-4096:].decode("utf-8", "replace")
            tail = " / ".join(text.strip().splitlines()[-3:])
            raise ArchiveError(f"unar failed on {self.archive} (exit {code}): {tail}")

    def _kill_stalled(self) -> UnpackStalled:
        """Kill the stuck tool and reap it: once the error is raised, the tool is gone
        (a stopped process dies only when next scheduled, late on a busy machine)."""
        self.proc.kill()
        self.proc.wait()
        return UnpackStalled(
            f"unar wrote nothing for {self.stall_timeout:g} s while unpacking {self.archive} "
            "and was stopped"
        )


class RarStreamProvider:
    def __init__(self, archives: list[Path], stall_timeout: float = UNPACK_STALL_TIMEOUT) -> None:
        self.stall_timeout = stall_timeout
        self.listings = [list_archive(a) for a in archives]
        for listing in self.listings:
            if any(m.is_link for m in listing.members):
                raise ArchiveError(f"{listing.archive.name} has links; stream install skips it")

    def total_bytes(self) -> int:
        return sum(listing.total_bytes for listing in self.listings)

    def entries(self) -> Generator[tuple[TreeEntry, Iterator[bytes]], None, None]:
        for listing in self.listings:
            if listing.all_stored:
                yield from self._stored(listing)
            else:
                yield from self._unar(listing)
            yield from _copies(listing)

    def _stored(self, listing: Listing) -> Generator[tuple[TreeEntry, Iterator[bytes]], None, None]:
        with open_rar(listing.archive) as rf:
            for info, member in zip(rf.infolist(), listing.members, strict=True):
                entry = _entry(member)
                if member.copy_of is not None:
                    continue
                if member.is_dir:
                    yield entry, iter(())
                    continue
                with rf.open(info) as src:
                    yield entry, _checked(entry, _pieces(src, member.size), listing.archive.name)

    def _unar(self, listing: Listing) -> Generator[tuple[TreeEntry, Iterator[bytes]], None, None]:
        if shutil.which("unar") is None:
            raise ArchiveError("the unpack tool 'unar' is not installed")
        links = Path(tempfile.mkdtemp(prefix=LINKS_PREFIX, dir=listing.archive.parent))
        proc: subprocess.Popen[bytes] | None = None
        name = listing.archive.name
        try:
            with tempfile.TemporaryFile() as errors:
                first = neutral_links(listing, links)
                proc = subprocess.Popen(
                    dies_with_daemon(["unar", "-q", "-o", "-", str(first)]),
                    bufsize=0,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=errors,
                )
                output = _ToolOutput(proc, errors, name, self.stall_timeout)
                for member in listing.members:
                    if member.copy_of is not None:
                        continue  # unar writes nothing for a copy
                    entry = _entry(member)
                    pieces = iter(()) if member.is_dir else _pieces(output, member.size)
                    yield entry, _checked(entry, pieces, name)
                if output.read(1):
                    raise ArchiveError(f"{name}: unar produced more than listed")
        finally:
            if proc is not None:
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
            shutil.rmtree(links, ignore_errors=True)


def _pieces(src: IO[bytes] | _ToolOutput | Any, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining:
        piece = src.read(min(PIECE, remaining))
        if not piece:
            raise ArchiveError("the archive ended early")
        remaining -= len(piece)
        yield piece
