"""Sources that come during a download: peers that now hold the whole game, and peers
downloading the same file list (the swarm), whose held chunks are kept in the plan.

At a party most players download the same game at about the same time. Each one that
finishes serves it at once, and each one still downloading serves the chunks it has
verified; the downloads still running pull from them rather than all from the first
source. Partial holders never count in the file-list vote: a peer is taken only if its
file list is the one the download agreed on (the majority's or the organiser's pin).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lanspreadd.app.sources import PeerSource, Source, woken
from lanspreadd.core.held import ChunkNumbers
from lanspreadd.core.plan import MAX_CORRUPT, DownloadPlan, fingerprint, validate_file_list
from lanspreadd.errors import InvalidArgument, PeerError
from lanspreadd.net.peers import Peer

log = logging.getLogger(__name__)

RECRUIT_INTERVAL = 1.0  # how often a running download looks for new sources
RECRUIT_RETRY = 30.0  # a peer whose file list did not fit is asked again after this


@dataclass
class Recruiter:
    peers: PeerSource
    game_id: str
    version: str
    fingerprint: str
    numbers: ChunkNumbers
    plan: DownloadPlan
    # Starts the workers of a new source: (source, partial).
    start_workers: Callable[[Source, bool], None]
    clock: Callable[[], float]
    settled: asyncio.Event
    sources: dict[str, Source] = field(default_factory=dict)
    _cursors: dict[str, tuple[int, int]] = field(default_factory=dict)  # generation, read

    def partial_holders(self) -> list[Peer]:
        """Connected peers downloading our file list of the game, by their maps."""
        return [
            peer
            for peer in self.peers.peers.values()
            if (held := peer.held.get(self.game_id)) is not None
            and held.version == self.version
            and held.fingerprint == self.fingerprint
        ]

    async def run(self) -> None:
        asked: dict[tuple[str, float, bool], float] = {}  # (peer, since, partial) -> retry at
        async with asyncio.TaskGroup() as joining:  # a slow peer does not hold up others
            while not self.plan.finished:
                now = self.clock()
                complete = self.peers.holding(self.game_id, self.version)
                whole = {p.peer_id for p in complete}
                found = [(p, False) for p in complete] + [
                    (p, True) for p in self.partial_holders() if p.peer_id not in whole
                ]
                for peer, partial in found:
                    key = (peer.peer_id, peer.since, partial)
                    if (
                        peer.peer_id in self.plan.sources
                        or self.plan.corrupt_count[peer.peer_id] >= MAX_CORRUPT
                        or asked.get(key, 0.0) > now
                    ):
                        continue
                    asked[key] = now + RECRUIT_RETRY
                    joining.create_task(self._join(peer, partial))
                if await woken(self.settled, RECRUIT_INTERVAL):
                    return

    def sync_held(self) -> list[str]:
        """Take in what partial sources said they hold since we last looked; returns
        those that hold more, or that withdrew their map.

        A withdrawn map means its download ended (finished, or given up), and its grant
        with it: the source is dropped, its idle workers woken to leave, and a peer
        that finished joins again as a complete source (`run`). Kept as a partial
        source holding what it held, it was asked for nothing more: at 32 receivers
        the last ones took 3 s each, one after the other, from the first source alone.
        """
        news = []
        for peer_id in list(self.plan.held):
            peer = self.peers.peers.get(peer_id)
            held = peer.held.get(self.game_id) if peer is not None else None
            if held is None or held.fingerprint != self.fingerprint:
                self.plan.source_lost(peer_id)
                self._cursors.pop(peer_id, None)
                news.append(peer_id)
                continue
            generation, read = self._cursors.get(peer_id, (held.generation, 0))
            if generation != held.generation:
                read = 0
            self._cursors[peer_id] = (held.generation, len(held.numbers))
            if read < len(held.numbers):
                self.plan.add_held(peer_id, self.numbers.keys_of(held.numbers[read:]))
                news.append(peer_id)
        return news

    async def _join(self, peer: Peer, partial: bool) -> None:
        source = await self._enlist(peer)
        plan = self.plan
        if source is None or plan.finished or peer.peer_id in plan.sources:
            return
        self.sources[peer.peer_id] = source
        if partial:
            plan.add_source(peer.peer_id, held=())
            self._cursors.pop(peer.peer_id, None)
            self.sync_held()
            log.info(
                "%s joins the download of %s with the chunks it holds", peer.name, self.game_id
            )
        else:
            plan.add_source(peer.peer_id)
            log.info("%s joins the download of %s as a source", peer.name, self.game_id)
        self.start_workers(source, partial)

    async def _enlist(self, peer: Peer) -> Source | None:
        try:
            listing = await self.peers.request_file_list(peer.peer_id, self.game_id, self.version)
            validate_file_list(listing)
        except (PeerError, InvalidArgument) as exc:
            log.info("%s cannot join the download of %s: %s", peer.name, self.game_id, exc)
            return None
        if fingerprint(listing) != self.fingerprint:
            log.warning("%s lists other files for %s; not used", peer.name, self.game_id)
            return None
        return Source.of(peer, listing.token)
