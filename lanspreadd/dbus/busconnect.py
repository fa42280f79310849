"""The daemon's D-Bus connection, opened in one place, with dbus-fast's writer made patient.

dbus-fast (2.44 in Debian 13, 5.2 on PyPI) sends on its non-blocking socket at once,
even while an earlier message is still half-sent, and takes `BlockingIOError` (EAGAIN:
the socket buffer is full) for a broken connection: `_finalize` closes the bus and
lanspreadd exits. Any local user could do that by
flooding cheap calls until the replies outrun dbus-daemon. The writer lives in
`dbus_fast/aio/message_bus.py`, which neither build compiles, and the bus reaches it
through Python attribute look-ups (`schedule_write`, `add_writer(fd, write_callback)`),
so a subclass of it is what actually runs, on PyPI's wheels and Debian's package alike.
"""

from __future__ import annotations

import array
import asyncio
import socket
from typing import Any, TypeVar

from dbus_fast import BusType
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _MessageWriter

from lanspreadd.errors import LanspreadError

B = TypeVar("B", bound=MessageBus)


class PatientWriter(_MessageWriter):
    """dbus-fast's writer, except that a full socket means "wait until writable".

    The state (`buf`, `offset`, `unix_fds`, `fut`, `messages`) is dbus-fast's own, and
    a message half-sent when the socket filled up stays at the head, so nothing is lost
    or reordered; the bus keeps the writer registered while `buf` is set.
    """

    def write_callback(self, remove_writer: bool = True) -> None:
        sock, fd = self.sock, self.fd
        assert sock is not None, "dbus-fast makes the writer once connected"
        assert fd is not None
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                try:
                    if self.unix_fds and self.negotiate_unix_fd:
                        fds = array.array("i", self.unix_fds)
                        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                        self.offset += sock.sendmsg([self.buf[self.offset :]], ancdata)
                        self.unix_fds = None
                    else:
                        self.offset += sock.send(self.buf[self.offset :])
                except BlockingIOError:
                    self.loop.add_writer(fd, self.write_callback)
                    return
                if self.offset < len(self.buf):
                    self.loop.add_writer(fd, self.write_callback)
                    return
                self.buf = None
                _set_result(self.fut)
        except Exception as exc:
            if self.bus._user_disconnect:
                _set_result(self.fut)
            elif self.fut is not None and not self.fut.done():
                self.fut.set_exception(exc)
            self.bus._finalize(exc)


def _set_result(fut: asyncio.Future[Any] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def _bus_for(spec: str, bus_class: type[B]) -> B:
    if spec == "system":
        return bus_class(bus_type=BusType.SYSTEM)
    if spec == "session":
        return bus_class(bus_type=BusType.SESSION)
    return bus_class(bus_address=spec)


async def connect_bus(spec: str, bus_class: type[B]) -> B:
    """Connect to `system`, `session` or a D-Bus address, with the patient writer in place.

    The writer is swapped right after the handshake, before anything of ours is sent;
    changing the class of the live object keeps whatever dbus-fast already queued.
    """
    bus = _bus_for(spec, bus_class)
    await bus.connect()
    writer = bus._writer
    if type(writer) is not _MessageWriter:
        bus.disconnect()
        raise LanspreadError(f"dbus-fast's bus writer is {type(writer)!r}, not the one we patch")
    writer.__class__ = PatientWriter
    return bus
