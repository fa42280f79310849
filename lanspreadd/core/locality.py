"""Which peers are near (behind our own switch), judged by round-trip time.

Seats share a switch 48 at a time, and the switches meet at a core over one 10 GbE
uplink each. A mesh of peers chosen at random sends nearly every chunk over those
uplinks: 48 seats then share ten seats' worth of link, and in `bench/partysim.py` 500
seats filled a 20 GB game in 5.1 times the ideal (2.0 with this module). A daemon
cannot see switches, but QUIC measures every connection's smoothed RTT, and a full
uplink queues: while the uplinks are busy, a peer behind another switch answers
milliseconds later than one behind ours (four full 10 GbE queues on the way there and
back); while they are idle the two differ by microseconds, less than the hosts' own
jitter, and then nothing needs sorting. So while it downloads, a daemon keeps the
peers that answer fastest and one that does not (chunks must still enter the switch),
dials a few others only to measure them (`Probing`), those named by its nearest
neighbours first (their neighbours are likely behind the same switch), and lets the
slow ones go.

Sans-IO: the caller passes the measurements and who is connected; what was measured
and who named whom is remembered for a bounded number of peers. A peer that names
many others gets them tried a few at a time, and only through the dial schedule.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import TypeVar

NEAR_MARGIN = 0.002  # seconds: a peer this much slower than our fastest is behind another switch
FAR_LINKS = 1  # slow peers kept all the same, so that chunks still enter our switch
MEMORY = 512  # peers whose RTT, or whose introducer, is remembered
REMEASURE = 60.0  # seconds before a peer is probed again: queues come and go
PROBES = 3  # peers dialled at once only to be measured
PROBE_AGAIN = 10.0  # seconds before a peer picked to probe may be picked again
SETTLE = 1.0  # seconds after its handshake a probe is judged: a few RTT samples
PROBE_BELOW = 0.75  # a download slower than this share of our link looks for nearer peers

V = TypeVar("V")


class Locality:
    def __init__(
        self, margin: float = NEAR_MARGIN, far_links: int = FAR_LINKS, memory: int = MEMORY
    ) -> None:
        if not margin > 0 or far_links < 0 or memory < 1:
            raise ValueError("margin must be positive, far_links not negative, memory at least 1")
        self.margin = margin
        self.far_links = far_links
        self.memory = memory
        self._rtt: dict[str, float] = {}  # last smoothed RTT measured, oldest first
        self._when: dict[str, float] = {}  # when it was measured
        self._via: dict[str, str] = {}  # the nearest peer that named each one
        self._floor = math.inf  # the fastest answer ever measured

    def measured(self, peer_id: str, rtt: float, now: float) -> None:
        """A connection's smoothed RTT (seconds) at `now`; anything but a finite positive
        time is not a measurement and is ignored."""
        if not (math.isfinite(rtt) and rtt > 0):
            return
        self._rtt.pop(peer_id, None)
        self._rtt[peer_id] = rtt
        self._when[peer_id] = now
        self._floor = min(self._floor, rtt)
        for gone in _bound(self._rtt, self.memory):
            del self._when[gone]

    def heard(self, peer_id: str, via: str) -> None:
        """`via`, a connected peer, named `peer_id` (`PeerExchange`)."""
        if peer_id == via:
            return
        known = self._via.get(peer_id)
        if known is None or self._rtt.get(via, math.inf) < self._rtt.get(known, math.inf):
            self._via.pop(peer_id, None)
            self._via[peer_id] = via
            _bound(self._via, self.memory)

    def estimate(self, peer_id: str) -> float | None:
        """Its own RTT if measured, else that of the peer that named it, else None."""
        rtt = self._rtt.get(peer_id)
        if rtt is not None:
            return rtt
        via = self._via.get(peer_id)
        return None if via is None else self._rtt.get(via)

    def near(self, peer_id: str) -> bool | None:
        """Whether a peer answered within `margin` of the fastest answer we ever had
        (None if not measured). Relative to the fastest ever, not to our fastest now:
        when every path we have crosses a full queue, none of our peers is near."""
        rtt = self._rtt.get(peer_id)
        return None if rtt is None else rtt <= self._floor + self.margin

    def likely_near(self, peer_id: str) -> bool:
        """Whether its estimate is within `margin` of the fastest answer we ever had."""
        rtt = self.estimate(peer_id)
        return rtt is not None and rtt <= self._floor + self.margin

    def replaces(self, peer_id: str, kept: Iterable[str]) -> str | None:
        """Which of the peers kept unconnected for dialling (a full schedule) a newcomer
        should push out, if any: the newcomer must be likely near, and the one it
        replaces one we know nothing of or one `margin` slower."""
        estimate = self.estimate(peer_id)
        if estimate is None or not self.likely_near(peer_id):
            return None
        for other in kept:
            rtt = self.estimate(other)
            if rtt is None or rtt > estimate + self.margin:
                return other
        return None

    def order(self, peer_ids: Iterable[str]) -> list[str]:
        """Peers to dial, likely near first (nearest first), then those we know nothing
        of, then the slow ones. Equals keep the order given (the caller's shuffle)."""
        border = self._floor + self.margin

        def key(peer_id: str) -> tuple[int, float]:
            rtt = self.estimate(peer_id)
            if rtt is None:
                return (1, 0.0)
            return (0, rtt) if rtt <= border else (2, rtt)

        return sorted(peer_ids, key=key)

    def probes(
        self, candidates: Iterable[str], connected: Collection[str], now: float
    ) -> list[str]:
        """Peers to dial only to measure them, likeliest near first (`order`): those not
        connected nor measured within REMEASURE."""
        stale = [
            p
            for p in candidates
            if p not in connected and now - self._when.get(p, -math.inf) >= REMEASURE
        ]
        return self.order(stale)

    def nearer(self, peer_id: str, connected: Collection[str], near_links: int) -> bool:
        """Whether a peer just measured belongs among our `near_links` fastest: at least
        `margin` faster than the slowest of those now, or there are fewer of them."""
        rtt = self._rtt.get(peer_id)
        if rtt is None:
            return False
        others = sorted(self._rtt[p] for p in connected if p != peer_id and p in self._rtt)
        if len(others) < near_links:
            return True
        return near_links > 0 and rtt + self.margin < others[near_links - 1]

    def searching(self, connected: Collection[str], near_links: int) -> bool:
        """Whether to look for nearer peers: fewer than `near_links` answer within
        `margin` of our fastest while some answer slower (we can tell near from far),
        or even our fastest answers `margin` slower than any peer ever did (every path
        we have crosses a full queue: all may be behind other switches)."""
        measured = sorted(self._rtt[p] for p in connected if p in self._rtt)
        if not measured:
            return False
        border = measured[0] + self.margin
        near = sum(rtt <= border for rtt in measured)
        if near < len(measured):
            return near < near_links
        return measured[0] > self._floor + self.margin

    def far(
        self,
        connected: Collection[str],
        keep: Collection[str] = (),
        dialled: Collection[str] | None = None,
    ) -> list[str]:
        """Connected peers to let go, slowest first: those more than `margin` slower than
        our fastest, but for the `far_links` fastest of them, never one in `keep`, and
        (given `dialled`) only peers we dialled. A far peer that dialled us judges the
        connection itself: we may be the one far peer it keeps, how chunks enter its
        switch. Were both ends to judge, a switch whose far connections were all let go
        at their other ends would fill from itself alone (in `bench/partysim.py`, one
        switch of 2,000 seats had half the game when the median seat had 94%)."""
        measured = sorted((self._rtt[p], p) for p in connected if p in self._rtt)
        if not measured:
            return []
        border = measured[0][0] + self.margin
        slow = [p for rtt, p in measured if rtt > border and p not in keep]
        ours = slow[self.far_links :][::-1]
        return ours if dialled is None else [p for p in ours if p in dialled]


def slow(rate: float, link: float | None) -> bool:
    """Whether a download at `rate` bytes/s is worth probing for nearer peers: slower
    than PROBE_BELOW of our link's `link` bytes/s. Not when the link's speed is unknown
    (loopback, Wi-Fi): there RTTs tell a busy host from an idle one, not switches."""
    return link is not None and rate < PROBE_BELOW * link


class Probing:
    """The rotation that finds the peers behind our own switch while a download runs:
    which peers to dial only to measure them, and whether to keep one once measured.

    Sans-IO, like `Locality`, which it asks: the caller says whom it dialled, when a
    probe connected and when one failed; `judge` then answers keep or let go."""

    def __init__(self, locality: Locality, probes: int = PROBES) -> None:
        self.locality = locality
        self.probes = probes
        self._probing: dict[str, float | None] = {}  # peer -> when it connected (None: dialling)
        self._tried: dict[str, float] = {}  # peer -> when last picked, oldest first

    def pick(
        self,
        candidates: Iterable[str],
        connected: Collection[str],
        free: int,
        now: float,
        near_links: int,
    ) -> list[str]:
        """Peers to dial to measure them, likeliest near first, while fewer than
        `near_links` connected peers are near (`Locality.searching`) and `free`
        connections are left under the hard cap. Picked ones are not picked again for
        PROBE_AGAIN, dialled or not (another is tried)."""
        want = min(self.probes - len(self._probing), free)
        if want <= 0 or not self.locality.searching(connected, near_links):
            return []
        fresh = [
            p
            for p in candidates
            if p not in self._probing and now - self._tried.get(p, -math.inf) >= PROBE_AGAIN
        ]
        chosen = self.locality.probes(fresh, connected, now)[:want]
        for peer_id in chosen:
            self._tried.pop(peer_id, None)
            self._tried[peer_id] = now
        _bound(self._tried, self.locality.memory)
        return chosen

    def dialling(self, peer_id: str) -> None:
        self._probing.setdefault(peer_id, None)

    def connected(self, peer_id: str, now: float) -> None:
        if peer_id in self._probing:
            self._probing[peer_id] = now

    def failed(self, peer_id: str) -> None:
        """The dial failed, the peer turned us away, or the connection closed."""
        self._probing.pop(peer_id, None)

    def is_probe(self, peer_id: str) -> bool:
        return peer_id in self._probing

    def due(self, now: float) -> list[str]:
        """Probes connected for SETTLE: to be judged."""
        return [p for p, at in self._probing.items() if at is not None and now - at >= SETTLE]

    def next_due(self, now: float) -> float | None:
        """Seconds until the next probe is due for judging, if one is connected."""
        waits = [max(0.0, at + SETTLE - now) for at in self._probing.values() if at is not None]
        return min(waits, default=None)

    def judge(self, peer_id: str, connected: Collection[str], max_peers: int) -> bool:
        """Whether to keep a probe: yes if the mesh has room, or if it belongs among our
        `max_peers - far_links` nearest. It is no longer a probe either way."""
        self._probing.pop(peer_id, None)
        if len(connected) <= max_peers:
            return True
        return self.locality.nearer(peer_id, connected, max_peers - self.locality.far_links)


def _bound(remembered: dict[str, V], size: int) -> list[str]:
    """Forget the oldest entries beyond `size`; returns them."""
    gone = []
    while len(remembered) > size:
        gone.append(next(iter(remembered)))
        del remembered[gone[-1]]
    return gone
