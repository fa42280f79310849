"""The receiving end of the TCP data channel: blocking sockets used from threads.

Receiving into reused buffers, hashing and writing all release the GIL, so bulk
work runs off the event loop on every core; `in_thread` makes cancellation wake
the thread and wait for it, so no thread outlives the operation that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mmap
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from lanspreadd.errors import ChunkNotHeld, PeerError, SourceBusy
from lanspreadd.protocol.datachannel import (
    BUSY,
    NOT_HELD,
    OK,
    REPLY,
    ChunkRequest,
    decode_reply_header,
    encode_greeting,
    encode_request,
)

CONNECT_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # a source that sends nothing for this long is cut off

T = TypeVar("T")


def open_data_channel(host: str, port: int, token: bytes, local_host: str = "") -> socket.socket:
    """A data channel from `local_host` ("" any): the source honours a grant only from the
    address our QUIC connection came from, so both leave from the same one."""
    source = (local_host, 0) if local_host else None
    sock = socket.create_connection((host, port), CONNECT_TIMEOUT, source)
    try:
        sock.settimeout(STALL_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode_greeting(token))
    except OSError:
        sock.close()
        raise
    return sock


RECV_LOWAT = 1 << 20  # wake for a MiB at a time, not for every segment


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill `view`. Each wake-up waits for up to a MiB (SO_RCVLOWAT): waking per TCP
    segment made the receiving threads trade the GIL thousands of times per chunk."""
    while view:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, min(len(view), RECV_LOWAT))
        received = sock.recv_into(view)
        if not received:
            raise PeerError("the source closed the data channel")
        view = view[received:]


async def in_thread(
    wake: socket.socket | threading.Event | None,
    func: Callable[..., T],
    *args: object,
    pool: Executor | None = None,
) -> T:
    """Run blocking work in a thread (of `pool`, else asyncio's default); on cancellation
    wake it (shut its socket down, or set the event it polls) and wait for it before
    letting the cancellation through."""
    future: asyncio.Future[T]
    if pool is None:
        future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    else:
        future = asyncio.get_running_loop().run_in_executor(pool, functools.partial(func, *args))
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


def fetch_chunk(
    sock: socket.socket, buffer: bytearray | mmap.mmap, request: ChunkRequest
) -> memoryview:
    """Ask for one chunk and receive it into `buffer`; the view holds exactly its bytes."""
    sock.sendall(encode_request(request))
    header = memoryview(bytearray(REPLY.size))
    recv_exactly(sock, header)
    status, length = decode_reply_header(bytes(header), request.length)
    view = memoryview(buffer)[:length]
    recv_exactly(sock, view)
    if status != OK:
        reason = bytes(view).decode("utf-8", "replace")
        raise {BUSY: SourceBusy, NOT_HELD: ChunkNotHeld}.get(status, PeerError)(reason)
    return view
