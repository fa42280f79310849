"""A byte rate shared by every transfer of one direction: a token bucket one request deep.

Pure bookkeeping on an injected clock; waiting is done by the limiter around it
(`net.ratelimit`). Each transfer reserves its bytes and may move them once the bytes
reserved before them are paid for at the rate, so over any stretch of time at most
rate x seconds + one request pass: the burst is one request (a chunk), and no credit
piles up while nothing moves. A new rate applies at once to what is still owed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Rates travel as D-Bus `t` and are kept in JSON; beyond a signed 64-bit integer some
# readers (and every sane use) give up.
MAX_RATE = (1 << 63) - 1


def check_rate(rate: int) -> str | None:
    """Why `rate` is no rate in bytes per second (0: unlimited), or None."""
    if rate < 0:
        return f"a rate cannot be negative ({rate})"
    if rate > MAX_RATE:
        return f"{rate} bytes per second is more than the largest rate, {MAX_RATE}"
    return None


class TokenBucket:
    """Bytes per second for all callers together, 0 unlimited; thread-safe, as the
    event loop and worker threads take from the same bucket."""

    def __init__(self, rate: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._rate = rate
        self._reserved = 0  # bytes reserved since the start
        self._paid = 0.0  # of those, paid for by `_stamp`
        self._stamp = clock()

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, rate: int) -> None:
        with self._lock:
            self._settle()
            self._rate = rate

    def _settle(self) -> None:
        now = self.clock()
        if self._rate <= 0:
            self._paid = float(self._reserved)
        else:
            paid = self._paid + (now - self._stamp) * self._rate
            self._paid = min(float(self._reserved), paid)
        self._stamp = now

    def reserve(self, size: int) -> int:
        """Reserve `size` bytes; returns their ticket: where they start in the queue."""
        with self._lock:
            self._settle()
            ticket = self._reserved
            self._reserved += size
            return ticket

    def wait_time(self, position: int) -> float:
        """Seconds, at the rate now, until every byte before `position` is paid for."""
        with self._lock:
            self._settle()
            owed = position - self._paid
            if self._rate <= 0 or owed < 1:
                return 0.0
            return owed / self._rate

    def refund(self, size: int) -> None:
        """Give back bytes reserved but never moved (their transfer was cancelled),
        so the transfers after them do not wait for them."""
        with self._lock:
            self._settle()
            self._paid = min(float(self._reserved), self._paid + size)

    def delay_for(self, size: int) -> float:
        """Reserve `size` bytes about to move; how long to wait before moving them."""
        return self.wait_time(self.reserve(size))
