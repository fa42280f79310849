"""Counting what the daemon refuses, and logging it without flooding the log.

A hostile peer can make the daemon refuse thousands of connections a second.
A line per refusal would fill the bounded log, push out everything useful and
cost more than the refusal itself; silence would hide the attack. So each cause
is logged once when it first happens and then as one line per interval with a
count. Totals since start are kept for `lanspreadctl status`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

REPORT_INTERVAL = 60.0

log = logging.getLogger(__name__)


@dataclass
class _Window:
    ends: float
    unreported: int = 0
    example: str = ""


@dataclass
class RefusalTally:
    """Pure bookkeeping with an injected clock; `report_due` says when to `flush`."""

    interval: float = REPORT_INTERVAL
    clock: Callable[[], float] = time.monotonic
    emit: Callable[[str], None] = log.warning
    on_pending: Callable[[], None] = lambda: None
    totals: Counter[str] = field(default_factory=Counter)
    _windows: dict[str, _Window] = field(default_factory=dict)

    def note(self, cause: str, detail: str) -> None:
        """One refusal of `cause`; `detail` says what was refused, for the log."""
        self.totals[cause] += 1
        now = self.clock()
        window = self._windows.get(cause)
        if window is not None and now >= window.ends:
            sustained = window.unreported > 0
            if sustained:
                self._report(cause, window, now)
            else:
                del self._windows[cause]
                window = None
        if window is None:
            # The first of its cause for a while: said at once, with its details.
            self._windows[cause] = _Window(now + self.interval)
            self.emit(f"refused ({cause}): {detail}")
            return
        window.unreported += 1
        window.example = detail
        if window.unreported == 1:
            self.on_pending()

    def report_due(self) -> float | None:
        """When the next summary line is due, or None while nothing waits."""
        due = [w.ends for w in self._windows.values() if w.unreported]
        return min(due) if due else None

    def flush(self) -> None:
        """Log a summary for each cause whose interval is over; forget quiet causes."""
        now = self.clock()
        for cause, window in list(self._windows.items()):
            if now < window.ends:
                continue
            if window.unreported:
                self._report(cause, window, now)
            else:
                del self._windows[cause]

    def _report(self, cause: str, window: _Window, now: float) -> None:
        """One line for a whole interval; the next interval starts counting."""
        self.emit(
            f"refused ({cause}) {window.unreported} more time(s) in the last "
            f"{self.interval:g} s; the last: {window.example}"
        )
        window.unreported = 0
        window.ends = now + self.interval
