"""Receiving a stream install: an installed tree straight from a peer into staging.

Runs in a worker thread on a blocking data-channel socket. It writes only inside
the staging directory it is given, checks every size and CRC32, and returns only
when the End frame confirms the whole tree; GameFiles.replace_local promotes it.
No archive and no version.ini is ever written, so the result is LocalOnly.
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

from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, PeerError
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.stream import (
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
        self.received = 0
        self.files = 0
        # The file being written: its descriptor, running CRC32 and header.
        self._fd: int | None = None
        self._crc = 0
        self._current: FileStart | None = None

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
            _write_all(self._fd, frame.data)
            self._crc = zlib.crc32(frame.data, self._crc)
            self.received += len(frame.data)
            self.progress(self.received, self.total)
        elif isinstance(frame, FileEnd):
            self._end_file(frame)
        elif isinstance(frame, Dir):
            (staging / frame.path).mkdir(parents=True, exist_ok=True)
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
