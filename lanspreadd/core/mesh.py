"""The bounded mesh: how many peers to keep, whom to dial, whom to let go.

Every connection costs both ends something for as long as it lasts (liveness, every
announcement, every chunk map), so a full mesh costs each daemon one connection per
seat: 33 idle daemons on one machine spent 1.5 of its 2 cores on it. Each daemon
therefore dials peers only until it has `dial_target` connections and keeps at most
`max_peers` once nothing needs more; peers it did not dial fill the rest. A
download that needs a game no connected peer holds dials holders it learned of
(`exchange`, from the peers it has) beyond that, up to `hard_cap`, and so does a
daemon holding what many want accept them; `trim` lets the connections that serve
nothing go again, the oldest first, so the mesh keeps mixing.

Sans-IO: the caller passes the clock and what each connection is for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

# Chosen with bench/flashcrowd.py at 8 and 32 daemons: at 8 connections each, 32 idle
# daemons cost what 8 did; a swarm spreads through 4 neighbours as through 32.
MAX_PEERS = 8
HARD_CAP_FACTOR = 4  # connections a popular holder accepts while downloads need it
MIN_AGE = 30.0  # seconds a connection is kept whatever it serves: no churn at start-up
HOLDER_DIALS = 2  # holders of one needed game dialled at once
MAX_GAMES_PER_PEER = 16  # games remembered per peer learned by exchange


@dataclass(frozen=True)
class Link:
    """One connection as the mesh sees it."""

    peer_id: str
    since: float  # when it was established (the caller's clock)
    useful: bool  # it holds what a download of ours needs, or downloads what we hold


class MeshPolicy:
    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.max_peers = max_peers
        self._holds: dict[str, frozenset[str]] = {}  # peer -> games it serves or downloads

    @property
    def dial_target(self) -> int:
        """Connections we make ourselves before we stop dialling: half the cap, so that
        the peers who dial us fill the other half."""
        return max(1, (self.max_peers + 1) // 2)

    @property
    def hard_cap(self) -> int:
        return HARD_CAP_FACTOR * self.max_peers

    def room(self, connected: int, connecting: int) -> int:
        """New peers we may dial for the mesh itself (not for a holder)."""
        return max(0, self.dial_target - connected - connecting)

    def admit(self, connected: int) -> bool:
        """Whether a peer that dialled us is kept (we count it already)."""
        return connected <= self.hard_cap

    def heard(self, peer_id: str, games: Iterable[str]) -> None:
        """A peer's games, as a neighbour reported them (`PeerExchange`)."""
        held = frozenset(list(games)[:MAX_GAMES_PER_PEER])
        if held:
            self._holds[peer_id] = held
        else:
            self._holds.pop(peer_id, None)

    def forget(self, peer_ids: Iterable[str]) -> None:
        """Peers no longer known (gone from discovery, pushed out of the redial list)."""
        for peer_id in peer_ids:
            self._holds.pop(peer_id, None)

    def holders(self) -> dict[str, frozenset[str]]:
        """Every peer said to hold games, and which."""
        return dict(self._holds)

    def knows_holder(self, game_id: str) -> bool:
        """Whether a peer we are not (yet) connected to was said to hold `game_id`."""
        return any(game_id in games for games in self._holds.values())

    def holders_to_dial(
        self,
        needed: Iterable[str],
        connected_holders: Mapping[str, int],
        connected: int,
        connecting: int,
        skip: Collection[str] = (),
    ) -> set[str]:
        """Peers to dial because they hold a game a download needs that fewer than
        HOLDER_DIALS connected peers hold; none beyond the hard cap, none in `skip`
        (those connected already)."""
        chosen: set[str] = set()
        free = self.hard_cap - connected - connecting
        for game_id in sorted(needed):
            want = HOLDER_DIALS - connected_holders.get(game_id, 0)
            for peer_id, games in self._holds.items():
                if want <= 0 or free <= len(chosen):
                    break
                if game_id in games and peer_id not in chosen and peer_id not in skip:
                    chosen.add(peer_id)
                    want -= 1
        return chosen

    def trim(self, links: Iterable[Link], now: float, make_room: int = 0) -> list[str]:
        """Connections to close: beyond `max_peers`, those that serve nothing and are
        older than MIN_AGE, the oldest first; `make_room` more for holders a download
        needs (then their age does not matter)."""
        links = list(links)
        idle = sorted((link for link in links if not link.useful), key=lambda link: link.since)
        excess = max(0, len(links) - self.max_peers)
        closing = [link.peer_id for link in idle if now - link.since >= MIN_AGE][:excess]
        extra = [link.peer_id for link in idle if link.peer_id not in closing][:make_room]
        return closing + extra


def last_holders(holders: Collection[str]) -> Collection[str]:
    """The connected complete holders of a game we download, if so few (HOLDER_DIALS)
    that none may be let go for answering slowly: the holder a crowd waits on answers
    late for its own upload's queue, or its own busy CPU."""
    return holders if len(holders) <= HOLDER_DIALS else ()
