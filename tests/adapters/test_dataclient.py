"""The data channel's receiving end against a scripted source on a `socketpair`.

Each source is a thread on the other end of the pair, playing one answer from the wire
format (`protocol.datachannel`); the tests assert what the receiver sees: the bytes,
or a named error, and that a cancelled fetch leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from lanspreadd.errors import PeerError
from lanspreadd.net.dataclient import STALL_TIMEOUT, fetch_chunk, in_thread, open_data_channel
from lanspreadd.protocol.datachannel import (
    BAD_REQUEST,
    GREETING_LEN,
    NOT_SERVABLE,
    OK,
    REPLY,
    REQUEST,
    ChunkRequest,
    decode_greeting,
    decode_request,
    encode_reply_header,
)
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.text import MAX_TEXT

REQUEST_1 = ChunkRequest(file_index=3, offset=65536, length=40_000)
DATA = bytes(range(251)) * 160  # 40 160 bytes, no period that divides the chunk
FILLER = 0xAA
Script = Callable[[socket.socket], None]


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise EOFError(f"the receiver closed after {len(data)} of {size} bytes")
        data += piece
    return data


def expect_request(sock: socket.socket, expected: ChunkRequest = REQUEST_1) -> None:
    request = decode_request(receive_exactly(sock, REQUEST.size))
    assert request == expected


def send_in_pieces(sock: socket.socket, data: bytes, piece: int = 997) -> None:
    """Small writes, so the receiver must assemble the reply from many reads."""
    for start in range(0, len(data), piece):
        sock.sendall(data[start : start + piece])


@contextmanager
def source(script: Script) -> Iterator[socket.socket]:
    """The receiver's end of a socketpair whose other end runs `script` in a thread."""
    ours, theirs = socket.socketpair()
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            with theirs:
                script(theirs)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=serve, name="scripted-source")
    thread.start()
    try:
        with ours:
            ours.settimeout(10)  # a broken receiver fails the test instead of hanging it
            yield ours
    finally:
        thread.join(10)  # `ours` is closed: a source still reading sees the end
    assert not thread.is_alive(), "the scripted source did not finish"
    if failures:
        raise failures[0]


def buffer() -> bytearray:
    return bytearray([FILLER]) * (64 << 10)


def test_a_chunk_arrives_byte_exact_in_the_callers_buffer() -> None:
    second = ChunkRequest(0, 0, 10)

    def script(sock: socket.socket) -> None:
        expect_request(sock)
        send_in_pieces(sock, encode_reply_header(OK, len(DATA[:40_000])) + DATA[:40_000])
        expect_request(sock, second)
        sock.sendall(encode_reply_header(OK, 10) + b"0123456789")

    into = buffer()
    with source(script) as sock:
        view = fetch_chunk(sock, into, REQUEST_1)
        assert view.obj is into  # received in place: no copy of the chunk
        assert bytes(view) == DATA[:40_000]
        assert into[40_000:] == bytearray([FILLER]) * (len(into) - 40_000)
        # The channel stays in step: the next chunk follows on the same connection.
        assert bytes(fetch_chunk(sock, into, second)) == b"0123456789"


def test_a_refusal_is_a_peer_error_in_the_sources_words() -> None:
    reason = "sample-game is not served right now"

    def script(sock: socket.socket) -> None:
        expect_request(sock)
        send_in_pieces(sock, encode_reply_header(NOT_SERVABLE, len(reason)) + reason.encode(), 7)
        expect_request(sock)
        sock.sendall(encode_reply_header(OK, REQUEST_1.length) + DATA[: REQUEST_1.length])

    with source(script) as sock:
        with pytest.raises(PeerError) as caught:
            fetch_chunk(sock, buffer(), REQUEST_1)
        assert str(caught.value) == reason
        assert caught.value.name == "PeerError"
        # The whole reason was read: what follows is the next reply, not its tail.
        assert bytes(fetch_chunk(sock, buffer(), REQUEST_1)) == DATA[: REQUEST_1.length]


def test_a_reason_that_is_not_utf8_still_reaches_the_user() -> None:
    def script(sock: socket.socket) -> None:
        expect_request(sock)
        sock.sendall(encode_reply_header(BAD_REQUEST, 9) + b"no \xff file")

    with source(script) as sock, pytest.raises(PeerError) as caught:
        fetch_chunk(sock, buffer(), REQUEST_1)
    assert str(caught.value) == "no \ufffd file"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(encode_reply_header(OK, REQUEST_1.length)[:3], id="half-a-header"),
        pytest.param(encode_reply_header(OK, REQUEST_1.length), id="header-only"),
        pytest.param(
            encode_reply_header(OK, REQUEST_1.length) + DATA[: REQUEST_1.length - 1],
            id="one-byte-short",
        ),
        pytest.param(encode_reply_header(NOT_SERVABLE, 20) + b"cut sh", id="reason-cut"),
    ],
)
def test_a_truncated_reply_is_a_named_peer_error(reply: bytes) -> None:
    def script(sock: socket.socket) -> None:
        expect_request(sock)
        send_in_pieces(sock, reply)
        # and the source hangs up

    with source(script) as sock, pytest.raises(PeerError) as caught:
        fetch_chunk(sock, buffer(), REQUEST_1)
    assert str(caught.value) == "the source closed the data channel"


