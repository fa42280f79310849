"""Which known peers to dial again, and when.

mDNS reports a peer once; after a dropped connection (a pulled cable, a laptop that
slept) nothing would ever connect the two daemons again. Every peer we have heard of
by mDNS, by a manual connect or by an incoming connection is redialled while it is
not connected, with a doubling delay so that a peer that is really gone costs one
attempt a minute. Sans-IO: the caller passes the clock and the connected set.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

FIRST_DELAY = 2.0
MAX_DELAY = 60.0


@dataclass
class _Known:
    host: str
    port: int
    next_at: float
    delay: float = 0.0
    attempts: int = 0
    connected: bool = False


@dataclass(frozen=True)
class Dial:
    peer_id: str
    host: str
    port: int
    attempt: int


class Redial:
    def __init__(self, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._known: dict[str, _Known] = {}

    def __len__(self) -> int:
        return len(self._known)

    def seen(self, peer_id: str, host: str, port: int, now: float, connected: bool = False) -> None:
        """A peer announced itself (or just connected): dial it at once unless connected.

        An announcement of a peer we cannot reach usually means it restarted, so the
        backoff starts over. A peer that connected is marked so at once: if it drops
        before the next `due`, it still gets the grace to withdraw.
        """
        known = self._known.get(peer_id)
        if known is None or (known.host, known.port) != (host, port):
            known = self._known[peer_id] = _Known(host, port, next_at=now)
        elif not known.connected:
            known.next_at = now
            known.delay = 0.0
        if connected:
            known.connected = True
            known.delay = 0.0
            known.attempts = 0

    def gone(self, peer_id: str) -> None:
        """The peer withdrew its announcement: stop dialling it."""
        self._known.pop(peer_id, None)

    def due(self, now: float, connected: Collection[str]) -> list[Dial]:
        """The peers to dial now; each one returned is not returned again before its delay."""
        dials = []
        for peer_id, known in self._known.items():
            if peer_id in connected:
                known.connected = True
                known.delay = 0.0
                known.attempts = 0
                continue
            if known.connected:
                # Just lost: give a peer that is shutting down the time to withdraw.
                known.connected = False
                known.delay = self.first_delay
                known.next_at = now + self.first_delay
                continue
            if now >= known.next_at:
                dials.append(Dial(peer_id, known.host, known.port, known.attempts))
                known.attempts += 1
                known.delay = min(max(known.delay * 2, self.first_delay), self.max_delay)
                known.next_at = now + known.delay
        return dials

    def next_wake(self, now: float) -> float:
        """Seconds until the next peer may be due (at most one second, to notice drops)."""
        waits = [k.next_at - now for k in self._known.values() if not k.connected]
        return max(0.0, min([1.0, *waits]))
