"""The redial schedule, driven by a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import itertools

from lanspreadd.core.redial import Dial, Redial

A = "a" * 64


def dialled(redial: Redial, now: float, connected: frozenset[str] = frozenset()) -> list[str]:
    return [d.peer_id for d in redial.due(now, connected)]


def test_a_new_peer_is_dialled_at_once_and_not_twice() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    assert redial.due(0, frozenset()) == [Dial(A, "10.0.0.2", 7777, 0)]
    assert dialled(redial, 0.5) == []


def test_failed_attempts_back_off_to_the_cap() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    times = []
    now = 0.0
    while now < 400:
        if dialled(redial, now):
            times.append(now)
        now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [2, 4, 8, 16, 32]
    assert set(gaps[5:]) == {60}


def test_a_dropped_connection_is_redialled_after_a_grace() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    assert dialled(redial, 0) == [A]
    assert dialled(redial, 100, frozenset({A})) == []
    # The connection drops: a peer shutting down gets the grace to withdraw first.
    assert dialled(redial, 200) == []
    assert dialled(redial, 201) == []
    assert redial.due(202, frozenset()) == [Dial(A, "10.0.0.2", 7777, 0)]


def test_connected_peers_are_never_dialled() -> None:
    redial = Redial()
    redial.seen(A, "10.0.0.2", 7777, now=0)
    for now in range(0, 1000, 7):
        assert dialled(redial, now, frozenset({A})) == []


def test_an_announcement_restarts_the_backoff() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    for now in range(0, 200):
        redial.due(now, frozenset())
    assert dialled(redial, 200.5) == []
    redial.seen(A, "10.0.0.2", 7777, now=201)
    assert dialled(redial, 201) == [A]


def test_a_moved_peer_is_dialled_at_its_new_address() -> None:
    redial = Redial()
    redial.seen(A, "10.0.0.2", 7777, now=0)
    redial.due(0, frozenset())
    redial.seen(A, "10.0.0.9", 7777, now=1)
    assert redial.due(1, frozenset()) == [Dial(A, "10.0.0.9", 7777, 0)]


def test_a_withdrawn_peer_is_forgotten() -> None:
    redial = Redial()
    redial.seen(A, "10.0.0.2", 7777, now=0)
    redial.gone(A)
    assert len(redial) == 0
    assert dialled(redial, 0) == []
    redial.gone(A)


def test_next_wake_is_bounded_by_a_second_and_by_the_next_dial() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    assert redial.next_wake(0) == 1.0
    redial.seen(A, "10.0.0.2", 7777, now=0)
    assert redial.next_wake(0) == 0.0
    redial.due(0, frozenset())
    assert redial.next_wake(1.5) == 0.5


def test_a_peer_that_drops_right_after_connecting_still_gets_the_grace() -> None:
    """It connected and left between two looks at the schedule (a daemon shutting down)."""
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0, connected=True)
    assert dialled(redial, 0.5) == []
    assert dialled(redial, 2.0) == []
    assert dialled(redial, 2.5) == [A]
