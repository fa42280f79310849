"""The redial schedule, driven by a fake clock: no sockets, no sleeping."""

from __future__ import annotations

import itertools

from lanspreadd.core.redial import Dial, Redial

A = "a" * 64
B = "b" * 64


def fake(i: int) -> str:
    return f"{i:064x}"


def dialled(redial: Redial, now: float, connected: frozenset[str] = frozenset()) -> list[str]:
    return [d.peer_id for d in redial.due(now, connected)]


def answered_then_lost(redial: Redial, peer_id: str, host: str, port: int) -> None:
    """The peer connected at this address once and has just dropped (at time 0)."""
    redial.seen(peer_id, host, port, now=-10, connected=True)
    assert dialled(redial, -1, frozenset({peer_id})) == []


def dial_times(redial: Redial, until: float, step: float = 0.5) -> list[float]:
    times = []
    now = 0.0
    while now < until:
        if dialled(redial, now):
            times.append(now)
        now += step
    return times


def test_a_new_peer_is_dialled_at_once_and_not_twice() -> None:
    redial = Redial()
    assert redial.seen(A, "10.0.0.2", 7777, now=0) is None
    assert redial.due(0, frozenset()) == [Dial(A, "10.0.0.2", 7777, 0)]
    assert dialled(redial, 0.5) == []


def test_a_peer_that_answered_before_is_redialled_with_backoff_to_a_minute() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    answered_then_lost(redial, A, "10.0.0.2", 7777)
    times = dial_times(redial, 400)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 2  # the grace to withdraw
    assert gaps[:4] == [4, 8, 16, 32]
    assert set(gaps[4:]) == {60}


def test_an_address_that_never_answers_backs_off_to_once_an_hour() -> None:
    redial = Redial(silent_retry=10, silent_first_delay=60, silent_max_delay=3600)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    times = dial_times(redial, 6 * 3600, step=5)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0
    assert gaps[:7] == [10, 60, 120, 240, 480, 960, 1920]
    assert set(gaps[7:]) == {3600}
    assert len([t for t in times if t < 3600]) <= 8


def test_fake_announcements_do_not_multiply_dials_to_one_address() -> None:
    """200 made-up ids, all at one host:port that never answers, announced again and
    again: the address is dialled once, again 10 s later, then a minute later and so on."""
    redial = Redial()
    dials: list[tuple[float, Dial]] = []
    for now in range(0, 600):
        for i in range(200) if now % 5 == 0 else ():
            redial.seen(fake(i), "10.0.0.66", 9, now=now)
        dials += [(now, d) for d in redial.due(now, frozenset())]
    assert [t for t, _ in dials] == [0, 10, 70, 190, 430]


def test_an_announcement_restarts_the_backoff_only_for_the_peer_that_answered_there() -> None:
    redial = Redial(first_delay=2, max_delay=60)
    answered_then_lost(redial, A, "10.0.0.2", 7777)
    for now in range(0, 200):
        redial.due(now, frozenset())
    assert dialled(redial, 200.5) == []
    # Someone else claiming the address does not hurry it.
    redial.seen(B, "10.0.0.2", 7777, now=201)
    assert dialled(redial, 201) == []
    # The peer that answered there (restarted, most likely) does.
    redial.seen(A, "10.0.0.2", 7777, now=202)
    assert dialled(redial, 202) in ([A], [B])


def test_a_silent_address_is_not_hurried_by_announcements() -> None:
    redial = Redial(silent_retry=10, silent_first_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0)
    assert dialled(redial, 0) == [A]
    for now in [*range(1, 10), *range(11, 70)]:
        redial.seen(A, "10.0.0.2", 7777, now=now)
        assert dialled(redial, now) == [], now
        if now == 9:
            assert dialled(redial, 10) == [A]
    assert dialled(redial, 70) == [A]


def test_new_addresses_are_dialled_at_a_bounded_rate() -> None:
    redial = Redial(new_dials_per_second=2, new_dial_burst=8)
    for i in range(31):  # a 32-seat party: every other seat at once
        redial.seen(fake(i), f"10.0.1.{i + 1}", 7777, now=0)
    assert len(dialled(redial, 0)) == 8
    assert redial.next_wake(0) == 0.5  # when the budget has the next one
    counts = [len(dialled(redial, t / 2)) for t in range(1, 24)]  # the next 11.5 s
    assert sum(counts) == 23
    assert max(counts) == 1
    # Fakes, each at an address of its own, wait their turn in the same queue.
    for i in range(31, 95):
        redial.seen(fake(i), f"10.0.2.{i}", 7777, now=12)
    assert sum(len(dialled(redial, 12 + t / 2)) for t in range(1, 21)) <= 8 + 2 * 10


