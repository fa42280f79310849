"""The peer table: QUIC server, outgoing connections, snapshots and requests.

PeerManager owns every connection and its timer task in one TaskGroup. It turns
session events into a table of authenticated peers and what games they serve,
and answers file-list requests through the `PeerHost` it is given; catalog
announcements and requests go to the `CatalogHost`, when it is given one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aioquic.quic.configuration import QuicConfiguration

from lanspreadd.core.announced import Announced, IsKnown
from lanspreadd.core.held import HeldMap
from lanspreadd.core.identity import Identity, verify_signature
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import LanspreadError, NotFound, PeerError
from lanspreadd.net.dataclient import CONNECT_TIMEOUT
from lanspreadd.net.quicserver import GuardedQuicServer, serve
from lanspreadd.net.requests import Requester
from lanspreadd.net.transport import PeerConnection, connect, outgoing_host, quic_configuration
from lanspreadd.protocol.messages import (
    CatalogAnnounce,
    CatalogDocument,
    CatalogRequest,
    ChunkDelta,
    ChunkMap,
    Delta,
    ErrorReply,
    FileList,
    FileListRequest,
    Message,
    PeerExchange,
    Snapshot,
    StreamInstallGrant,
    StreamInstallRequest,
)
from lanspreadd.protocol.session import Closed, Established, Event, LocalPeer, Received, Role

log = logging.getLogger(__name__)

GOODBYE_GRACE = 0.3


@dataclass
class Peer:
    peer_id: str
    name: str
    host: str
    data_port: int
    connection: PeerConnection
    outgoing: bool
    announced: Announced = field(default_factory=Announced)
    since: float = field(default_factory=time.time)
    catalog: CatalogAnnounce | None = None  # the catalog it said it uses, once it said
    # What it holds of games it is downloading (catalog games only): the swarm's maps.
    held: dict[str, HeldMap] = field(default_factory=dict)

    @property
    def games(self) -> dict[str, str]:
        """The games in our catalog this peer serves, by version."""
        return self.announced.known


@dataclass
class PeerHooks:
    """What the swarm and the mesh plug into the peer layer."""

    # The swarm (app.sharing): our maps for a new peer; a peer's map or delta came.
    chunk_maps: Callable[[], list[ChunkMap]] = list
    held_changed: Callable[[str, str], None] = lambda _peer, _game: None
    # The bounded mesh (app.mesh): whether a peer that dialled us is kept (counting it),
    # the peers we name to one we turn away, and a neighbour's exchange.
    admit: Callable[[int], bool] = lambda _count: True
    referral: Callable[[str], PeerExchange | None] = lambda _peer_id: None
    exchanged: Callable[[Peer, PeerExchange], None] = lambda _peer, _message: None

    def turned_away(self, conn: PeerConnection, peer_id: str, count: int) -> bool:
        """Whether a peer that dialled us, making `count`, is too many: then it learns
        whom else to try, and goes (its dialler backs off)."""
        if self.admit(count):
            return False
        referral = self.referral(peer_id)
        if referral is not None:
            conn.send_message(referral)
        conn.say_goodbye("too many peers connected")
        return True


class PeerHost(Protocol):
    """What the rest of the daemon provides to, and learns from, the peer layer."""

    def snapshot(self) -> dict[str, str]: ...
    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None: ...
    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList: ...
    async def stream_grant(
        self, peer: Peer, request: StreamInstallRequest
    ) -> StreamInstallGrant: ...


class CatalogHost(Protocol):
    """Who keeps our catalog: what we announce, what peers announce, what they ask for."""

    def announcement(self) -> CatalogAnnounce: ...
    def heard(self, peer: Peer) -> None: ...
    async def document(self, peer: Peer, request: CatalogRequest) -> CatalogDocument: ...


class PeerManager(Requester):
    def __init__(
        self,
        identity: Identity,
        name: str,
        host: str,
        port: int,
        owner: PeerHost,
        refusals: RefusalTally,
        known: IsKnown = lambda game_id: True,
        catalogs: CatalogHost | None = None,
    ):
        super().__init__()
        self.identity = identity
        self.catalogs = catalogs
        self.refusals = refusals
        self._known = known  # games in our catalog: others are capped (`Announced`)
        self.local = LocalPeer(
            identity.peer_id, name, port, identity.cert_der, identity.sign, verify_signature
        )
        self.host = host
        self.port = port
        # Where our QUIC dials and data channels leave from: the listen address, if specific.
        self.local_host = outgoing_host(host)
        self.owner = owner
        self.peers: dict[str, Peer] = {}
        self._connections: set[PeerConnection] = set()
        self._connecting: set[str] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._server: GuardedQuicServer | None = None
        self._last_snapshot: dict[str, str] = {}
        self.ready = asyncio.Event()
        self.hooks = PeerHooks()

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """The QUIC server and every connection; returns only when cancelled."""
        config = quic_configuration(self.identity, is_client=False)
        self._server = await serve(
            self.host,
            self.port,
            configuration=config,
            create_protocol=functools.partial(
                self._new_protocol, role=Role.SERVER, expected_peer_id=None
            ),
            refusals=self.refusals,
            settled=authenticated,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self.ready.clear()
            self._server.close()

    async def say_goodbye(self, reason: str) -> None:
        """Tell every peer we are leaving, and give the words a moment to leave."""
        connections = list(self._connections)
        for conn in connections:
            conn.say_goodbye(reason)
        if connections:
            await asyncio.sleep(GOODBYE_GRACE)

    def _new_protocol(
        self,
        *args: object,
        role: Role,
        expected_peer_id: str | None,
        established: asyncio.Future[str] | None = None,
        **kwargs: object,
    ) -> PeerConnection:
        conn = PeerConnection(
            *args,  # type: ignore[arg-type]
            local=self.local,
            role=role,
            sink=self._on_events,
            expected_peer_id=expected_peer_id,
            **kwargs,  # type: ignore[arg-type]
        )
        conn.established = established
        self._connections.add(conn)
        if self._tg is not None:
            self._tg.create_task(self._own(conn))
        return conn

    async def _own(self, conn: PeerConnection) -> None:
        try:
            await conn.run_timer()
        except Exception:
            log.exception("a peer connection's timer failed")
            conn.close()
        finally:
            self._connections.discard(conn)

    # ---- connecting ---------------------------------------------------------------------
    async def connect(self, host: str, port: int, expected_peer_id: str | None = None) -> str:
        """Connect to a peer by address and wait until it is authenticated."""
        if self._tg is None:
            raise PeerError("the peer service is not running")
        loop = asyncio.get_running_loop()
        established: asyncio.Future[str] = loop.create_future()
        task = self._tg.create_task(self._client(host, port, expected_peer_id, established))
        try:
            return await asyncio.wait_for(asyncio.shield(established), CONNECT_TIMEOUT)
        except TimeoutError:
            task.cancel()
            raise PeerError(f"no lanspread peer answered at {host}:{port}") from None

    async def _client(
        self, host: str, port: int, expected: str | None, established: asyncio.Future[str]
    ) -> None:
        key = f"{host}:{port}"
        self._connecting.add(key)
        try:
            await dial(
                host,
                port,
                self.local_host,
                quic_configuration(self.identity, is_client=True),
                functools.partial(
                    self._new_protocol,
                    role=Role.CLIENT,
                    expected_peer_id=expected,
                    established=established,
                ),
                established,
            )
        finally:
            self._connecting.discard(key)

    def holding(self, game_id: str, version: str) -> list[Peer]:
        """The connected peers that announce `game_id` at exactly `version`."""
        return [p for p in self.peers.values() if p.games.get(game_id) == version]

    def is_connected_or_connecting(self, peer_id: str, host: str, port: int) -> bool:
        return peer_id in self.peers or f"{host}:{port}" in self._connecting

    # ---- session events -----------------------------------------------------------------
    def _on_events(self, conn: PeerConnection, events: list[Event]) -> None:
        for event in events:
            try:
                if isinstance(event, Established):
                    self._on_established(conn, event)
                elif isinstance(event, Received):
                    self._on_message(conn, event.message)
                elif isinstance(event, Closed):
                    self._on_closed(conn, event)
            except Exception:
                # Our bug, triggered by one peer: that peer loses its connection,
                # the server and every other peer carry on.
                log.exception("handling %s from a peer failed", type(event).__name__)
                if not conn.session.closed:
                    conn.say_goodbye("internal error")

    def _peer_of(self, conn: PeerConnection) -> Peer | None:
        peer = self.peers.get(conn.session.peer.peer_id) if conn.session.peer else None
        return peer if peer is not None and peer.connection is conn else None

    def _on_established(self, conn: PeerConnection, event: Established) -> None:
        outgoing = conn.session.role is Role.CLIENT
        existing = self.peers.get(event.peer_id)
        if existing is not None:
            if not keep_new_connection(self.local.peer_id, event.peer_id, existing, outgoing):
                conn.say_goodbye("duplicate connection")
                return
            self.peers.pop(event.peer_id)
            existing.connection.say_goodbye("duplicate connection")
        if not outgoing and self.hooks.turned_away(conn, event.peer_id, len(self.peers) + 1):
            return
        peer = Peer(event.peer_id, event.name, conn.remote_host, event.data_port, conn, outgoing)
        self.peers[event.peer_id] = peer
        log.info("peer %s (%s) connected from %s", event.name, event.peer_id[:8], peer.host)
        conn.send_message(Snapshot(self.owner.snapshot()))
        for chunk_map in self.hooks.chunk_maps():
            conn.send_message(chunk_map)
        if self.catalogs is not None:
            conn.send_message(self.catalogs.announcement())
        if conn.established is not None and not conn.established.done():
            conn.established.set_result(event.peer_id)
        self.owner.peer_changed(event.peer_id, peer, "connected")

    def _on_message(self, conn: PeerConnection, message: Message) -> None:
        peer = self._peer_of(conn)
        if peer is None:
            return
        if isinstance(message, Snapshot | Delta):
            if take_announcement(peer, message, self._known, self.refusals):
                self.owner.peer_changed(peer.peer_id, peer, type(message).__name__.lower())
        elif isinstance(message, FileListRequest | StreamInstallRequest | CatalogRequest):
            if self._tg is not None:
                self._tg.create_task(
                    answer(self.owner, self.refusals, peer, message, self.catalogs)
                )
        elif isinstance(message, FileList | StreamInstallGrant | CatalogDocument | ErrorReply):
            self._requests.reply(peer.peer_id, peer.name, message)
        elif isinstance(message, CatalogAnnounce) and self.catalogs is not None:
            peer.catalog = message
            self.catalogs.heard(peer)
        elif isinstance(message, PeerExchange):
            self.hooks.exchanged(peer, message)
        elif (
            isinstance(message, ChunkMap | ChunkDelta)
            and self._known(message.game_id)
            and take_held(peer, message)
        ):
            self.hooks.held_changed(peer.peer_id, message.game_id)

    def _on_closed(self, conn: PeerConnection, event: Closed) -> None:
        peer = self._peer_of(conn)
        if peer is None:
            if not event.by_peer and conn.session.peer is None:
                # We refused it before it was a peer: a bad Hello or proof, a
                # wrong version. Counted, and logged once a minute at most.
                self.refusals.note("peer-handshake", f"{conn.remote_host}: {event.reason}")
            return
        del self.peers[peer.peer_id]
        self._requests.peer_left(peer.peer_id, f"{peer.name} left: {event.reason}")
        log.info("peer %s (%s) left: %s", peer.name, peer.peer_id[:8], event.reason)
        self.owner.peer_changed(peer.peer_id, None, event.reason)

    # ---- outgoing -----------------------------------------------------------------------
    def announce(self) -> None:
        """Send every peer what changed in our servable games since the last call."""
        current = self.owner.snapshot()
        changed = {g: v for g, v in current.items() if self._last_snapshot.get(g) != v}
        removed = tuple(g for g in self._last_snapshot if g not in current)
        self._last_snapshot = current
        if changed or removed:
            self.send_to_all(Delta(changed, removed))

    def send_to_all(self, message: Message) -> None:
        """Tell every connected peer the same thing (what we serve, the catalog we use)."""
        for peer in list(self.peers.values()):
            if not peer.connection.session.closed:
                peer.connection.send_message(message)

    def _connected(self, peer_id: str) -> tuple[str, Callable[[Message], None]]:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise PeerError(f"peer {peer_id[:8]} is not connected")
        return peer.name, peer.connection.send_message


async def dial(
    host: str,
    port: int,
    local_host: str,
    configuration: QuicConfiguration,
    create_protocol: Callable[..., PeerConnection],
    established: asyncio.Future[str],
) -> None:
    """One outgoing connection, for as long as it lasts; `established` learns how the
    handshake went (the peer id, or why not)."""
    try:
        async with connect(
            host,
            port,
            local_host=local_host,
            configuration=configuration,
            create_protocol=create_protocol,
        ) as conn:
            assert isinstance(conn, PeerConnection)
            conn.transmit()
            await conn.closed.wait()
            if not established.done():
                reason = conn.session.close_reason or "connection closed"
                established.set_exception(PeerError(f"{host}:{port}: {reason}"))
    except (ConnectionError, OSError) as exc:
        if not established.done():
            established.set_exception(PeerError(f"cannot connect to {host}:{port}: {exc}"))


async def answer(
    host: PeerHost,
    refusals: RefusalTally,
    peer: Peer,
    request: FileListRequest | StreamInstallRequest | CatalogRequest,
    catalogs: CatalogHost | None = None,
) -> None:
    """Answer one peer's request, always: a failure is a named ErrorReply."""
    try:
        if isinstance(request, FileListRequest):
            reply: Message = await host.file_list(peer, request)
        elif isinstance(request, StreamInstallRequest):
            reply = await host.stream_grant(peer, request)
        elif catalogs is None:
            raise NotFound("this peer keeps no signed catalog")
        else:
            reply = await catalogs.document(peer, request)
    except LanspreadError as exc:
        reply = ErrorReply(request.request_id, exc.name, str(exc))
    except Exception as exc:
        # One request failed (out of descriptors, a file that vanished, our bug):
        # the asking peer gets a named answer; the server keeps serving.
        refusals.note(
            f"request-failed-{type(exc).__name__}",
            f"answering {peer.name}'s {type(request).__name__}: {exc}",
        )
        reply = ErrorReply(request.request_id, "InternalError", f"could not answer: {exc}")
    if not peer.connection.session.closed:
        peer.connection.send_message(reply)


