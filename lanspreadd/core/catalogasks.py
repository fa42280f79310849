"""Which peer to ask for a newer signed catalog, and when: sans-IO, time passed in.

Every peer tells us its catalog's revision and signer. We ask for a document only when
its revision is newer than ours and a key we trust signed it (by fingerprint; the
document itself is verified when it comes). One ask at a time, at least `min_gap` apart,
the newest revision first. A peer whose answer failed (refused, or none in time) is never
asked for that same revision again; any failed peer (one that left too) waits longer
before its next ask: `backoff`, doubled with each failure in a row up to `max_backoff`.
A hostile peer that announces a new revision every second costs us less and less.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

MIN_GAP = 0.5
BACKOFF = 1.0
MAX_BACKOFF = 300.0
MAX_REMEMBERED = 1024  # peers whose failures we keep; the oldest are forgotten first


@dataclass(frozen=True)
class Offer:
    """A peer's word on its catalog."""

    peer_id: str
    revision: int
    signer: str  # key fingerprint; "" for an unsigned catalog


@dataclass
class _Failures:
    revision: int  # the revision it last failed to give us (-1: may be asked again)
    count: int  # failures in a row
    not_before: float


class CatalogAsks:
    def __init__(
        self,
        min_gap: float = MIN_GAP,
        backoff: float = BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        remembered: int = MAX_REMEMBERED,
    ) -> None:
        self.min_gap = min_gap
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.remembered = remembered
        self._failures: dict[str, _Failures] = {}
        self._last_ask: float | None = None

    def wanted(self, offers: Iterable[Offer], ours: int, trusted: Collection[str]) -> list[Offer]:
        """The offers worth asking for, best first: newest, then least failed."""
        found = [o for o in offers if o.revision > ours and o.signer in trusted]
        found = [o for o in found if not self._failed_before(o)]
        return sorted(found, key=lambda o: (-o.revision, self._count(o.peer_id), o.peer_id))

    def due(
        self, offers: Iterable[Offer], ours: int, trusted: Collection[str], now: float
    ) -> Offer | None:
        """The ask to make now, if any."""
        if self._last_ask is not None and now < self._last_ask + self.min_gap:
            return None
        ready = [o for o in self.wanted(offers, ours, trusted) if self._not_before(o) <= now]
        return ready[0] if ready else None

    def wake_at(
        self, offers: Iterable[Offer], ours: int, trusted: Collection[str], now: float
    ) -> float | None:
        """When `due` may next have an ask; None while nothing is worth asking for."""
        wanted = self.wanted(offers, ours, trusted)
        if not wanted:
            return None
        at = min(self._not_before(o) for o in wanted)
        if self._last_ask is not None:
            at = max(at, self._last_ask + self.min_gap)
        return max(at, now)

    def asked(self, now: float) -> None:
        self._last_ask = now

    def failed(self, offer: Offer, now: float, final: bool = True) -> None:
        """The ask came to nothing; `final`: never ask this peer for this revision again
        (False for a peer that left: it may come back with it)."""
        count = self._count(offer.peer_id) + 1
        wait = min(self.max_backoff, self.backoff * 2 ** (count - 1))
        self._failures.pop(offer.peer_id, None)  # re-inserted last: the newest failure
        revision = offer.revision if final else -1
        self._failures[offer.peer_id] = _Failures(revision, count, now + wait)
        while len(self._failures) > self.remembered:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, offer: Offer) -> None:
        self._failures.pop(offer.peer_id, None)

    def _count(self, peer_id: str) -> int:
        failures = self._failures.get(peer_id)
        return failures.count if failures is not None else 0

    def _failed_before(self, offer: Offer) -> bool:
        """This peer's last failure was this very revision: never asked twice in a row."""
        failures = self._failures.get(offer.peer_id)
        return failures is not None and failures.revision == offer.revision

    def _not_before(self, offer: Offer) -> float:
        failures = self._failures.get(offer.peer_id)
        return failures.not_before if failures is not None else 0.0
