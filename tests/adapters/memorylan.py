"""PeerManagers on an in-memory LAN: real aioquic and sessions, datagrams in a dict.

Each peer's QUIC server is the `GuardedQuicServer` that `PeerManager.run` listens with
(Retry first, then caps), each dial a client `QuicConnection` (what `PeerManager.connect`
gets from aioquic's `connect`); only the sockets are gone. A datagram is handed to its
receiver on the loop's next turn, and a link between two hosts can be cut to make a
peer fall silent. The layer above the peer table, `PeerHost`, is `FakeHost`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aioquic.quic.connection import QuicConnection

from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import NotServable
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.net.quicserver import PER_ADDRESS, TOTAL, GuardedQuicServer
from lanspreadd.net.transport import PeerConnection, quic_configuration
from lanspreadd.protocol.messages import (
    FileEntry,
    FileList,
    FileListRequest,
    StreamInstallGrant,
    StreamInstallRequest,
)
from lanspreadd.protocol.session import Role

Address = tuple[str, int]
QUIC_PORT = 4433
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
FILES = (FileEntry("version.ini", 0, (EMPTY_SHA256,)),)
Answer = Callable[[Peer, FileListRequest], Awaitable[FileList]]


class MemoryTransport(asyncio.DatagramTransport):
    """One bound address on the in-memory network."""

    def __init__(self, net: MemoryNet, address: Address) -> None:
        super().__init__(extra={"sockname": address})
        self.net = net
        self.address = address
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self.net.deliver(bytes(data), self.address, addr)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self.net.unbind(self.address)

    def abort(self) -> None:
        self.close()


class MemoryNet:
    """Datagrams by address, delivered on the next loop turn; links may be cut."""

    def __init__(self) -> None:
        self._endpoints: dict[Address, asyncio.DatagramProtocol] = {}
        self._cut: set[frozenset[str]] = set()
        self._ports = itertools.count(50_000)

    def bind(self, address: Address, protocol: asyncio.DatagramProtocol) -> None:
        self._endpoints[address] = protocol
        protocol.connection_made(MemoryTransport(self, address))

    def unbind(self, address: Address) -> None:
        self._endpoints.pop(address, None)

    def ephemeral(self, host: str) -> Address:
        return host, next(self._ports)

    def cut(self, one: str, other: str) -> None:
        """Pull the cable between two hosts: every datagram between them is lost."""
        self._cut.add(frozenset((one, other)))

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        if frozenset((source[0], destination[0])) in self._cut:
            return
        endpoint = self._endpoints.get(destination)
        if endpoint is not None:
            asyncio.get_running_loop().call_soon(endpoint.datagram_received, data, source)


class FakeHost:
    """The layer above the peer table: what we serve, and what we learn of peers."""

    def __init__(self, games: dict[str, str]) -> None:
        self.games = dict(games)
        self.changes: list[tuple[str, bool, str]] = []  # (peer id, present, reason)
        self.asked: list[tuple[str, FileListRequest]] = []  # (asking peer id, request)
        self.answer: Answer = self.list_files
        self.release = asyncio.Event()  # ends every answer held by `hold`
        self._news = asyncio.Event()

    def snapshot(self) -> dict[str, str]:
        return dict(self.games)

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        self.changes.append((peer_id, peer is not None, reason))
        self._news.set()

    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList:
        self.asked.append((peer.peer_id, request))
        self._news.set()
        return await self.answer(peer, request)

    async def stream_grant(self, peer: Peer, request: StreamInstallRequest) -> StreamInstallGrant:
        raise NotServable("no stream installs here")

    async def list_files(self, peer: Peer, request: FileListRequest) -> FileList:
        return listing(request)

    async def hold(self, peer: Peer, request: FileListRequest) -> FileList:
        """An answer that takes until `release` (a slow disk, a game being hashed)."""
        await self.release.wait()
        return listing(request)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, re-checked whenever this host hears news."""
        while not condition():
            self._news.clear()
            await self._news.wait()


def listing(request: FileListRequest) -> FileList:
    token = request.game_id.encode().ljust(32, b".")
    return FileList(request.request_id, request.game_id, request.version, 1 << 16, FILES, token)


