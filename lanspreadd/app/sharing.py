"""Serving a game while we download it: the swarm's half that gives.

A download that shares registers its file list and the set of chunks it has verified;
peers downloading the same file list learn what we hold from a `ChunkMap` (when the
download starts and when a peer connects) and `ChunkDelta`s once a second, and
may then ask us for exactly those chunks over the data channel (`Grant.held`); a
verified `version.ini` is served from memory (it reaches the disk last, at the commit).
Nothing else of the game is served: not a chunk not yet verified, and nothing at all
once the download ends, before it commits and installs. A stream install's tree and
`local/` are never part of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lanspreadd.core.held import ChunkKey, ChunkNumbers
from lanspreadd.core.library import VERSION_INI
from lanspreadd.net.peers import PeerManager
from lanspreadd.protocol.messages import MAX_DELTA, ChunkDelta, ChunkMap, FileEntry, Message

DELTA_INTERVAL = 1.0  # newly verified chunks are told at most this often (QUIC messages cost)


@dataclass
class PartialShare:
    """One running download as peers see it (`net.dataserver.HeldChunks`)."""

    game_id: str
    version: str
    fingerprint: str
    root: Path
    chunk_size: int
    files: tuple[FileEntry, ...]
    verified: set[ChunkKey]  # the plan's own set: only chunks written after their check
    # version.ini, verified but kept in memory until the commit: served from there.
    sentinel: Callable[[], bytes | None] = lambda: None
    numbers: ChunkNumbers = field(init=False)
    active: bool = True
    _told: set[ChunkKey] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.numbers = ChunkNumbers(self.files)
        self._ini = next((i for i, f in enumerate(self.files) if f.path == VERSION_INI), -1)

    def serving(self) -> bool:
        return self.active

    def holds(self, file_index: int, offset: int, length: int) -> bool:
        first, last = offset // self.chunk_size, (offset + length - 1) // self.chunk_size
        return self.active and all(
            (file_index, ci) in self.verified for ci in range(first, last + 1)
        )

    def in_memory(self, file_index: int) -> bytes | None:
        """The bytes of a file not on disk yet (version.ini, written last), else None."""
        return self.sentinel() if file_index == self._ini else None

    @property
    def held_count(self) -> int:
        return len(self.verified)

    @property
    def chunk_count(self) -> int:
        """The chunks of the file list."""
        return self.numbers.count

    def chunk_map(self, to_all: bool = False) -> ChunkMap:
        """Every chunk held now; `to_all` when every peer gets it, so deltas start here."""
        held = set(self.verified)
        if to_all:
            self._told = held
        return ChunkMap(
            self.game_id,
            self.version,
            self.fingerprint,
            self.numbers.count,
            self.numbers.bits(held),
        )

    def deltas(self) -> list[ChunkDelta]:
        """The chunks verified since the last map or delta told to every peer."""
        new = self.verified - self._told
        numbers = self.numbers.numbers(new)
        self._told |= new
        return [
            ChunkDelta(self.game_id, self.fingerprint, tuple(numbers[i : i + MAX_DELTA]))
            for i in range(0, len(numbers), MAX_DELTA)
        ]


class Sharing:
    """The downloads served while they run, and the wake-ups of downloads that take
    from peers' (peer id, game id) held chunks."""

    def __init__(
        self, enabled: bool = True, changed: Callable[[str], None] = lambda _game_id: None
    ) -> None:
        self.enabled = enabled
        # What a game serves while downloading is part of its view: told when a share
        # starts, grows (with the deltas, once a second) and stops.
        self.changed = changed
        self.shares: dict[str, PartialShare] = {}
        self.send: Callable[[Message], None] = lambda _m: None
        self._watchers: dict[str, Callable[[], None]] = {}

    def attach(self, peers: PeerManager) -> None:
        """Tell our maps through `peers`, and hear theirs."""
        self.send = peers.send_to_all
        peers.hooks.chunk_maps = self.maps
        peers.hooks.held_changed = self.peer_held

    def start(self, share: PartialShare) -> None:
        if not self.enabled:
            return
        self.shares[share.game_id] = share
        self.send(share.chunk_map(to_all=True))
        self.changed(share.game_id)

    def stop(self, game_id: str) -> None:
        """The download ended: nothing of it is served any more, and peers are told."""
        share = self.shares.pop(game_id, None)
        if share is None:
            return
        share.active = False
        self.send(ChunkMap(game_id, share.version, share.fingerprint, 0, b""))
        self.changed(game_id)

    def tell(self, game_id: str) -> None:
        share = self.shares.get(game_id)
        deltas = share.deltas() if share is not None else []
        for delta in deltas:
            self.send(delta)
        if deltas:
            self.changed(game_id)

    def share(self, game_id: str, version: str) -> PartialShare | None:
        share = self.shares.get(game_id)
        return share if share is not None and share.version == version else None

    def maps(self) -> list[ChunkMap]:
        """What a newly connected peer is told."""
        return [share.chunk_map() for share in self.shares.values()]

    def watch(self, game_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` when a peer tells it holds more of `game_id`; returns the undo."""
        self._watchers[game_id] = wake
        return lambda: self._watchers.pop(game_id, None) and None

    def peer_held(self, _peer_id: str, game_id: str) -> None:
        wake = self._watchers.get(game_id)
        if wake is not None:
            wake()
