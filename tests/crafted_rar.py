"""Build hostile stored RAR archives that no honest tool writes.

`lanspreadd.archive.writer` writes the archives games ship as; this test-only
builder lets a member lie: any Unix file type and mode (FIFO, device, setuid),
a declared size that is not its data's, a link record, an owner record. It also
writes what WinRAR writes for `-oi` and hard links: a member with no data and a
redirection record naming the member it copies.
"""

from __future__ import annotations

import stat
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lanspreadd.archive.writer import RAR4_MARKER, RAR5_MARKER

REDIR_SYMLINK = 1
REDIR_HARD_LINK = 4
REDIR_FILE_COPY = 5
OWNER_UID_GID = 0x4 | 0x8


@dataclass(frozen=True)
class Raw:
    """One member as its header declares it; `mode` is a full Unix st_mode."""

    name: str
    mode: int
    data: bytes = b""
    declared_size: int | None = None
    redir: tuple[int, str] | None = None  # (RAR5 redirection type, target)
    owner: tuple[int, int] | None = None  # RAR5 owner record: uid, gid
    host: int = 3  # RAR4 host OS: 3 Unix; 4 MacOS and 5 BeOS carry Unix modes too


def fifo(name: str) -> Raw:
    return Raw(name, stat.S_IFIFO | 0o644)


def setuid_file(name: str, data: bytes) -> Raw:
    return Raw(name, stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o755, data)


def directory(name: str, mode: int = 0o755, declared_size: int = 0) -> Raw:
    return Raw(name, stat.S_IFDIR | mode, declared_size=declared_size)


def symlink(name: str, target: str) -> Raw:
    return Raw(name, stat.S_IFLNK | 0o777, redir=(REDIR_SYMLINK, target))


def file_copy(name: str, target: str, size: int, kind: int = REDIR_FILE_COPY) -> Raw:
    """A copy of member `target` (of `size` bytes), as WinRAR's -oi stores it: no data,
    the copied file's size in the header, a redirection record naming the member."""
    return Raw(name, stat.S_IFREG | 0o644, declared_size=size, redir=(kind, target))


def hard_link(name: str, target: str, size: int) -> Raw:
    return file_copy(name, target, size, REDIR_HARD_LINK)


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _block5(
    htype: int, hflags: int, body: bytes, extra: bytes = b"", data: int | None = None
) -> bytes:
    fields = _vint(htype) + _vint(hflags | (0x1 if extra else 0) | (0x2 if data is not None else 0))
    if extra:
        fields += _vint(len(extra))
    if data is not None:
        fields += _vint(data)
    fields += body + extra
    header = _vint(len(fields)) + fields
    return struct.pack("<I", zlib.crc32(header)) + header


def _record(rtype: int, payload: bytes) -> bytes:
    body = _vint(rtype) + payload
    return _vint(len(body)) + body


def write_raw_rar5(path: Path, members: Iterable[Raw]) -> None:
    """A stored RAR5 archive whose members say whatever `members` say (Unix host)."""
    with path.open("wb") as out:
        out.write(RAR5_MARKER + _block5(1, 0, _vint(0)))
        for m in members:
            name = m.name.rstrip("/").encode()
            size = len(m.data) if m.declared_size is None else m.declared_size
            is_dir = stat.S_ISDIR(m.mode)
            body = (
                _vint((0x1 if is_dir else 0) | 0x4)
                + _vint(size)
                + _vint(m.mode)
                + struct.pack("<I", zlib.crc32(m.data))
                + _vint(0)  # stored
                + _vint(1)  # host OS: Unix
                + _vint(len(name))
                + name
            )
            extra = b""
            if m.redir is not None:
                target = m.redir[1].encode()
                extra += _record(5, _vint(m.redir[0]) + _vint(0) + _vint(len(target)) + target)
            if m.owner is not None:
                extra += _record(6, _vint(OWNER_UID_GID) + _vint(m.owner[0]) + _vint(m.owner[1]))
            out.write(_block5(2, 0, body, extra, data=len(m.data)) + m.data)
        out.write(_block5(5, 0, _vint(0)))


def _block4(htype: int, flags: int, body: bytes) -> bytes:
    head = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head


def write_raw_rar4(path: Path, members: Iterable[Raw]) -> None:
    """A stored RAR 2.9 archive; the Unix mode travels in the external attributes."""
    with path.open("wb") as out:
        out.write(RAR4_MARKER + _block4(0x73, 0, b"\0" * 6))
        for m in members:
            name = m.name.rstrip("/").replace("/", "\\").encode()
            size = len(m.data) if m.declared_size is None else m.declared_size
            flags = 0x8000 | (0x00E0 if stat.S_ISDIR(m.mode) else 0)
            body = struct.pack(
                "<IIBIIBBHI",
                len(m.data),
                size,
                m.host,
                zlib.crc32(m.data),
                0x21 << 16,
                29,
                0x30,
                len(name),
                m.mode,
            )
            out.write(_block4(0x74, flags, body + name) + m.data)
        out.write(_block4(0x7B, 0x4000, b""))
