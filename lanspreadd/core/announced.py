"""What peers announce: each peer's games, and who holds each catalog game.

A peer may announce any number of games (10,000 per frame, frame after frame).
Only games in our catalog matter now; a few hundred others are kept so that a
catalog reload finds the peers that already have a newly listed game, and the
rest are ignored and counted. Every update says which catalog games it touched,
so what follows (views, D-Bus) costs what changed, not games times peers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lanspreadd.core.catalog import Catalog

# Games outside our catalog kept per peer: enough for a catalog reload that lists
# a few hundred new games, small enough that a peer cannot make us hold its flood.
MAX_UNKNOWN_GAMES = 256

IsKnown = Callable[[str], bool]


@dataclass
class Announced:
    """One peer's announced games: those in our catalog, and a capped few others."""

    known: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    # Catalog games whose announced version changed since the owner last took them.
    changed: set[str] = field(default_factory=set)
    cap: int = MAX_UNKNOWN_GAMES

    def replace(self, games: Mapping[str, str], is_known: IsKnown) -> int:
        """A snapshot: the peer's whole table. Returns the unknown games ignored."""
        gone = [g for g in self.known if g not in games or not is_known(g)]
        for game_id in gone:
            del self.known[game_id]
        self.changed.update(gone)
        self.unknown.clear()
        return self.apply(games, (), is_known)

    def apply(self, changed: Mapping[str, str], removed: Iterable[str], is_known: IsKnown) -> int:
        """A delta. Returns how many unknown games were ignored over the cap."""
        for game_id in removed:
            if self.known.pop(game_id, None) is not None:
                self.changed.add(game_id)
            else:
                self.unknown.pop(game_id, None)
        ignored = 0
        for game_id, version in changed.items():
            if is_known(game_id):
                if self.known.get(game_id) != version:
                    self.known[game_id] = version
                    self.changed.add(game_id)
            elif game_id in self.unknown or len(self.unknown) < self.cap:
                self.unknown[game_id] = version
            else:
                ignored += 1
        return ignored

    def reclassify(self, is_known: IsKnown) -> None:
        """Our catalog changed: games move between known and unknown."""
        everything = {**self.unknown, **self.known}
        self.unknown.clear()
        self.replace(everything, is_known)

    def take_changed(self) -> set[str]:
        taken, self.changed = self.changed, set()
        return taken


class SourceIndex:
    """Which connected peers hold each catalog game at its catalog version."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}
        self._held: dict[str, set[str]] = {}

    def count(self, game_id: str) -> int:
        return len(self._holders.get(game_id, ()))

    def update(
        self, peer_id: str, games: Mapping[str, str], game_ids: Iterable[str], catalog: Catalog
    ) -> set[str]:
        """Check `game_ids` again for one peer; returns the games whose count changed."""
        held = self._held.setdefault(peer_id, set())
        moved = set()
        for game_id in game_ids:
            entry = catalog.get(game_id)
            holds = entry is not None and games.get(game_id) == entry.version
            if holds == (game_id in held):
                continue
            moved.add(game_id)
            holders = self._holders.setdefault(game_id, set())
            if holds:
                held.add(game_id)
                holders.add(peer_id)
            else:
                held.discard(game_id)
                holders.discard(peer_id)
                if not holders:
                    del self._holders[game_id]
        if not held:
            del self._held[peer_id]
        return moved

    def drop(self, peer_id: str) -> set[str]:
        """The peer left: the games it held."""
        held = self._held.pop(peer_id, set())
        for game_id in held:
            holders = self._holders[game_id]
            holders.discard(peer_id)
            if not holders:
                del self._holders[game_id]
        return held
