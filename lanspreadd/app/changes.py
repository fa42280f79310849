"""Game-table changes waiting to be told to D-Bus and to peers, a few times a second.

A peer can send thousands of deltas a second and every one of them used to
reach D-Bus as a signal carrying a whole table, and our peers as a delta: the
daemon stalled for seconds. Changes are marked here instead, and told at most
once per interval, each game, peer and announcement once with its state then.
The first change after a quiet interval is told at once (on the next turn of
the event loop), so a lone change is not delayed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FLUSH_INTERVAL = 0.25


@dataclass(frozen=True)
class Batch:
    games: frozenset[str]  # game views to tell again (or tell gone)
    peers: frozenset[str]  # peer objects to tell again (or tell gone)
    served: bool  # what we serve may have changed: announce to peers


@dataclass
class PendingChanges:
    """Pure bookkeeping with an injected clock; `due` says when to `take` a batch."""

    interval: float = FLUSH_INTERVAL
    clock: Callable[[], float] = time.monotonic
    on_pending: Callable[[], None] = lambda: None
    _games: set[str] = field(default_factory=set)
    _peers: set[str] = field(default_factory=set)
    _served: bool = False
    _last: float = -math.inf

    def game(self, game_id: str) -> None:
        self._mark()
        self._games.add(game_id)

    def games(self, game_ids: set[str]) -> None:
        if game_ids:
            self._mark()
            self._games.update(game_ids)

    def peer(self, peer_id: str) -> None:
        self._mark()
        self._peers.add(peer_id)

    def served(self) -> None:
        self._mark()
        self._served = True

    def told_game(self, game_id: str) -> None:
        """The game's view was told out of turn (a job began or ended): not again."""
        self._games.discard(game_id)

    def told_peer(self, peer_id: str) -> None:
        """The peer was told out of turn (it came or left): not again."""
        self._peers.discard(peer_id)

    def due(self) -> float | None:
        """When the next batch is due, or None while nothing waits."""
        if not self._pending():
            return None
        return max(self.clock(), self._last + self.interval)

    def take(self) -> Batch:
        batch = Batch(frozenset(self._games), frozenset(self._peers), self._served)
        self._games, self._peers, self._served = set(), set(), False
        self._last = self.clock()
        return batch

    def _pending(self) -> bool:
        return bool(self._games or self._peers or self._served)

    def _mark(self) -> None:
        if not self._pending():
            self.on_pending()
