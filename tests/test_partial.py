"""A download's files on disk: whole chunks written directly, the rest through the cache.

Whatever path a chunk takes (O_DIRECT from an aligned buffer, the page cache for a
file's tail, an unaligned buffer or a file system that refuses O_DIRECT), the game on
disk is byte for byte what the file list says, and nothing unverified is written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from lanspreadd.core.partial import PartialDownload, chunk_buffer
from lanspreadd.core.plan import DownloadPlan
from lanspreadd.protocol.messages import FileEntry, FileList

CHUNK = 64 << 10
DATA = {
    "game.part1.rar": os.urandom(3 * CHUNK),  # whole chunks only
    "game.part2.rar": os.urandom(2 * CHUNK + 777),  # a tail no block size divides
    "version.ini": b"1.0\n",
}


def file_list() -> FileList:
    entries = tuple(
        FileEntry(
            path,
            len(data),
            tuple(
                hashlib.sha256(data[i : i + CHUNK]).hexdigest()
                for i in range(0, max(len(data), 1), CHUNK)
            ),
        )
        for path, data in DATA.items()
    )
    return FileList(1, "quake", "1.0", CHUNK, entries, b"t" * 32)


def download(root: Path, aligned: bool, corrupt_first: bool = False) -> None:
    reference = file_list()
    files = PartialDownload(root, "quake", "1.0", "f" * 64)
    plan: DownloadPlan = files.prepare(reference)
    plan.add_source("peer")
    plan.add_source("other")  # takes a chunk the first one sent corrupt
    buffer = chunk_buffer(CHUNK) if aligned else bytearray(CHUNK + 1)
    view = memoryview(buffer) if aligned else memoryview(buffer)[1:]  # off the page
    while (chunk := plan.next_for("peer") or plan.next_for("other")) is not None:
        data = DATA[reference.files[chunk.file_index].path]
        piece = data[chunk.offset : chunk.offset + chunk.length]
        view[: chunk.length] = piece
        if corrupt_first:
            corrupt_first = False
            view[0] ^= 1
            assert not files.store(plan, chunk, view[: chunk.length])
            plan.corrupt(chunk, "peer")
            continue
        assert files.store(plan, chunk, view[: chunk.length])
        plan.completed(chunk)
    files.close()
    files.commit(reference)


def on_disk(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize("aligned", [True, False], ids=["page-aligned", "unaligned"])
def test_every_write_path_leaves_the_game_as_listed(tmp_path: Path, aligned: bool) -> None:
    download(tmp_path / "quake", aligned)
    assert on_disk(tmp_path / "quake") == DATA


def test_a_corrupt_chunk_is_never_written(tmp_path: Path) -> None:
    root = tmp_path / "quake"
    download(root, aligned=True, corrupt_first=True)
    assert on_disk(root) == DATA
