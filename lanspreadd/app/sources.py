"""What a download takes from the peer layer: who holds a game, and how to reach them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lanspreadd.net.peers import Peer
from lanspreadd.protocol.messages import FileList


class PeerSource(Protocol):
    """What a download needs of the peer layer (`PeerManager`): who holds the game now,
    the connected peers (with what they hold of games they download), and their file
    lists. Small, so a test can stand in for it."""

    @property
    def peers(self) -> Mapping[str, Peer]: ...
    def holding(self, game_id: str, version: str) -> list[Peer]: ...
    async def request_file_list(self, peer_id: str, game_id: str, version: str) -> FileList: ...


@dataclass
class Source:
    peer_id: str
    name: str
    host: str
    port: int
    token: bytes

    @classmethod
    def of(cls, peer: Peer, token: bytes) -> Source:
        """`peer` as a source, with the token its file list came with."""
        return cls(peer.peer_id, peer.name, peer.host, peer.data_port, token)


def name_of(peer_id: str, peers: PeerSource, sources: Mapping[str, Source] | None = None) -> str:
    """What the log calls a peer: its name while we know it, else its id's start."""
    known = (sources or {}).get(peer_id) or peers.peers.get(peer_id)
    return known.name if known is not None else peer_id[:8]


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; True if it was set. asyncio.timeout, not
    wait_for: on 3.11 wait_for swallows a cancel (a job's Cancel) that arrives in the
    step the event fires."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
            return True
    return False