class LanPeer:
    def __init__(self, name: str, host: str, state: Path, games: dict[str, str]) -> None:
        self.name = name
        self.host = host
        self.owner = FakeHost(games)
        self.refusals = RefusalTally()
        identity = load_or_create(state / name, name)
        self.manager = PeerManager(identity, name, host, QUIC_PORT, self.owner, self.refusals)
        self.connections: list[PeerConnection] = []  # every end this peer ever had

    @property
    def id(self) -> str:
        return self.manager.identity.peer_id

    def entry(self, other: LanPeer) -> Peer:
        return self.manager.peers[other.id]

    def knows(self, other: LanPeer) -> bool:
        return other.id in self.manager.peers

    def protocol(self, *args: Any, **kwargs: Any) -> PeerConnection:
        # The factory PeerManager hands to aioquic; its connections are recorded here.
        conn = self.manager._new_protocol(*args, **kwargs)
        self.connections.append(conn)
        return conn


class MemoryLan:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.net = MemoryNet()
        self.peers: list[LanPeer] = []

    def peer(self, name: str, games: dict[str, str] | None = None) -> LanPeer:
        peer = LanPeer(name, f"192.0.2.{len(self.peers) + 1}", self.state, games or {})
        self.peers.append(peer)
        return peer

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryLan]:
        """Every peer serving; on the way out, every connection closed and its tasks done."""
        servers: list[GuardedQuicServer] = []
        async with asyncio.TaskGroup() as tg:
            for peer in self.peers:
                # What PeerManager.run does once its server is bound: own the
                # connections' tasks in one group.
                peer.manager._tg = tg
                # A daemon announces each game as it starts serving it (Host.preparer):
                # the table's last announcement is what it serves.
                peer.manager.announce()
                server = GuardedQuicServer(
                    configuration=quic_configuration(peer.manager.identity, is_client=False),
                    create_protocol=functools.partial(
                        peer.protocol, role=Role.SERVER, expected_peer_id=None
                    ),
                    caps=ConnectionCaps(PER_ADDRESS, TOTAL),
                    refusals=peer.refusals,
                )
                self.net.bind((peer.host, QUIC_PORT), server)
                servers.append(server)
            try:
                yield self
            finally:
                await self._close_all()
                for server in servers:
                    server.close()
                for peer in self.peers:
                    peer.manager._tg = None

    def dial(self, source: LanPeer, target: LanPeer, expected: str | None = None) -> PeerConnection:
        """Open a connection from `source` to `target` as PeerManager.connect does."""
        established: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        quic = QuicConnection(configuration=quic_configuration(source.manager.identity, True))
        conn = source.protocol(
            quic, role=Role.CLIENT, expected_peer_id=expected, established=established
        )
        self.net.bind(self.net.ephemeral(source.host), conn)
        conn.connect((target.host, QUIC_PORT))
        return conn

    async def connect(self, source: LanPeer, target: LanPeer) -> PeerConnection:
        """Dial and wait until both tables hold each other."""
        conn = self.dial(source, target)
        assert await settled(conn) == target.id
        await target.owner.until(lambda: target.knows(source))
        return conn

    def open_ends(self) -> list[PeerConnection]:
        return [c for peer in self.peers for c in peer.connections if not c.closed.is_set()]

    async def until_open(self, count: int) -> None:
        """Wait until only `count` connection ends are left open, woken by each close."""
        while len(ends := self.open_ends()) > count:
            waiters = [asyncio.ensure_future(c.closed.wait()) for c in ends]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _close_all(self) -> None:
        for peer in self.peers:
            peer.owner.release.set()
            for conn in peer.connections:
                if not conn.session.closed:
                    conn.say_goodbye("the test is over")
                elif not conn.closed.is_set():
                    conn.close()
        ends = [conn.closed.wait() for peer in self.peers for conn in peer.connections]
        await asyncio.wait_for(asyncio.gather(*ends), 10)


async def settled(conn: PeerConnection) -> str | None:
    """The peer id once a dialled connection is in its table; None if it closed first."""
    assert conn.established is not None
    closed: asyncio.Future[Any] = asyncio.ensure_future(conn.closed.wait())
    either: list[asyncio.Future[Any]] = [conn.established, closed]
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    return conn.established.result() if conn.established.done() else None
