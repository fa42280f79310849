"""The bounded mesh at work: whom we dial, whom we let go, whom we tell of whom.

Peers come from mDNS and from what connected peers tell (`PeerExchange`); the
address schedules of `core.redial` say when each may be dialled, and
`core.mesh.MeshPolicy` how many: a few for the mesh itself, more for the holders
of a game a download needs. Every few seconds connections that serve nothing
beyond the cap are let go, and each neighbour is told our other peers and what they
hold, when that changed since we last told it: an idle party sends nothing.

While a download runs, `core.locality` steers the mesh toward the peers behind our own
switch, judged by each connection's smoothed RTT: those are dialled first, a few
others are dialled only to be measured and kept if nearer, and peers behind other
switches beyond one are let go once the mesh is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection

from lanspreadd.core.locality import Locality, Probing, slow
from lanspreadd.core.mesh import Link, MeshPolicy, last_holders
from lanspreadd.core.redial import Dial, Redial
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import PeerError
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import (
    MAX_EXCHANGED,
    MAX_EXCHANGED_GAMES,
    ExchangedPeer,
    PeerExchange,
)

log = logging.getLogger(__name__)

TEND_INTERVAL = 5.0  # seconds between trims and exchanges


class Mesh:
    def __init__(
        self,
        peers: PeerManager,
        refusals: RefusalTally,
        max_peers: int,
        needed: Callable[[], Collection[str]],
        offered: Callable[[], Collection[str]],
        stopping: asyncio.Event,
        downloaded: Callable[[], int] = lambda: 0,
        link: float | None = None,
    ) -> None:
        self.peers = peers
        self.refusals = refusals
        self.policy = MeshPolicy(max_peers)
        self.redial = Redial()
        self.locality = Locality()
        self.probing = Probing(self.locality)
        self.downloaded = downloaded  # bytes our downloads received so far
        self.link = link  # our link's bytes/s (net.linkspeed), if known
        self._rate = (0.0, 0, time.monotonic())  # bytes/s over the last tend; bytes, when
        self.needed = needed  # games our downloads need
        self.offered = offered  # games we serve, whole or while downloading
        self._stopping = stopping
        self._wake = asyncio.Event()
        self._told: dict[str, frozenset[ExchangedPeer]] = {}  # last exchange, per peer
        self._dialling = 0  # our dials not yet answered
        peers.hooks.admit = self.policy.admit
        peers.hooks.referral = self.exchange_for
        peers.hooks.exchanged = self.exchanged

    # ---- learning of peers ----------------------------------------------------------------
    def found(self, peer_id: str, host: str, port: int) -> None:
        """mDNS, or a neighbour, proposes a peer, as anyone on the LAN may: dialled in its
        address's turn, if the mesh has room for it or a download needs what it holds."""
        if peer_id == self.peers.local.peer_id:
            return
        now = time.monotonic()
        dropped = self.redial.seen(peer_id, host, port, now)
        if dropped == peer_id:
            # A full schedule: a peer that looks nearer than one kept takes its place.
            worse = self.locality.replaces(peer_id, self.redial.unconnected())
            if worse is not None:
                self.gone(worse)
                dropped = self.redial.seen(peer_id, host, port, now)
        if dropped is not None:
            self.policy.forget([dropped])
            self.refusals.note(
                "mdns-too-many-peers",  # proposed by mDNS or by a neighbour
                f"{dropped[:8]}: {self.redial.max_unconnected} peers wait unconnected",
            )
        self._wake.set()

    def gone(self, peer_id: str) -> None:
        self.redial.gone(peer_id)
        self.policy.forget([peer_id])

    def exchanged(self, sender: Peer, message: PeerExchange) -> None:
        log.debug("%s named %d peers", sender.name, len(message.peers))
        for entry in message.peers:
            if entry.peer_id == sender.peer_id:
                continue
            if entry.peer_id not in self.peers.peers:
                self.locality.heard(entry.peer_id, sender.peer_id)
                self.found(entry.peer_id, entry.host, entry.port)
            if self.redial.address(entry.peer_id) is not None:
                # Kept for when we are no longer connected to it (trimmed, dropped).
                self.policy.heard(entry.peer_id, entry.games)

    def changed(self, peer: Peer, reason: str) -> None:
        """A connected peer came, or told what it serves."""
        if reason == "connected":
            # Incoming and manual peers are redialled too once the connection drops.
            now = time.monotonic()
            self.redial.seen(peer.peer_id, peer.host, peer.data_port, now, True)
            self.probing.connected(peer.peer_id, now)
        self.policy.heard(peer.peer_id, peer.games)
        self._wake.set()

    def left(self, peer_id: str) -> None:
        self._told.pop(peer_id, None)
        self.probing.failed(peer_id)
        self._wake.set()

    # ---- dialling -------------------------------------------------------------------------
    async def dial(self) -> None:
        """Dial what the policy allows, as the address schedules allow; dials owned here."""
        async with asyncio.TaskGroup() as tg:
            while True:
                now = time.monotonic()
                self._judge(now)
                room, prefer = self._room()
                probes = self._probes(now, len(prefer))
                connected = self.peers.peers.keys()
                rank = self.locality.order
                for dial in self.redial.due(now, connected, room, prefer | probes, rank):
                    busy = self.peers.is_connected_or_connecting
                    # A daemon saying goodbye must not dial the peers it just left.
                    if not self._stopping.is_set() and not busy(dial.peer_id, dial.host, dial.port):
                        if dial.peer_id in probes:
                            self.probing.dialling(dial.peer_id)
                        tg.create_task(self._connect_quietly(dial))
                self._wake.clear()
                wake = self.redial.next_wake(now, room, prefer | probes)
                judging = self.probing.next_due(now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake if judging is None else min(wake, judging)):
                        await self._wake.wait()

    def _room(self) -> tuple[int, set[str]]:
        """Dials the mesh itself may make, and the holders a download needs dialled;
        connections that serve nothing make way for those."""
        connected, connecting = len(self.peers.peers), self._dialling
        needed = set(self.needed())
        holders: Counter[str] = Counter()
        for peer in self.peers.peers.values():
            holders.update(needed & set(peer.games))
        now = time.monotonic()
        # Holders whose address is in backoff are passed over: a neighbour naming
        # made-up holders that never answer must not keep the real ones undialled.
        waiting = {p for p in self.policy.holders() if not self.redial.ready(p, now)}
        prefer = self.policy.holders_to_dial(
            needed, holders, connected, connecting, skip=waiting | self.peers.peers.keys()
        )
        if prefer:
            log.debug("dialling holders of %s: %s", sorted(needed), sorted(p[:8] for p in prefer))
        squeeze = connected + connecting + len(prefer) - self.policy.hard_cap
        if prefer and squeeze > 0:
            for peer_id in self.policy.trim(self._links(needed), time.time(), squeeze):
                self._disconnect(peer_id, "making room for a holder")
        return self.policy.room(connected, connecting), prefer

    def _probes(self, now: float, dialling_holders: int) -> set[str]:
        """While a download runs: peers to dial only to measure how near they are."""
        if not self.needed() or not slow(self._rate[0], self.link):
            return set()
        connected = self.peers.peers.keys()
        free = self.policy.hard_cap - len(connected) - self._dialling - dialling_holders
        near_links = self.policy.max_peers - self.locality.far_links
        # Holders are dialled for what they hold (holders_to_dial), not to be measured:
        # a crowd probing the one holder would fill its connections.
        holders = self.policy.holders()
        unconnected = [p for p in self.redial.unconnected() if p not in holders]
        return set(self.probing.pick(unconnected, connected, free, now, near_links))

    def _judge(self, now: float) -> None:
        """Probes connected for a while: kept if nearer than what we have, else let go
        and not dialled again (until announced again)."""
        for peer_id in self.probing.due(now):
            peer = self.peers.peers.get(peer_id)
            if peer is None:
                self.probing.failed(peer_id)
                continue
            self._measure(peer)
            if not self.probing.judge(peer_id, self.peers.peers.keys(), self.policy.max_peers):
                self._disconnect(peer_id, "a peer nearer to us was found")
                if peer_id not in self.policy.holders():
                    # Its place among the peers kept for dialling goes to another one:
                    # kept, measured-far peers fill it and the near ones go unheard.
                    self.gone(peer_id)

    def _measure(self, peer: Peer) -> None:
        rtt = peer.connection.smoothed_rtt
        if rtt is not None:
            self.locality.measured(peer.peer_id, rtt, time.monotonic())

    def _disconnect(self, peer_id: str, reason: str) -> None:
        peer = self.peers.peers.get(peer_id)
        if peer is not None and not peer.connection.session.closed:
            log.debug("letting %s (%s) go: %s", peer.name, peer_id[:8], reason)
            peer.connection.say_goodbye(reason)

    async def _connect_quietly(self, dial: Dial) -> None:
        self._dialling += 1
        try:
            await self.peers.connect(dial.host, dial.port, dial.peer_id)
        except PeerError as exc:
            self.probing.failed(dial.peer_id)
            # Said once per outage; the retries that follow are only worth a debug line.
            level = logging.INFO if dial.attempt == 0 else logging.DEBUG
            log.log(level, "peer %s not reachable, will retry: %s", dial.peer_id[:8], exc)
        finally:
            self._dialling -= 1
            self._wake.set()

    # ---- tending ----------------------------------------------------------------------------
    async def tend(self) -> None:
        """Every few seconds: let go of what serves nothing beyond the cap, tell
        neighbours what changed among our peers."""
        while True:
            await asyncio.sleep(TEND_INTERVAL)
            needed = set(self.needed())
            now, moved = time.monotonic(), self.downloaded()
            _, before, then = self._rate
            self._rate = ((moved - before) / max(now - then, 1e-3), moved, now)
            for connected in list(self.peers.peers.values()):
                self._measure(connected)
            for peer_id in self.policy.trim(self._links(needed), time.time()):
                self._disconnect(peer_id, "the mesh is full")
            for peer_id in list(self.peers.peers):
                peer = self.peers.peers.get(peer_id)
                message = self.exchange_for(peer_id)
                told = frozenset(message.peers) if message is not None else frozenset()
                if peer is None or message is None or self._told.get(peer_id) == told:
                    continue
                self._told[peer_id] = told
                peer.connection.send_message(message)

    def _links(self, needed: set[str]) -> list[Link]:
        """What the trim sees: a connection serves a download of either end; while we
        download, peers behind other switches beyond `Locality.far_links` serve
        nothing, if we dialled them (`Locality.far`). A complete holder keeps its far
        askers: what it sends crosses their uplinks, theirs to judge, and its upload is
        what a crowd waits on."""
        peers = self.peers.peers
        offered = set(self.offered())
        far: set[str] = set()
        if needed:
            whole = [p.peer_id for p in peers.values() if needed & set(p.games)]
            dialled = {p.peer_id for p in peers.values() if p.outgoing}
            far = set(self.locality.far(peers.keys(), last_holders(whole), dialled))
        return [
            Link(
                peer.peer_id,
                peer.since,
                (bool(needed & holds(peer)) or bool(offered & set(peer.held)))
                and peer.peer_id not in far,
            )
            for peer in peers.values()
        ]

    def exchange_for(self, peer_id: str) -> PeerExchange | None:
        """For `peer_id`: holders we know of first, connected or not (so that word of a
        holder spreads beyond its neighbours' neighbours), then our other peers; None if
        there is nobody to name."""
        entries = {
            p.peer_id: ExchangedPeer(p.peer_id, p.host, p.data_port, games_of(p))
            for p in self.peers.peers.values()
        }
        for holder, games in self.policy.holders().items():
            address = self.redial.address(holder)
            if holder not in entries and address is not None:
                named = tuple(sorted(games))[:MAX_EXCHANGED_GAMES]
                entries[holder] = ExchangedPeer(holder, *address, named)
        entries.pop(peer_id, None)
        entries.pop(self.peers.local.peer_id, None)
        ranked = sorted(entries.values(), key=lambda e: (not e.games, e.peer_id))
        return PeerExchange(tuple(ranked[:MAX_EXCHANGED])) if ranked else None


def games_of(peer: Peer) -> tuple[str, ...]:
    """What an exchange says `peer` holds: the games it serves whole. A download's file
    list is agreed among those; peers still downloading are found among our own."""
    return tuple(sorted(peer.games))[:MAX_EXCHANGED_GAMES]


def holds(peer: Peer) -> set[str]:
    """The games of our catalog a peer serves whole or is downloading: a connection to
    it is useful while we want one of those, or it wants what we offer."""
    return set(peer.games) | set(peer.held)
