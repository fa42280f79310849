"""Which files of a game peers get, and their chunk hashes, cached across restarts.

Hashing a big game takes minutes: the cache keeps each file's hashes keyed by size
and mtime, so a restart or a second peer never reads the game again."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

from lanspreadd.core.install import atomic_write
from lanspreadd.core.paths import check_relative_path
from lanspreadd.errors import Cancelled
from lanspreadd.protocol.messages import FileEntry
from lanspreadd.protocol.paths import LOCAL

CHUNK_SIZE = 4 << 20


HASH_READ = 1 << 20


def servable_files(root: Path) -> list[tuple[str, int]]:
    """Regular files of the download: everything but local/, dot-files and links."""
    found: list[tuple[str, int]] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                if entry.name.startswith(".") or (not prefix and entry.name == LOCAL):
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    walk(Path(entry.path), f"{prefix}{entry.name}/")
                elif stat.S_ISREG(st.st_mode):
                    found.append((f"{prefix}{entry.name}", st.st_size))

    walk(root, "")
    return found


def hash_file(
    path: Path, chunk_size: int = CHUNK_SIZE, cancel: threading.Event | None = None
) -> list[str]:
    """SHA-256 of each chunk; an empty file has one (empty) chunk."""
    hashes: list[str] = []
    with path.open("rb") as fh:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"hashing {path.name} was cancelled")
            h = hashlib.sha256()
            got = 0
            while got < chunk_size:
                block = fh.read(min(HASH_READ, chunk_size - got))
                if not block:
                    break
                h.update(block)
                got += len(block)
            if got == 0 and hashes:
                break
            hashes.append(h.hexdigest())
            if got < chunk_size:
                break
    return hashes


class HashCache:
    """Chunk hashes per file, keyed by size and mtime, kept in the state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writing = threading.Lock()  # worker threads share one temporary name

    def _load(self, game_id: str) -> dict[str, Any]:
        try:
            cached = json.loads((self.directory / f"{game_id}.json").read_text())
        except (OSError, ValueError):
            return {}
        return cached if isinstance(cached, dict) else {}

    @staticmethod
    def _key(path: Path) -> dict[str, int]:
        st = path.stat()
        return {"size": st.st_size, "mtime": st.st_mtime_ns, "chunk": CHUNK_SIZE}

    @staticmethod
    def _valid(item: object, key: dict[str, int]) -> bool:
        return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())

    def stale_bytes(self, game_id: str, root: Path) -> int:
        """How much file_entries would have to read and hash now; 0 means none."""
        cached = self._load(game_id)
        return sum(
            size
            for rel, size in servable_files(root)
            if not self._valid(cached.get(rel), self._key(root / rel))
        )

    def remember(self, game_id: str, root: Path, entries: tuple[FileEntry, ...]) -> None:
        """Take the hashes of files we just downloaded and verified chunk by chunk, so
        a receiver serves its new game at once instead of reading it all again."""
        fresh = {
            e.path: {
                **self._key(root.joinpath(*check_relative_path(e.path).parts)),
                "hashes": list(e.hashes),
            }
            for e in entries
        }
        self._save(game_id, fresh)

    def file_entries(
        self, game_id: str, root: Path, cancel: threading.Event | None = None
    ) -> tuple[FileEntry, ...]:
        cached = self._load(game_id)
        entries = []
        fresh: dict[str, dict[str, object]] = {}
        for rel, size in servable_files(root):
            key = self._key(root / rel)
            item = cached.get(rel)
            if isinstance(item, dict) and self._valid(item, key):
                hashes = list(item["hashes"])
                fresh[rel] = {**key, "hashes": hashes}
            else:
                hashes = hash_file(root / rel, cancel=cancel)
                fresh[rel] = {**key, "hashes": hashes}
                # Kept file by file: an interrupted pass over a big game resumes.
                self._save(game_id, cached | fresh)
            entries.append(FileEntry(rel, size, tuple(hashes)))
        if fresh != cached:
            self._save(game_id, fresh)
        return tuple(entries)

    def _save(self, game_id: str, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._writing:
            atomic_write(self.directory / f"{game_id}.json", json.dumps(data).encode())
