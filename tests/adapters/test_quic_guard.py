"""The guarded QUIC server on real loopback sockets: Retry first, then caps.

Clients come from addresses of their own (any 127.x address is this host's), as
many machines on a LAN would, or one machine forging its source address.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration

from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.net.quicserver import GuardedQuicServer, serve
from lanspreadd.net.transport import quic_configuration
from lanspreadd.protocol import ALPN
from tests.scenarios.hostile_flood import build_initials, open_quic
from tests.support import free_port

T = TypeVar("T")
REFUSED_AFTER = 2.0  # a refused Initial is dropped unanswered: the client gives up


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


class Server:
    def __init__(self, refusals: RefusalTally, port: int) -> None:
        self.refusals = refusals
        self.port = port
        self.refused = asyncio.Event()
        self.made: list[QuicConnectionProtocol] = []  # the server's ends, oldest first
        self.settled: set[QuicConnectionProtocol] = set()  # as if authenticated
        self.server: GuardedQuicServer

    def protocol(self, *args: Any, **kwargs: Any) -> QuicConnectionProtocol:
        protocol = QuicConnectionProtocol(*args, **kwargs)
        self.made.append(protocol)
        return protocol

    async def connect(self, source: str, timeout: float = 10.0) -> QuicConnectionProtocol | None:
        return await open_quic(source, "127.0.0.1", self.port, timeout)

    async def until_closed(self, *server_ends: QuicConnectionProtocol) -> None:
        """Wait for the server's ends; each gives its slot back as it ends."""
        await asyncio.gather(*(end.wait_closed() for end in server_ends))


@asynccontextmanager
async def guarded(tmp_path: Path, per_address: int = 32, total: int = 256) -> AsyncIterator[Server]:
    identity = load_or_create(tmp_path / "server", "server")
    s = Server(RefusalTally(emit=lambda line: s.refused.set()), free_port())
    s.server = await serve(
        "127.0.0.1",
        s.port,
        configuration=quic_configuration(identity, is_client=False),
        create_protocol=s.protocol,
        refusals=s.refusals,
        settled=s.settled.__contains__,
        caps=ConnectionCaps(per_address, total),
    )
    try:
        yield s
    finally:
        s.server.close()


async def close_all(protocols: list[QuicConnectionProtocol | None]) -> None:
    for protocol in protocols:
        if protocol is not None:
            protocol.close()
    await asyncio.gather(*(p.wait_closed() for p in protocols if p is not None))
    for protocol in protocols:
        if protocol is not None and protocol._transport is not None:
            protocol._transport.close()


@pytest.mark.slow
def test_connections_are_capped_per_address_and_in_total(tmp_path: Path) -> None:
    async def body() -> None:
        async with guarded(tmp_path, per_address=2, total=3) as s:
            first = [await s.connect("127.0.0.2"), await s.connect("127.0.0.2")]
            assert all(first)
            assert await s.connect("127.0.0.2", REFUSED_AFTER) is None
            assert s.refusals.totals["quic-too-many-from-address"] > 0
            other = await s.connect("127.0.0.3")
            assert other is not None
            s.settled.update(s.made)  # all authenticated: none is pushed out
            assert await s.connect("127.0.0.4", REFUSED_AFTER) is None
            assert s.refusals.totals["quic-too-many-connections"] > 0
            # A connection that ends gives its slot back.
            await close_all(first[:1])
            await s.until_closed(s.made[0])
            assert dict(s.server.caps.open) == {"127.0.0.2": 1, "127.0.0.3": 1}
            late = await s.connect("127.0.0.4")
            assert late is not None
            await close_all([*first[1:], other, late])
            await s.until_closed(*s.made)
            assert not s.server.caps.open

    run(body())


@pytest.mark.slow
def test_when_all_are_taken_the_oldest_unauthenticated_connection_makes_room(
    tmp_path: Path,
) -> None:
    """A host with many addresses holding half-open connections locks nobody out."""

    async def body() -> None:
        async with guarded(tmp_path, per_address=2, total=3) as s:
            held = [await s.connect(source) for source in ("127.0.0.2", "127.0.0.3", "127.0.0.3")]
            assert all(held)
            s.settled.add(s.made[0])  # the first one authenticated
            newcomer = await s.connect("127.0.0.4")
            assert newcomer is not None
            assert s.refusals.totals["quic-pushed-out"] == 1
            pushed_out = held[1]
            assert pushed_out is not None
            await pushed_out.wait_closed()
            assert held[0] is not None and not held[0]._closed.is_set()
            s.settled.update(s.made)
            assert await s.connect("127.0.0.5", REFUSED_AFTER) is None
            assert s.refusals.totals["quic-too-many-connections"] > 0
            await close_all([*held, newcomer])

    run(body())


def test_forged_initials_build_nothing_and_an_honest_client_still_connects(
    tmp_path: Path,
) -> None:
    """Initials from many forged sources get a Retry each and cost no connection."""
    packets = build_initials("127.0.0.1", 0, 600)

    async def body() -> None:
        async with guarded(tmp_path) as s:
            loop = asyncio.get_running_loop()
            # Forged sources: sockets that never answer the Retry sent to them.
            sockets = []
            for i in range(1, 51):
                endpoint = asyncio.DatagramProtocol
                sock, _ = await loop.create_datagram_endpoint(endpoint, (f"127.0.9.{i}", 0))
                sockets.append(sock)
            try:
                for i, packet in enumerate(packets[:300]):
                    sockets[i % len(sockets)].sendto(packet, ("127.0.0.1", s.port))
                honest = await s.connect("127.0.0.1")
                for i, packet in enumerate(packets[300:]):
                    sockets[i % len(sockets)].sendto(packet, ("127.0.0.1", s.port))
                assert honest is not None
                assert dict(s.server.caps.open) == {"127.0.0.1": 1}
                await close_all([honest])
            finally:
                for sock in sockets:
                    sock.close()
            assert not s.refusals.totals

    run(body())


def test_a_made_up_retry_token_is_refused_and_counted(tmp_path: Path) -> None:
    async def body() -> None:
        async with guarded(tmp_path) as s:
            config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], token=b"x" * 64)
            config.verify_mode = ssl.CERT_NONE
            try:
                async with asyncio.timeout(REFUSED_AFTER):
                    async with quic_connect("127.0.0.1", s.port, configuration=config):
                        raise AssertionError("connected with a made-up token")
            except (ConnectionError, TimeoutError):
                pass
            await s.refused.wait()
            assert s.refusals.totals["quic-bad-retry-token"] >= 1
            assert not s.server.caps.open

    run(body())
