"""Which file list a download takes, and from whom: complete holders only.

Every peer holding the whole game is asked at once; lists that fail the checks are
left out; the organiser's pin, else a strict majority, decides. Peers still
downloading the game (partial holders) never vote: they join later, and only with
the list agreed here (`app.recruiter`).
"""

from __future__ import annotations

import asyncio
import logging

from lanspreadd.app.sources import PeerSource, Source, name_of
from lanspreadd.core.plan import agreed, validate_file_list
from lanspreadd.errors import InvalidArgument, NoSources
from lanspreadd.protocol.messages import FileList

log = logging.getLogger(__name__)

# In a bounded mesh a download may start before any holder is connected: the mesh
# dials one that a neighbour named (app.mesh). A handshake takes a second; a holder
# that a crowd keeps full turns newcomers away until the first of them finish and
# serve the game too, which in a 32-seat crowd on 10 MiB/s links takes about 20 s.
HOLDER_WAIT = 60.0
HOLDER_POLL = 0.25


async def file_lists(peers: PeerSource, game_id: str, version: str) -> dict[str, FileList]:
    """Every complete holder's file list that passes the checks, asked all at once."""
    candidates = peers.holding(game_id, version)
    waited = 0.0
    while not candidates:
        if waited >= HOLDER_WAIT:
            raise NoSources(f"no connected peer has {game_id} version {version}")
        await asyncio.sleep(HOLDER_POLL)
        waited += HOLDER_POLL
        candidates = peers.holding(game_id, version)
    results = await asyncio.gather(
        *(peers.request_file_list(p.peer_id, game_id, version) for p in candidates),
        return_exceptions=True,
    )
    lists: dict[str, FileList] = {}
    for peer, result in zip(candidates, results, strict=True):
        if not isinstance(result, FileList):
            log.warning("%s cannot serve %s: %s", peer.name, game_id, result)
            continue
        try:
            validate_file_list(result)
        except InvalidArgument as exc:
            log.warning("ignoring %s as a source: %s", peer.name, exc)
            continue
        lists[peer.peer_id] = result
    if not lists:
        raise NoSources(f"no peer could serve {game_id} version {version}")
    return lists


async def agree(
    peers: PeerSource, game_id: str, version: str, pin: str
) -> tuple[FileList, str, dict[str, Source]]:
    """The pinned file list, or else the majority's, its fingerprint, and the peers
    that sent it as sources."""
    lists = await file_lists(peers, game_id, version)
    fingerprint, agreeing = agreed(lists, pin, f"{game_id} {version}")
    why = "is not the organiser's pin" if pin else "disagrees with the majority"
    for peer_id in sorted(set(lists) - set(agreeing)):
        log.warning("%s: its file list for %s %s", name_of(peer_id, peers), game_id, why)
    sources: dict[str, Source] = {}
    for peer_id in agreeing:
        peer = peers.peers.get(peer_id)
        if peer is not None:
            sources[peer_id] = Source.of(peer, lists[peer_id].token)
    return lists[agreeing[0]], fingerprint, sources