def authenticated(conn: object) -> bool:
    """A connection whose peer proved its identity: never pushed out for a newcomer."""
    return isinstance(conn, PeerConnection) and conn.session.peer is not None


def take_held(peer: Peer, message: ChunkMap | ChunkDelta) -> bool:
    """Take in what a peer says it holds of a game it downloads; True if it holds more,
    or withdrew its map. A delta for a map we do not have (another file list, or none)
    is ignored."""
    if isinstance(message, ChunkMap):
        old = peer.held.pop(message.game_id, None)
        if not message.chunks:
            return old is not None
        new = HeldMap(message.version, message.fingerprint, message.chunks, message.bits)
        peer.held[message.game_id] = old.replaced_by(new) if old is not None else new
        return True
    held = peer.held.get(message.game_id)
    return held is not None and held.fingerprint == message.fingerprint and held.add(message.added)


def take_announcement(
    peer: Peer, message: Snapshot | Delta, known: IsKnown, refusals: RefusalTally
) -> bool:
    """Take in a peer's Snapshot or Delta; True when a game of our catalog changed.

    Only such a change is passed on: a flood of games we do not know costs its
    parsing and no more, and those beyond the few kept are counted as refused.
    """
    if isinstance(message, Snapshot):
        ignored = peer.announced.replace(message.games, known)
    else:
        ignored = peer.announced.apply(message.changed, message.removed, known)
    if ignored:
        refusals.note(
            "peer-unknown-games",
            f"{peer.name} ({peer.peer_id[:8]}) announced {ignored} game(s) not in our "
            f"catalog beyond the {peer.announced.cap} kept",
        )
    return bool(peer.announced.changed)


def keep_new_connection(local_id: str, peer_id: str, existing: Peer, outgoing: bool) -> bool:
    """Which of two connections to the same peer survives, the same on both sides.

    Same direction: the peer restarted and the old session is stale. Opposite
    directions: both sides keep the connection opened by the smaller peer id, so a
    simultaneous connect settles on the same one.
    """
    return existing.outgoing == outgoing or (local_id < peer_id) == outgoing