@pytest.mark.parametrize("length", [REQUEST_1.length - 1, REQUEST_1.length + 1, 64 << 20])
def test_a_chunk_of_the_wrong_length_is_refused_before_it_is_read(length: int) -> None:
    def script(sock: socket.socket) -> None:
        expect_request(sock)
        # Only the header: a receiver that trusted the length would wait for the rest.
        sock.sendall(encode_reply_header(OK, length))
        assert sock.recv(1) == b""  # the receiver hangs up instead

    into = buffer()
    with source(script) as sock:
        with pytest.raises(RemoteProtocolError) as caught:
            fetch_chunk(sock, into, REQUEST_1)
        assert str(caught.value) == f"peer answered {length} bytes for a 40000-byte chunk"
        assert into == buffer()  # nothing of it landed in the buffer
        sock.close()


def test_an_overlong_refusal_reason_is_refused() -> None:
    def script(sock: socket.socket) -> None:
        expect_request(sock)
        sock.sendall(encode_reply_header(NOT_SERVABLE, MAX_TEXT + 1))
        assert sock.recv(1) == b""

    with source(script) as sock:
        with pytest.raises(RemoteProtocolError) as caught:
            fetch_chunk(sock, buffer(), REQUEST_1)
        assert str(caught.value) == "error reason too long"
        sock.close()


def test_a_stalled_source_surfaces_as_a_timeout_the_worker_handles() -> None:
    """The stall timeout (set by open_data_channel) turns silence into an OSError, which
    a download worker takes as the source being lost."""

    def script(sock: socket.socket) -> None:
        expect_request(sock)
        assert sock.recv(1) == b""  # says nothing until the receiver gives up

    with source(script) as sock:
        sock.settimeout(0.2)  # STALL_TIMEOUT, shortened: the test checks the path, not 30 s
        with pytest.raises(TimeoutError) as caught:
            fetch_chunk(sock, buffer(), REQUEST_1)
        assert isinstance(caught.value, OSError)
        sock.close()


def test_cancelling_a_stalled_fetch_wakes_its_thread_and_waits_for_it() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        asked = asyncio.Event()
        seen_end = threading.Event()

        def script(sock: socket.socket) -> None:
            expect_request(sock)
            loop.call_soon_threadsafe(asked.set)
            assert sock.recv(1) == b""  # the receiver shut the channel down
            seen_end.set()

        with source(script) as sock:
            ended = threading.Event()

            def fetch() -> memoryview:
                try:
                    return fetch_chunk(sock, buffer(), REQUEST_1)
                finally:
                    ended.set()

            task = asyncio.create_task(in_thread(sock, fetch))
            await asyncio.wait_for(asked.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The cancellation came through only after the blocked thread had ended.
            assert ended.is_set()
            assert seen_end.wait(10)

    asyncio.run(asyncio.wait_for(body(), 20))


def test_cancelling_work_that_polls_an_event_sets_it_and_waits() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        stop = threading.Event()
        ended = threading.Event()

        def work() -> str:
            loop.call_soon_threadsafe(started.set)
            try:
                while not stop.wait(10):
                    pass
                return "stopped"
            finally:
                ended.set()

        task = asyncio.create_task(in_thread(stop, work))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stop.is_set()
        assert ended.is_set()
        # Not cancelled, the work's own result or error comes through unchanged.
        assert await in_thread(None, str.upper, "done") == "DONE"
        with pytest.raises(PeerError, match="gone"):
            await in_thread(None, _raise_peer_error, "gone")

    asyncio.run(asyncio.wait_for(body(), 20))


def _raise_peer_error(message: str) -> None:
    raise PeerError(message)


def test_opening_a_channel_greets_with_the_token_and_arms_the_stall_timeout() -> None:
    token = bytes(range(32))
    greeted: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                greeted.append(decode_greeting(receive_exactly(conn, GREETING_LEN)))
                conn.sendall(REPLY.pack(OK, 0))

        thread = threading.Thread(target=accept, name="listener")
        thread.start()
        try:
            with open_data_channel("127.0.0.1", port, token) as sock:
                assert sock.gettimeout() == STALL_TIMEOUT
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert receive_exactly(sock, REPLY.size) == REPLY.pack(OK, 0)
        finally:
            thread.join(10)
    assert greeted == [token]


def test_a_source_that_is_not_listening_is_an_os_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        open_data_channel("127.0.0.1", port, bytes(32))
