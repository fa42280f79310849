"""The receiving end of the TCP data channel: blocking sockets used from threads.

Receiving into reused buffers, hashing and writing all release the GIL, so bulk
work runs off the event loop on every core; `in_thread` makes cancellation wake
the thread and wait for it, so no thread outlives the operation that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from lanspreadd.errors import LanspreadError
from lanspreadd.protocol.datachannel import encode_greeting

CONNECT_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # a source that sends nothing for this long is cut off

T = TypeVar("T")


class SourceError(LanspreadError):
    """The source misbehaved or went away on the data channel."""

    name = "PeerError"


def open_data_channel(host: str, port: int, token: bytes) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    try:
        sock.settimeout(STALL_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode_greeting(token))
    except OSError:
        sock.close()
        raise
    return sock


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    while view:
        received = sock.recv_into(view)
        if not received:
            raise SourceError("the source closed the data channel")
        view = view[received:]


async def in_thread(
    wake: socket.socket | threading.Event | None, func: Callable[..., T], *args: object
) -> T:
    """Run blocking work in a thread; on cancellation wake it (shut its socket down,
    or set the event it polls) and wait for it before letting the cancellation through."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if isinstance(wake, threading.Event):
            wake.set()
        elif wake is not None:
            with contextlib.suppress(OSError):
                wake.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            await future
        raise