def test_unconnected_peers_are_capped_and_a_silent_one_makes_room() -> None:
    redial = Redial(max_unconnected=64, new_dial_burst=1000)
    for i in range(64):
        assert redial.seen(fake(i), f"10.0.2.{i}", 7777, now=0) is None
    # None dialled yet, each at an address of its own: the newcomer waits outside.
    assert redial.seen(A, "10.0.0.2", 7777, now=0) == A
    assert len(dialled(redial, 0)) == 64
    # Each of them was dialled and never answered: the newcomer replaces the oldest.
    assert redial.seen(A, "10.0.0.2", 7777, now=1) == fake(0)
    assert len(redial) == 64
    assert dialled(redial, 1) == [A]
    # Connected peers do not count against the cap.
    assert redial.seen(B, "10.0.0.3", 7777, now=2, connected=True) is None
    assert len(redial) == 65


def test_fakes_claiming_one_address_make_room_for_a_newcomer() -> None:
    redial = Redial(max_unconnected=64)
    for i in range(200):
        redial.seen(fake(i), "10.0.0.66", 9, now=0)
    assert len(redial) == 64
    assert redial.seen(A, "10.0.0.2", 7777, now=0) is not None
    assert sorted(d.host for d in redial.due(0, frozenset())) == ["10.0.0.2", "10.0.0.66"]


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


def test_nobody_else_is_dialled_at_a_connected_peers_address() -> None:
    redial = Redial()
    redial.seen(A, "10.0.0.2", 7777, now=0, connected=True)
    redial.seen(B, "10.0.0.2", 7777, now=0)
    for now in range(0, 1000, 7):
        assert dialled(redial, now, frozenset({A})) == []


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
    answered_then_lost(redial, B, "10.0.0.3", 7777)
    assert dialled(redial, 0) == [A]  # and B's grace starts
    assert redial.next_wake(1.5) == 0.5


def test_a_peer_that_drops_right_after_connecting_still_gets_the_grace() -> None:
    """It connected and left between two looks at the schedule (a daemon shutting down)."""
    redial = Redial(first_delay=2, max_delay=60)
    redial.seen(A, "10.0.0.2", 7777, now=0, connected=True)
    assert dialled(redial, 0.5) == []
    assert dialled(redial, 2.0) == []
    assert dialled(redial, 2.5) == [A]


def test_a_holder_in_backoff_is_not_ready_to_dial() -> None:
    """The mesh passes over holders whose address waits its turn (`Redial.ready`)."""
    redial = Redial(silent_retry=10)
    redial.seen("silent", "10.0.0.9", 41800, now=0)
    assert redial.ready("silent", 0)
    assert [d.peer_id for d in redial.due(0, set())] == ["silent"]
    assert not redial.ready("silent", 5)  # dialled, never answered: 10 s to wait
    assert redial.ready("silent", 10)
    redial.seen("up", "10.0.0.8", 41800, now=0, connected=True)
    assert not redial.ready("up", 0)  # connected already
    assert not redial.ready("unknown", 0)


def test_a_rank_orders_the_dials_after_the_shuffle_and_holders_still_come_first() -> None:
    """Locality's rank decides which of the due peers the mesh's room goes to."""
    redial = Redial(new_dial_burst=1000)
    for i in range(6):
        redial.seen(fake(i), f"10.0.2.{i}", 7777, now=0)
    near = [fake(4), fake(2)]

    def rank(peer_ids: list[str]) -> list[str]:
        return sorted(peer_ids, key=lambda p: p not in near)

    dials = [d.peer_id for d in redial.due(0, (), room=2, prefer={fake(5)}, rank=rank)]
    assert dials[0] == fake(5) and set(dials[1:]) == set(near)
    assert redial.unconnected() == [fake(i) for i in range(6)]
    redial.seen(fake(3), "10.0.2.3", 7777, now=1, connected=True)
    assert fake(3) not in redial.unconnected()
