"""Write stored (uncompressed) RAR4 and RAR5 archives.

RAR compression is non-free, but the stored method is a plain container, so
sample games and tests can produce real archives that `rarfile`, `unar` and
`bsdtar` all read.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RAR4_MARKER = b"Rar!\x1a\x07\x00"
RAR5_MARKER = b"Rar!\x1a\x07\x01\x00"


@dataclass(frozen=True)
class Entry:
    """One member: a file (data given) or a directory (data None)."""

    name: str
    data: bytes | None = None
    mode: int = 0o644


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _rar5_block(htype: int, hflags: int, body: bytes, data_size: int | None = None) -> bytes:
    fields = _vint(htype) + _vint(hflags | (0x2 if data_size is not None else 0))
    if data_size is not None:
        fields += _vint(data_size)
    fields += body
    header = _vint(len(fields)) + fields
    return struct.pack("<I", zlib.crc32(header)) + header


def _rar5_file(entry: Entry, part: bytes, split_before: bool, split_after: bool) -> bytes:
    is_dir = entry.data is None
    name = entry.name.rstrip("/").encode()
    size = 0 if entry.data is None else len(entry.data)
    # A part that continues in the next volume carries its own CRC; the last
    # part carries the whole file's, as unar checks it that way.
    crc = 0 if entry.data is None else zlib.crc32(part if split_after else entry.data)
    file_flags = (0x1 if is_dir else 0) | 0x4
    mode = (0o40000 | 0o755) if is_dir else (0o100000 | entry.mode)
    body = (
        _vint(file_flags)
        + _vint(size)
        + _vint(mode)
        + struct.pack("<I", crc)
        + _vint(0)  # compression info: version 0, method 0 (store)
        + _vint(1)  # host OS: Unix
        + _vint(len(name))
        + name
    )
    hflags = (0x8 if split_before else 0) | (0x10 if split_after else 0)
    return _rar5_block(2, hflags, body, data_size=len(part)) + part


def write_rar5(path: Path, entries: Iterable[Entry]) -> None:
    """Write a single-volume stored RAR5 archive."""
    with path.open("wb") as out:
        out.write(RAR5_MARKER + _rar5_block(1, 0, _vint(0)))
        for entry in entries:
            out.write(_rar5_file(entry, entry.data or b"", False, False))
        out.write(_rar5_block(5, 0, _vint(0)))


def write_rar5_volumes(first: Path, entries: Sequence[Entry], volume_size: int) -> list[Path]:
    """Write a stored RAR5 multi-volume set named NAME.partN.rar, splitting data."""
    stem = first.name.removesuffix(".rar").removesuffix(".part1")
    blocks: list[list[tuple[Entry, bytes, bool, bool]]] = [[]]
    room = volume_size
    for entry in entries:
        data = entry.data or b""
        offset = 0
        while True:
            take = data[offset : offset + max(room, 1)] if data else b""
            offset += len(take)
            more = offset < len(data)
            blocks[-1].append((entry, take, offset - len(take) > 0, more))
            room -= len(take)
            if not more:
                break
            blocks.append([])
            room = volume_size
    paths: list[Path] = []
    for index, items in enumerate(blocks):
        path = first.with_name(f"{stem}.part{index + 1}.rar")
        last = index == len(blocks) - 1
        archive_flags = 0x1 | (0x2 if index else 0)
        main = _vint(archive_flags) + (_vint(index) if index else b"")
        with path.open("wb") as out:
            out.write(RAR5_MARKER + _rar5_block(1, 0, main))
            for entry, part, before, after in items:
                out.write(_rar5_file(entry, part, before, after))
            out.write(_rar5_block(5, 0, _vint(0 if last else 1)))
        paths.append(path)
    return paths


def _rar4_block(htype: int, flags: int, body: bytes) -> bytes:
    head = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head


def write_rar4(path: Path, entries: Iterable[Entry]) -> None:
    """Write a single-volume stored RAR4 (RAR 2.9) archive."""
    with path.open("wb") as out:
        out.write(RAR4_MARKER + _rar4_block(0x73, 0, b"\0" * 6))
        for entry in entries:
            # RAR 2.9 headers separate path parts with a backslash whatever the host.
            name = entry.name.rstrip("/").replace("/", "\\").encode()
            data = entry.data or b""
            size = len(data)
            flags = 0x8000 | (0x00E0 if entry.data is None else 0)
            large = size >= 1 << 32
            if large:
                flags |= 0x0100
            mode = (0o40000 | 0o755) if entry.data is None else (0o100000 | entry.mode)
            body = struct.pack(
                "<IIBIIBBHI",
                size & 0xFFFFFFFF,
                size & 0xFFFFFFFF,
                3,  # host OS: Unix
                zlib.crc32(data),
                0x21 << 16,  # DOS time 1980-01-01
                29,
                0x30,  # method: store
                len(name),
                mode,
            )
            if large:
                body += struct.pack("<II", size >> 32, size >> 32)
            out.write(_rar4_block(0x74, flags, body + name) + data)
        out.write(_rar4_block(0x7B, 0x4000, b""))
