"""Serving rules that need no network: paths, listed files, hashes, limits, grants."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from pathlib import Path

import pytest

from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.hashes import HashCache, hash_file, servable_files
from lanspreadd.core.paths import check_relative_path
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import Cancelled, InvalidArgument
from lanspreadd.net.dataserver import (
    GRANTS_KEPT,
    SENT_ELSEWHERE,
    SENT_ELSEWHERE_MAX,
    DataServer,
    Grant,
    OutboundTransfers,
    sent_elsewhere,
)
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol.datachannel import (
    OK,
    REPLY,
    ChunkRequest,
    decode_reply_header,
    encode_greeting,
    encode_request,
)
from lanspreadd.protocol.messages import FileEntry


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", "local/game.exe", ".lanspread.json", "a\\b", ""]
)
def test_paths_outside_a_download_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_relative_path(path)


def test_only_the_download_is_served(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "game.exe").write_bytes(b"x")
    (tmp_path / ".lanspread.json").write_text("{}")
    (tmp_path / "g.rar").write_bytes(b"rar")
    (tmp_path / "extras").mkdir()
    (tmp_path / "extras" / "manual.pdf").write_bytes(b"pdf")
    (tmp_path / "link.rar").symlink_to(tmp_path / "g.rar")
    (tmp_path / "version.ini").write_text("1.0")
    assert servable_files(tmp_path) == [("extras/manual.pdf", 3), ("g.rar", 3), ("version.ini", 3)]


def test_chunk_hashes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    path = tmp_path / "f"
    path.write_bytes(data)
    size = 512 * 1024
    expected = [hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)]
    assert hash_file(path, size) == expected
    (tmp_path / "empty").write_bytes(b"")
    assert hash_file(tmp_path / "empty", size) == [hashlib.sha256(b"").hexdigest()]


def test_upload_limiter_spaces_out_chunks() -> None:
    now = [100.0]
    limiter = RateLimiter(1000, clock=lambda: now[0])
    assert limiter.bucket.delay_for(500) == 0.0
    assert limiter.bucket.delay_for(500) == pytest.approx(0.5)
    now[0] += 5
    assert limiter.bucket.delay_for(100) == 0.0
    assert RateLimiter(0).bucket.delay_for(1 << 30) == 0.0


def test_grants_do_not_pile_up(tmp_path: Path) -> None:
    server = DataServer(
        lambda _g, _v: True, OutboundTransfers(), RefusalTally(), ConnectionCaps(4, 8)
    )
    tokens = [server.issue(Grant("peer", "g", "1", tmp_path)) for _ in range(50)]
    server.issue(Grant("other", "g", "1", tmp_path))
    assert len(server.grants) == GRANTS_KEPT + 1
    assert tokens[-1] in server.grants
    assert tokens[0] not in server.grants


def test_hash_cache_knows_what_it_must_still_read(tmp_path: Path) -> None:
    root = tmp_path / "game"
    root.mkdir()
    (root / "a.rar").write_bytes(b"a" * 1000)
    (root / "version.ini").write_text("1.0")
    cache = HashCache(tmp_path / "hashes")
    assert cache.stale_bytes("g", root) == 1003
    entries = cache.file_entries("g", root)
    assert cache.stale_bytes("g", root) == 0
    (root / "a.rar").write_bytes(b"b" * 1000)
    os.utime(root / "a.rar", ns=(1, 1))
    assert cache.stale_bytes("g", root) == 1000
    assert cache.file_entries("g", root) != entries


def test_remembered_hashes_are_served_without_reading(tmp_path: Path) -> None:
    root = tmp_path / "game"
    root.mkdir()
    (root / "a.rar").write_bytes(b"a" * 1000)
    verified = (FileEntry("a.rar", 1000, ("h" * 64,)),)
    cache = HashCache(tmp_path / "hashes")
    cache.remember("g", root, verified)
    assert cache.stale_bytes("g", root) == 0
    assert cache.file_entries("g", root) == verified


def test_hashing_stops_when_cancelled(tmp_path: Path) -> None:
    root = tmp_path / "game"
    root.mkdir()
    (root / "a.rar").write_bytes(b"a")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        HashCache(tmp_path / "hashes").file_entries("g", root, cancel)
    assert not (tmp_path / "hashes" / "g.json").exists()


def test_data_connections_are_capped_and_idle_ones_closed(tmp_path: Path) -> None:
    """A host that opens connection after connection gets refused ones, counted in
    one log line; an authorised connection that asks for nothing is closed; the
    freed slots serve an honest receiver."""
    root = tmp_path / "game"
    root.mkdir()
    (root / "a.rar").write_bytes(b"A" * 1000)
    lines: list[str] = []
    tally = RefusalTally(emit=lines.append)
    server = DataServer(
        lambda _g, _v: True,
        OutboundTransfers(),
        tally,
        ConnectionCaps(per_address=4, total=100),
        idle_timeout=0.5,
    )
    token = server.issue(Grant("peer", "g", "1", root, (FileEntry("a.rar", 1000, ("h" * 64,)),)))

    async def scenario() -> None:
        await server.start("127.0.0.1", 0)
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
        # The first four hold slots; the other eight are closed at once, unread.
        closed = 0
        for reader, _writer in conns[4:]:
            with contextlib.suppress(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
            closed += 1
        assert closed == 8
        assert tally.totals["data-too-many-from-address"] == 8
        assert len(lines) == 1, lines  # one line, not one per refusal
        # An authorised connection that goes quiet is closed after the idle timeout.
        reader, writer = conns[0]
        writer.write(encode_greeting(token))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        assert tally.totals["data-idle"] == 1
        # The slot it held serves an honest receiver.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_greeting(token) + encode_request(ChunkRequest(0, 0, 1000)))
        header = await asyncio.wait_for(reader.readexactly(REPLY.size), 10)
        assert decode_reply_header(header, 1000) == (OK, 1000)
        assert await reader.readexactly(1000) == b"A" * 1000
        for _r, w in [*conns, (reader, writer)]:
            w.close()
        await server.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_grant_is_bound_to_its_peer_address_and_connection(tmp_path: Path) -> None:
    """Tokens were bearer tokens: anyone who learnt one could use it from anywhere, and a
    revoked token kept being served while another peer held a grant for the game."""
    root = tmp_path / "game"
    root.mkdir()
    (root / "a.rar").write_bytes(b"A" * 1000)
    files = (FileEntry("a.rar", 1000, ("h" * 64,)),)
    tally = RefusalTally(emit=lambda _line: None)
    server = DataServer(lambda _g, _v: True, OutboundTransfers(), tally, ConnectionCaps(16, 100))
    connection_open = [True]
    mine = server.issue(
        Grant("peer", "g", "1", root, files, host="127.0.0.1", alive=lambda: connection_open[0])
    )
    elsewhere = server.issue(Grant("peer", "g", "1", root, files, host="10.9.9.9"))
    server.issue(Grant("other", "g", "1", root, files, host="127.0.0.1"))  # keeps "g" granted

    async def fetch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, int]:
        writer.write(encode_request(ChunkRequest(0, 0, 1000)))
        header = await asyncio.wait_for(reader.readexactly(REPLY.size), 10)
        status, length = REPLY.unpack(header)
        await reader.readexactly(length)
        return status, length

    async def scenario() -> None:
        await server.start("127.0.0.1", 0)
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        # From another address than the connection it was issued over: refused.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_greeting(elsewhere))
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        writer.close()
        assert tally.totals["data-token-from-another-address"] == 1
        # The right address: served; then the peer leaves mid-connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_greeting(mine))
        assert await fetch(reader, writer) == (OK, 1000)
        server.revoke_peer("peer")
        assert await asyncio.wait_for(reader.read(1), 10) == b"", "served after revocation"
        writer.close()
        # A grant whose QUIC connection closed is not honoured either.
        connection_open[0] = False
        late = server.issue(
            Grant("peer", "g", "1", root, files, host="127.0.0.1", alive=lambda: False)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_greeting(late))
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        writer.close()
        assert tally.totals["data-token-of-a-closed-connection"] == 1
        await server.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_crowds_holder_refuses_a_chunk_sent_elsewhere_for_longer() -> None:
    """Up to a mesh's worth of askers are neighbours of the one that got the chunk; a
    crowd beyond that is hops away from it, so the refusal lasts longer, within a cap."""
    assert sent_elsewhere(1) == sent_elsewhere(8) == SENT_ELSEWHERE
    assert SENT_ELSEWHERE < sent_elsewhere(16) < sent_elsewhere(24) <= SENT_ELSEWHERE_MAX
    assert sent_elsewhere(2000) == SENT_ELSEWHERE_MAX
