"""Stream-install frames on the data channel: an installed tree sent file by file.

FileStart(path, size, mode), Data(bytes)*, FileEnd(crc32) per file; Dir(path, mode)
for directories; Copy(path, source, mode) for a file that copies one sent before it
(RAR5 file copies and hard links: the receiver copies its own bytes); End(files,
bytes) closes a complete stream; Error(reason) aborts it. Every frame has a bound
and every path is checked before anyone writes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.paths import PathRefused, inside
from lanspreadd.protocol.text import MAX_TEXT

HEADER = struct.Struct("!BI")
FILE_START = struct.Struct("!QI")
FILE_END = struct.Struct("!I")
END = struct.Struct("!QQ")
DIR = struct.Struct("!I")
COPY = struct.Struct("!IH")  # mode, length of the path; the source's path follows it
MAX_DATA = 1 << 20
MAX_PATH = 4096
RESERVED_NAMES = (".lanspread_owned",)

T_FILE_START, T_DATA, T_FILE_END, T_DIR, T_END, T_ERROR, T_COPY = 1, 2, 3, 4, 5, 6, 7
MAX_PAYLOAD = {
    T_FILE_START: FILE_START.size + MAX_PATH,
    T_DATA: MAX_DATA,
    T_FILE_END: FILE_END.size,
    T_DIR: DIR.size + MAX_PATH,
    T_END: END.size,
    T_ERROR: MAX_TEXT,
    T_COPY: COPY.size + 2 * MAX_PATH,
}


@dataclass(frozen=True)
class FileStart:
    path: str
    size: int
    mode: int


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class FileEnd:
    crc32: int


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int


@dataclass(frozen=True)
class Copy:
    path: str
    source: str  # a file this stream sent before
    mode: int


@dataclass(frozen=True)
class End:
    files: int
    total_bytes: int


@dataclass(frozen=True)
class StreamError:
    reason: str


Frame = FileStart | Data | FileEnd | Dir | Copy | End | StreamError


def checked_path(path: str) -> str:
    """An installed path: inside the tree, and never one of our marker names."""
    try:
        pure = inside(path)
    except PathRefused as exc:
        raise RemoteProtocolError(f"stream path: {exc}") from None
    if len(pure.parts) == 1 and pure.parts[0] in RESERVED_NAMES:
        raise RemoteProtocolError(f"stream path {path!r} is reserved")
    return str(pure)


def encode(frame: Frame) -> bytes:
    if isinstance(frame, FileStart):
        kind, payload = T_FILE_START, FILE_START.pack(frame.size, frame.mode) + frame.path.encode()
    elif isinstance(frame, Data):
        kind, payload = T_DATA, frame.data
    elif isinstance(frame, FileEnd):
        kind, payload = T_FILE_END, FILE_END.pack(frame.crc32)
    elif isinstance(frame, Dir):
        kind, payload = T_DIR, DIR.pack(frame.mode) + frame.path.encode()
    elif isinstance(frame, Copy):
        path, source = frame.path.encode(), frame.source.encode()
        if max(len(path), len(source)) > MAX_PATH:
            raise ValueError("Copy frame is too large")
        kind, payload = T_COPY, COPY.pack(frame.mode, len(path)) + path + source
    elif isinstance(frame, End):
        kind, payload = T_END, END.pack(frame.files, frame.total_bytes)
    else:
        kind, payload = T_ERROR, frame.reason.encode()[:MAX_TEXT]
    if len(payload) > MAX_PAYLOAD[kind]:
        raise ValueError(f"{type(frame).__name__} frame is too large")
    return HEADER.pack(kind, len(payload)) + payload


def decode_header(data: bytes) -> tuple[int, int]:
    kind, length = HEADER.unpack(data)
    limit = MAX_PAYLOAD.get(kind)
    if limit is None:
        raise RemoteProtocolError(f"unknown stream frame type {kind}")
    if length > limit:
        raise RemoteProtocolError(f"stream frame of {length} bytes exceeds {limit}")
    return kind, length


def decode_payload(kind: int, payload: bytes) -> Frame:
    try:
        if kind == T_FILE_START:
            size, mode = FILE_START.unpack_from(payload)
            return FileStart(checked_path(payload[FILE_START.size :].decode()), size, mode)
        if kind == T_DATA:
            return Data(payload)
        if kind == T_FILE_END:
            return FileEnd(FILE_END.unpack(payload)[0])
        if kind == T_DIR:
            (mode,) = DIR.unpack_from(payload)
            return Dir(checked_path(payload[DIR.size :].decode()), mode)
        if kind == T_COPY:
            mode, length = COPY.unpack_from(payload)
            path, source = payload[COPY.size : COPY.size + length], payload[COPY.size + length :]
            if len(path) != length or max(length, len(source)) > MAX_PATH:
                raise RemoteProtocolError("malformed stream frame: bad path lengths in a copy")
            return Copy(checked_path(path.decode()), checked_path(source.decode()), mode)
        if kind == T_END:
            files, total = END.unpack(payload)
            return End(files, total)
        return StreamError(payload.decode("utf-8", "replace"))
    except (struct.error, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"malformed stream frame: {exc}") from None


class StreamDecoder:
    """Feed bytes, get frames; enforces FileStart/Data/FileEnd order and sizes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._open: FileStart | None = None
        self._received = 0
        self.finished = False

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = decode_header(bytes(self._buffer[: HEADER.size]))
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            frame = decode_payload(kind, payload)
            self._check_order(frame)
            frames.append(frame)
        return frames

    def _check_order(self, frame: Frame) -> None:
        if self.finished:
            raise RemoteProtocolError("data after the end of the stream")
        if isinstance(frame, Data):
            if self._open is None:
                raise RemoteProtocolError("file data outside a file")
            self._received += len(frame.data)
            if self._received > self._open.size:
                raise RemoteProtocolError(f"{self._open.path}: more bytes than announced")
        elif isinstance(frame, FileEnd):
            if self._open is None:
                raise RemoteProtocolError("file end outside a file")
            if self._received != self._open.size:
                raise RemoteProtocolError(
                    f"{self._open.path}: {self._received} bytes, announced {self._open.size}"
                )
            self._open = None
        elif self._open is not None and not isinstance(frame, StreamError):
            raise RemoteProtocolError(f"{self._open.path}: a new entry before the file ended")
        elif isinstance(frame, FileStart):
            self._open, self._received = frame, 0
        elif isinstance(frame, End | StreamError):
            self.finished = True
