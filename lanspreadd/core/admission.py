"""Caps on concurrent connections, per remote address and in total.

Without them one host on the LAN opens thousands of data connections, the
daemon runs out of descriptors, and the next honest request fails with EMFILE.
Pure bookkeeping: the server asks before it serves and tells when it is done.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PER_ADDRESS = "too-many-from-address"
TOTAL = "too-many-connections"


@dataclass
class ConnectionCaps:
    per_address: int
    total: int
    open: Counter[str] = field(default_factory=Counter)

    def admit(self, address: str) -> str | None:
        """Take a slot for `address`, or return the refusal cause and take nothing."""
        if self.open[address] >= self.per_address:
            return PER_ADDRESS
        if self.open.total() >= self.total:
            return TOTAL
        self.open[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
