"""A download's files on disk while it runs: worker threads only, no sockets.

Every file is opened at its full size up front; a chunk is written at its offset
only after its SHA-256 matches the file list; the chunks verified so far are saved
for a resume; `version.ini` stays in memory and is committed last, after files the
new version no longer has are gone.

Whole chunks go to disk with O_DIRECT where the file system takes it
(`archive.directio`): the buffer must be page-aligned (`chunk_buffer`); a file's
last, partial chunk, or a file system that refuses O_DIRECT, goes through the page
cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import random
from pathlib import Path

from lanspreadd.archive.directio import DirectWriter, aligned_buffer, open_direct
from lanspreadd.archive.extract import free_bytes
from lanspreadd.core.install import RESUME_FILE, SPACE_MARGIN, atomic_write
from lanspreadd.core.library import VERSION_INI, parse_version_ini
from lanspreadd.core.paths import check_relative_path
from lanspreadd.core.plan import Chunk, DownloadPlan
from lanspreadd.errors import DiskFull, InvalidArgument, LanspreadError
from lanspreadd.protocol.messages import FileList
from lanspreadd.protocol.paths import LOCAL

log = logging.getLogger(__name__)


def chunk_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer for a chunk, as O_DIRECT needs (a bytearray is not)."""
    return aligned_buffer(size)


class PartialDownload:
    def __init__(self, root: Path, game_id: str, version: str, fingerprint: str) -> None:
        self.root = root
        self.game_id = game_id
        self.version = version
        self.fingerprint = fingerprint
        self.sentinel: bytes | None = None
        self._files: dict[int, DirectWriter] = {}

    def prepare(self, reference: FileList, order: random.Random | None = None) -> DownloadPlan:
        """Open every file at its size; keep chunks a previous run verified."""
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (root / VERSION_INI).unlink()  # the old sentinel goes first: we now change files
        needed = sum(f.size for f in reference.files)
        verified = self._load_resume(reference)
        kept = sum(
            min(reference.chunk_size, reference.files[fi].size - ci * reference.chunk_size)
            for fi, ci in verified
        )
        existing = sum(
            (root / f.path).stat().st_size
            for f in reference.files
            if (root / f.path).is_file() and not (root / f.path).is_symlink()
        )
        if free_bytes(root) + existing < needed - kept + SPACE_MARGIN:
            raise DiskFull(f"{self.game_id} needs {needed - kept} more bytes than are free")
        for fi, entry in enumerate(reference.files):
            if entry.path == VERSION_INI:
                continue
            path = root.joinpath(*check_relative_path(entry.path).parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_dir():
                raise InvalidArgument(f"{path} is in the way of the download")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, entry.size)
            self._files[fi] = DirectWriter(fd, open_direct(path))
        return DownloadPlan(reference.files, reference.chunk_size, verified, order)

    def store(self, plan: DownloadPlan, chunk: Chunk, data: memoryview) -> bool:
        """Write a chunk that matches its hash; False (and nothing written) if not."""
        entry = plan.files[chunk.file_index]
        if hashlib.sha256(data).hexdigest() != entry.hashes[chunk.index]:
            return False
        if entry.path == VERSION_INI:
            self.sentinel = bytes(data)
            return True
        self._files[chunk.file_index].write(data, chunk.offset)
        return True

    def close(self) -> None:
        for writer in self._files.values():
            writer.close_direct()
            with contextlib.suppress(OSError):
                os.fsync(writer.buffered)
            os.close(writer.buffered)
        self._files.clear()

    def _load_resume(self, reference: FileList) -> set[tuple[int, int]]:
        try:
            state = json.loads((self.root / RESUME_FILE).read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return set()
        claimed = {(int(fi), int(ci)) for fi, ci in state.get("verified", [])}
        verified = set()
        for fi, ci in claimed:
            if fi >= len(reference.files) or ci >= len(reference.files[fi].hashes):
                continue
            entry = reference.files[fi]
            if entry.path == VERSION_INI:
                continue
            path = self.root / entry.path
            try:
                with path.open("rb") as fh:
                    fh.seek(ci * reference.chunk_size)
                    data = fh.read(reference.chunk_size)
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == entry.hashes[ci]:
                verified.add((fi, ci))
        if verified:
            log.info("resuming %s: %d chunks already verified", self.game_id, len(verified))
        return verified

    def save_resume(self, plan: DownloadPlan, verified: set[tuple[int, int]] | None = None) -> None:
        """Keep what is verified for a resume (`verified`: a copy taken on the event loop,
        where the plan changes while this runs in a thread)."""
        verified = plan.verified if verified is None else verified
        version_index = {i for i, f in enumerate(plan.files) if f.path == VERSION_INI}
        state = {
            "game_id": self.game_id,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "verified": sorted(v for v in verified if v[0] not in version_index),
        }
        atomic_write(self.root / RESUME_FILE, json.dumps(state).encode())

    def commit(self, reference: FileList) -> None:
        """Remove files the new version no longer has, then write the sentinel last."""
        if self.sentinel is None:
            raise LanspreadError("the download finished without version.ini")
        announced = parse_version_ini(self.sentinel.decode("utf-8", "replace"))
        if announced != self.version:
            raise LanspreadError(
                f"peers sent version.ini for {announced!r}, expected {self.version!r}"
            )
        wanted = {f.path for f in reference.files}
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or entry.name == LOCAL or entry.name in wanted:
                continue
            if entry.is_file(follow_symlinks=False) and not any(
                w.startswith(entry.name + "/") for w in wanted
            ):
                os.unlink(entry.path)
        atomic_write(self.root / VERSION_INI, self.sentinel)
        with contextlib.suppress(FileNotFoundError):
            (self.root / RESUME_FILE).unlink()
