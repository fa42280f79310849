"""Refusals are counted exactly and logged at most once per cause per interval."""

from __future__ import annotations

from lanspreadd.core.admission import PER_ADDRESS, TOTAL, ConnectionCaps
from lanspreadd.core.refusals import RefusalTally


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tally() -> tuple[RefusalTally, Clock, list[str], list[int]]:
    clock = Clock()
    lines: list[str] = []
    woken: list[int] = []
    t = RefusalTally(
        interval=60, clock=clock, emit=lines.append, on_pending=lambda: woken.append(1)
    )
    return t, clock, lines, woken


def test_a_flood_is_one_line_per_interval_with_a_count() -> None:
    t, clock, lines, woken = tally()
    for i in range(2000):
        t.note("data-unknown-token", f"a data connection from 10.0.0.{i % 250}")
    assert t.totals["data-unknown-token"] == 2000
    assert len(lines) == 1 and "data-unknown-token" in lines[0]
    assert woken == [1]  # the reporter is woken once, not per refusal
    assert t.report_due() == 1060
    clock.now = 1059
    t.flush()
    assert len(lines) == 1
    clock.now = 1060
    t.flush()
    assert len(lines) == 2 and "1999 more time(s)" in lines[1]
    # The attack goes on: still one line a minute.
    for _ in range(500):
        t.note("data-unknown-token", "a data connection from 10.0.0.9")
    clock.now = 1120
    t.flush()
    assert len(lines) == 3 and "500 more" in lines[2]
    # It stops: the quiet window is forgotten and nothing more is said.
    clock.now = 1180
    t.flush()
    assert len(lines) == 3 and t.report_due() is None
    # Much later the next refusal is said at once again.
    clock.now = 5000
    t.note("data-unknown-token", "x")
    assert len(lines) == 4 and t.totals["data-unknown-token"] == 2501


def test_causes_are_counted_and_reported_apart() -> None:
    t, clock, lines, _ = tally()
    t.note("a", "1")
    t.note("b", "1")
    t.note("a", "2")
    assert len(lines) == 2 and dict(t.totals) == {"a": 2, "b": 1}
    clock.now += 61
    t.note("a", "3")  # the window ended with one unreported: summarised, then counted
    assert "(a) 1 more" in lines[2] and len(lines) == 3
    t.flush()
    assert len(lines) == 3  # b's window was quiet: nothing to say


def test_connection_caps_per_address_and_in_total() -> None:
    caps = ConnectionCaps(per_address=2, total=3)
    assert caps.admit("10.0.0.1") is None
    assert caps.admit("10.0.0.1") is None
    assert caps.admit("10.0.0.1") == PER_ADDRESS
    assert caps.admit("10.0.0.2") is None
    assert caps.admit("10.0.0.3") == TOTAL
    caps.release("10.0.0.1")
    assert caps.admit("10.0.0.3") is None
    for addr in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        caps.release(addr)
    assert caps.open.total() == 0 and not caps.open
