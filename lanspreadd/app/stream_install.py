"""Receiving a stream install: an installed tree straight from a peer into staging.

Runs in a worker thread on a blocking data-channel socket. It writes only inside
the staging directory it is given, checks every size and CRC32, and returns only
when the End frame confirms the whole tree; GameFiles.replace_local promotes it.
No archive and no version.ini is ever written, so the result is LocalOnly.

A Copy frame (a RAR5 file copy or hard link) is a real copy of a file this stream
wrote before. Copies cost the source nothing to send, so every byte written,
copies included, is held to the total the source announced and the disk-space
check was made for: ten thousand copies of one big file cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from lanspreadd.archive.extract import copy_file_bytes
from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, PeerError
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.stream import (
    Copy,
    Data,
    Dir,
    End,
    FileEnd,
    FileStart,
    Frame,
    StreamDecoder,
    StreamError,
)

RECV = 1 << 20


class StreamReceiver:
    def __init__(
        self,
        sock: socket.socket,
        cancel: threading.Event,
        progress: Callable[[int, int], None],
        total: int,
    ) -> None:
        self.sock = sock
        self.cancel = cancel
        self.progress = progress
        self.total = total
        self.limiter = RateLimiter()  # the download limit, which streams count towards
        self.received = 0
        self.files = 0
        # The file being written: its descriptor, running CRC32 and header.
        self._fd: int | None = None
        self._crc = 0
        self._current: FileStart | None = None
        self._written: dict[str, int] = {}  # files complete in staging, with their sizes

    def fill(self, staging: Path) -> None:
        try:
            for frame in self._frames():
                if self._apply(staging, frame):
                    return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull("no space left for the stream install") from exc
            raise
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None

    def _frames(self) -> Iterator[Frame]:
        decoder = StreamDecoder()
        while True:
            if self.cancel.is_set():
                raise Cancelled("stream install cancelled")
            data = self.sock.recv(RECV)
            if not data:
                raise PeerError("the source stopped in the middle of the stream")
            self.limiter.took(len(data), self.cancel)
            try:
                yield from decoder.feed(data)
            except RemoteProtocolError as exc:
                raise PeerError(f"the source sent a bad stream: {exc}") from None

    def _apply(self, staging: Path, frame: Frame) -> bool:
        """Write what one frame says; True once the End frame confirms the whole tree."""
        if isinstance(frame, FileStart):
            self._fd, self._crc, self._current = self._open(staging, frame), 0, frame
        elif isinstance(frame, Data):
            assert self._fd is not None
            self._count(len(frame.data))
            _write_all(self._fd, frame.data)
            self._crc = zlib.crc32(frame.data, self._crc)
            self.received += len(frame.data)
            self.progress(self.received, self.total)
        elif isinstance(frame, FileEnd):
            self._end_file(frame)
        elif isinstance(frame, Dir):
            (staging / frame.path).mkdir(parents=True, exist_ok=True)
        elif isinstance(frame, Copy):
            self._copy(staging, frame)
        elif isinstance(frame, StreamError):
            raise PeerError(f"the source gave up: {frame.reason}")
        elif isinstance(frame, End):
            if frame.files != self.files or frame.total_bytes != self.received:
                raise PeerError("the stream ended short of what it announced")
            return True
        return False

    def _end_file(self, frame: FileEnd) -> None:
        assert self._fd is not None
        assert self._current is not None
        os.close(self._fd)
        self._fd = None
        if self._crc != frame.crc32:
            raise ArchiveError(f"{self._current.path} arrived corrupt (CRC32 mismatch)")
        self.files += 1
        self._written[self._current.path] = self._current.size

    def _count(self, size: int) -> None:
        """Refuse to write beyond what the source announced (and space was checked for)."""
        if self.received + size > self.total:
            raise PeerError(f"the source sent more than the {self.total} bytes it announced")

    def _copy(self, staging: Path, frame: Copy) -> None:
        """Copy a file this stream wrote before: never a file it did not write."""
        size = self._written.get(frame.source)
        if size is None:
            raise PeerError(f"the source sent {frame.path} as a copy of a file it never sent")
        self._count(size)
        src = os.open(staging / frame.source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            out = self._open(staging, FileStart(frame.path, size, frame.mode))
            try:
                copy_file_bytes(src, out, size, self.cancel, self._copied)
            finally:
                os.close(out)
        finally:
            os.close(src)
        self.received += size
        self.files += 1
        self._written[frame.path] = size

    def _copied(self, done: int) -> None:
        self.progress(self.received + done, self.total)

    @staticmethod
    def _open(staging: Path, frame: FileStart) -> int:
        path = staging / frame.path
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o755 if frame.mode & 0o111 else 0o644
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
