"""Stored members copied straight from the archive: the install's fast path."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lanspreadd.archive.extract import Extraction, list_archive, open_rar
from lanspreadd.archive.storedcopy import BLOCK, copy_stored, stored_extent
from lanspreadd.archive.writer import Entry, write_rar4, write_rar5, write_rar5_volumes
from lanspreadd.errors import ArchiveError

# Sizes around the copy's block and the direct-write page: tails of every kind.
SIZES = [0, 1, 4095, 4096, BLOCK - 1, BLOCK + 4097, 2 * BLOCK + 12345]


def unpack(archive: Path, dest: Path) -> None:
    dest.mkdir()
    Extraction(list_archive(archive), dest, lambda _: None, threading.Event()).run("rarfile")


@pytest.mark.parametrize("writer", [write_rar4, write_rar5])
def test_members_of_every_size_arrive_byte_for_byte(tmp_path: Path, writer: object) -> None:
    payloads = {f"dir/f{i}.bin": os.urandom(size) for i, size in enumerate(SIZES)}
    archive = tmp_path / "game.rar"
    writer(archive, [Entry(name, data) for name, data in payloads.items()])  # type: ignore[operator]
    with open_rar(archive) as rf:
        files = [info for info in rf.infolist() if info.is_file()]
        assert all(stored_extent(info) is not None for info in files), "the fast path was taken"
    unpack(archive, tmp_path / "out")
    for name, data in payloads.items():
        assert (tmp_path / "out" / name).read_bytes() == data, name


def test_members_split_over_volumes_still_unpack(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 77)
    first = write_rar5_volumes(tmp_path / "game.rar", [Entry("big.bin", data)], 1 << 20)[0]
    with open_rar(first) as rf:
        assert stored_extent(rf.infolist()[0]) is None, "a split member goes through rarfile"
    unpack(first, tmp_path / "out")
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


def test_a_flipped_byte_past_the_first_block_names_the_member(tmp_path: Path) -> None:
    data = os.urandom(BLOCK + 5000)
    archive = tmp_path / "game.rar"
    write_rar5(archive, [Entry("ok.txt", b"fine"), Entry("maps/big.pak", data)])
    raw = bytearray(archive.read_bytes())
    raw[raw.find(data[:64]) + BLOCK + 10] ^= 0x01
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"maps/big\.pak.*corrupt.*CRC"):
        unpack(archive, tmp_path / "out")


def test_an_archive_that_shrinks_while_unpacking_is_named(tmp_path: Path) -> None:
    """The extent was read from the headers; a volume cut since then ends a copy early."""
    data = os.urandom(BLOCK + 5000)
    archive = tmp_path / "game.rar"
    write_rar5(archive, [Entry("big.pak", data)])
    with open_rar(archive) as rf:
        extent = stored_extent(rf.infolist()[0])
    assert extent is not None
    os.truncate(archive, extent.offset + BLOCK + 100)
    with pytest.raises(ArchiveError, match=r"big\.pak.*cut short"):
        copy_stored(extent, tmp_path / "big.pak", "big.pak", threading.Event(), lambda _: None)
