"""Which known peers to dial again, and when.

mDNS reports a peer once; after a dropped connection (a pulled cable, a laptop that
slept) nothing would ever connect the two daemons again. Every peer we have heard of
by mDNS, by a manual connect or by an incoming connection is redialled while it is
not connected, with a doubling delay so that a peer that is really gone costs one
attempt a minute.

Anyone on the LAN can announce peers, though: 200 made-up services pointing at one
host:port made every daemon dial all of them, for ever, a packet source against a
chosen target. So the schedule belongs to the address, whatever ids claim it: an
address that never completed a handshake is tried once more 10 s later (a peer too
busy to answer the first time: 32 daemons starting on one 2-core machine), then a
minute later, then less and less often, down to once an hour, and an announcement
does not hurry it. Addresses
new to us are dialled at a bounded rate, and only so many unconnected peers are kept.
The rate was measured with 32 daemons on one 2-core machine: 8 at once and then 2 a
second meshed them 12.5 s after the last had started on a quiet machine (45-85 s
while other test suites loaded it too); 32 at once and 4 a second overloaded it,
handshakes timed out and the silent backoff held pairs apart for 189 s. Sans-IO: the
caller passes the clock and the connected set.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

FIRST_DELAY = 2.0  # an address that answered before and dropped
MAX_DELAY = 60.0
SILENT_RETRY = 10.0  # an address that never completed a handshake, tried again
SILENT_FIRST_DELAY = 60.0  # and after that
SILENT_MAX_DELAY = 3600.0
MAX_UNCONNECTED = 64
MAX_ADDRESSES = 1024  # the schedules remembered, busiest first: one per seat, and fakes
NEW_DIAL_BURST = 8.0
NEW_DIALS_PER_SECOND = 2.0

Address = tuple[str, int]


@dataclass
class _Known:
    host: str
    port: int
    connected: bool = False

    @property
    def address(self) -> Address:
        return self.host, self.port


@dataclass
class _Schedule:
    next_at: float
    delay: float = 0.0
    attempts: int = 0
    answered_by: str | None = None  # the last peer that completed a handshake here


@dataclass(frozen=True)
class Dial:
    peer_id: str
    host: str
    port: int
    attempt: int


class Redial:
    def __init__(
        self,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        silent_retry: float = SILENT_RETRY,
        silent_first_delay: float = SILENT_FIRST_DELAY,
        silent_max_delay: float = SILENT_MAX_DELAY,
        max_unconnected: int = MAX_UNCONNECTED,
        new_dials_per_second: float = NEW_DIALS_PER_SECOND,
        new_dial_burst: float = NEW_DIAL_BURST,
        rng: random.Random | None = None,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.silent_retry = silent_retry
        self.silent_first_delay = silent_first_delay
        self.silent_max_delay = silent_max_delay
        self.max_unconnected = max_unconnected
        self.new_dials_per_second = new_dials_per_second
        self.new_dial_burst = new_dial_burst
        self._known: dict[str, _Known] = {}
        self._schedules: dict[Address, _Schedule] = {}
        self._budget = new_dial_burst
        self._budget_at: float | None = None
        self._rng = rng or random.Random()  # noqa: S311 (dial order, not secrets)

    def __len__(self) -> int:
        return len(self._known)

    def seen(
        self, peer_id: str, host: str, port: int, now: float, connected: bool = False
    ) -> str | None:
        """A peer announced itself (or just connected): dial it soon unless connected.

        An announcement of a peer that answered at this address before usually means
        it restarted, so its backoff starts over; any other announcement waits for
        its address's turn. A peer that connected is marked so at once: if it drops
        before the next `due`, it still gets the grace to withdraw. Returns the peer
        that is not kept, if the cap on unconnected peers cost one: a silent one
        pushed out, or this one.
        """
        dropped = None
        known = self._known.get(peer_id)
        if known is None or known.address != (host, port):
            if not connected:
                dropped = self._make_room(peer_id)
                if dropped == peer_id:
                    return dropped
            known = self._known[peer_id] = _Known(host, port)
        schedule = self._schedule(known.address, now)
        if connected:
            known.connected = True
            self._answered(schedule, peer_id)
        elif not known.connected and schedule.answered_by == peer_id:
            schedule.next_at = now
            schedule.delay = 0.0
        return dropped

    def gone(self, peer_id: str) -> None:
        """The peer withdrew its announcement: stop dialling it."""
        self._known.pop(peer_id, None)

    def due(
        self,
        now: float,
        connected: Collection[str],
        room: int | None = None,
        prefer: Collection[str] = (),
        rank: Callable[[list[str]], list[str]] | None = None,
    ) -> list[Dial]:
        """The peers to dial now: one per address, none returned again before its delay.

        `room` bounds the dials (`core.mesh`: the bounded mesh), except for peers in
        `prefer` (holders of a game a download needs), which come first; the others
        are taken in a random order, so that daemons do not all dial the same few,
        then sorted by `rank` if given (`core.locality`: likely near first; equals keep
        the random order).
        A peer left out for want of room stays due; its schedule does not move.
        """
        self._refill(now)
        live = {k.address for peer_id, k in self._known.items() if peer_id in connected}
        eligible = []
        for peer_id, known in self._known.items():
            schedule = self._schedule(known.address, now)
            if peer_id in connected:
                known.connected = True
                self._answered(schedule, peer_id)
                continue
            if known.connected:
                # Just lost: give a peer that is shutting down the time to withdraw.
                known.connected = False
                schedule.delay = self.first_delay
                schedule.next_at = now + self.first_delay
                continue
            if known.address not in live and now >= schedule.next_at:
                eligible.append(peer_id)
        preferred = [p for p in eligible if p in prefer]
        others = [p for p in eligible if p not in prefer]
        self._rng.shuffle(others)
        if rank is not None:
            others = rank(others)
        dials = []
        for peer_id in preferred + others:
            if peer_id not in prefer and room is not None and room <= 0:
                break
            known = self._known[peer_id]
            schedule = self._schedule(known.address, now)
            if known.address in live:
                continue
            if schedule.answered_by is None:
                if self._budget < 1:
                    continue  # a new address: its turn comes with the budget
                self._budget -= 1
            dials.append(Dial(peer_id, known.host, known.port, schedule.attempts))
            live.add(known.address)  # one dial per address, whatever ids claim it
            schedule.attempts += 1
            schedule.delay = self._next_delay(schedule)
            schedule.next_at = now + schedule.delay
            if peer_id not in prefer and room is not None:
                room -= 1
        return dials

    def next_wake(self, now: float, room: int | None = None, prefer: Collection[str] = ()) -> float:
        """Seconds until the next peer may be due (at most one second, to notice drops);
        with no `room`, only the peers in `prefer` count."""
        waits = [1.0]
        for peer_id, known in self._known.items():
            schedule = self._schedules.get(known.address)
            if known.connected or schedule is None:
                continue
            if room is not None and room <= 0 and peer_id not in prefer:
                continue
            wait = schedule.next_at - now
            if schedule.answered_by is None and self._budget < 1:
                wait = max(wait, (1 - self._budget) / self.new_dials_per_second)
            waits.append(wait)
        return max(0.0, min(waits))

    def ready(self, peer_id: str, now: float) -> bool:
        """Whether a known, unconnected peer's address may be dialled now: a holder that
        never answers waits its turn, and another holder is tried meanwhile."""
        known = self._known.get(peer_id)
        if known is None or known.connected:
            return False
        schedule = self._schedules.get(known.address)
        return schedule is None or now >= schedule.next_at

    def unconnected(self) -> list[str]:
        """The peers kept for dialling that are not connected, first heard of first."""
        return [peer_id for peer_id, known in self._known.items() if not known.connected]

    def address(self, peer_id: str) -> Address | None:
        """Where a known peer said it listens."""
        known = self._known.get(peer_id)
        return known.address if known is not None else None

    def _next_delay(self, schedule: _Schedule) -> float:
        if schedule.answered_by is not None:
            return min(max(schedule.delay * 2, self.first_delay), self.max_delay)
        if schedule.attempts == 1:
            return self.silent_retry
        return min(max(schedule.delay * 2, self.silent_first_delay), self.silent_max_delay)

    def _answered(self, schedule: _Schedule, peer_id: str) -> None:
        schedule.answered_by = peer_id
        schedule.delay = 0.0
        schedule.attempts = 0

    def _make_room(self, peer_id: str) -> str | None:
        """Room for one more unconnected peer; the one left out, if any.

        Pushed out first: a peer whose address was dialled and never answered, then
        one claiming an address another peer claims too (one dial serves both), the
        oldest first. Otherwise the newcomer waits outside.
        """
        unconnected = [p for p, k in self._known.items() if not k.connected and p != peer_id]
        if len(unconnected) < self.max_unconnected:
            return None
        claims = Counter(self._known[p].address for p in unconnected)
        silent = (p for p in unconnected if self._silent(self._known[p].address))
        shared = (p for p in unconnected if claims[self._known[p].address] > 1)
        candidate = next(silent, None) or next(shared, None)
        if candidate is None:
            return peer_id
        del self._known[candidate]
        return candidate

    def _silent(self, address: Address) -> bool:
        schedule = self._schedules.get(address)
        return schedule is not None and schedule.attempts > 0 and schedule.answered_by is None

    def _schedule(self, address: Address, now: float) -> _Schedule:
        schedule = self._schedules.get(address)
        if schedule is None:
            schedule = self._schedules[address] = _Schedule(next_at=now)
            if len(self._schedules) > MAX_ADDRESSES:
                self._forget_one()
        return schedule

    def _forget_one(self) -> None:
        """Forget the oldest schedule no known peer uses (a fake's, most likely)."""
        in_use = {k.address for k in self._known.values()}
        for address in self._schedules:
            if address not in in_use:
                del self._schedules[address]
                return

    def _refill(self, now: float) -> None:
        if self._budget_at is not None:
            gained = (now - self._budget_at) * self.new_dials_per_second
            self._budget = min(self.new_dial_burst, self._budget + gained)
        self._budget_at = now
