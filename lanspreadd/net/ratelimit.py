"""The limiter of one direction: every data connection we serve (the upload limit), or
every download and stream install of this daemon (the download limit).

One `TokenBucket` shared by every transfer of that direction, on the event loop and in
worker threads alike. A change of rate reaches transfers that wait at once on the
loop, and within `RECHECK` in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

from lanspreadd.core.ratelimit import TokenBucket

RECHECK = 0.25  # how often a waiting thread looks at the rate again


class RateLimiter:
    """0 means unlimited."""

    def __init__(self, rate: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = TokenBucket(rate, clock)
        self._changed = asyncio.Event()
        self.moved = 0  # bytes let through so far: what the mesh reads our rate from

    @property
    def rate(self) -> int:
        return self.bucket.rate

    @rate.setter
    def rate(self, rate: int) -> None:
        """Takes effect for transfers already waiting (call it on the event loop)."""
        self.bucket.rate = rate
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def take(self, size: int) -> None:
        """Wait until `size` bytes may move now (before a chunk is requested or sent)."""
        ticket = self.bucket.reserve(size)
        try:
            while (wait := self.bucket.wait_time(ticket)) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._changed.wait()
        except asyncio.CancelledError:
            self.bucket.refund(size)
            raise
        self.moved += size

    def took(self, size: int, cancel: threading.Event) -> None:
        """`size` bytes have just moved (a worker thread's receive): wait until they
        are paid for, or until `cancel` is set."""
        ticket = self.bucket.reserve(size)
        self.moved += size
        while (wait := self.bucket.wait_time(ticket + size)) > 0:
            if cancel.wait(min(wait, RECHECK)):
                return
