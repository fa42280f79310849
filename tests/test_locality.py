"""Locality: which peers look behind our own switch, from the RTTs a daemon measures.

Figures are what bench/partysim.py's model reads while the uplinks are full: about
1-2.5 ms to a peer behind our switch, 3-5 ms to one behind another; about 0.3 ms to
either while the uplinks are idle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanspreadd.core.locality import (
    MEMORY,
    PROBE_AGAIN,
    PROBES,
    REMEASURE,
    SETTLE,
    Locality,
    Probing,
    slow,
)
from lanspreadd.core.mesh import last_holders

MS = 1e-3
NEAR = {"n1": 1.4 * MS, "n2": 1.6 * MS, "n3": 2.1 * MS, "n4": 2.4 * MS}
FAR = {"f1": 3.6 * MS, "f2": 4.2 * MS, "f3": 4.9 * MS}


def measured(rtts: dict[str, float], now: float = 0.0, margin: float = 2 * MS) -> Locality:
    locality = Locality(margin=margin, far_links=1)
    for peer_id, rtt in rtts.items():
        locality.measured(peer_id, rtt, now)
    return locality


def test_peers_behind_other_switches_are_let_go_but_the_nearest_of_them() -> None:
    locality = measured(NEAR | FAR)
    connected = set(NEAR) | set(FAR)
    # Slowest first; f1 stays so that chunks still enter our switch.
    assert locality.far(connected) == ["f3", "f2"]
    assert Locality(margin=2 * MS, far_links=0).far(set()) == []


def test_a_far_peer_that_dialled_us_is_its_own_to_let_go() -> None:
    """Both ends of a far connection would judge it; the one that dialled keeps its
    fastest far peer, and the other end must not undo that (a switch cut off)."""
    locality = measured(NEAR | FAR)
    connected = set(NEAR) | set(FAR)
    dialled = set(NEAR) | {"f2"}  # f3 dialled us; f1 is still the far peer we keep
    assert locality.far(connected, dialled=dialled) == ["f2"]
    # f1, our fastest far peer, dialled us: f2 and f3 are still judged beside it.
    assert locality.far(connected, dialled=set(NEAR) | {"f2", "f3"}) == ["f3", "f2"]
    assert locality.far(connected, dialled=set(NEAR)) == []


def test_the_last_holders_of_what_we_download_are_never_let_go_for_answering_slowly() -> None:
    """The holder a crowd waits on answers late for its own busy upload queue."""
    locality = measured(NEAR | FAR)
    connected = set(NEAR) | set(FAR)
    assert locality.far(connected, keep=last_holders(["f3", "n1"])) == ["f2"]
    # Holders enough that one going leaves others: the slow ones go like any peer.
    assert last_holders(["f3", "n1", "n2"]) == ()
    assert locality.far(connected, keep=last_holders(["f3", "n1", "n2"])) == ["f3", "f2"]


def test_nothing_is_let_go_while_the_uplinks_are_idle() -> None:
    """Idle, a peer behind the core is microseconds slower: within the hosts' jitter."""
    idle = {"a": 0.31 * MS, "b": 0.36 * MS, "c": 0.33 * MS, "d": 0.52 * MS}
    locality = measured(idle)
    assert locality.far(set(idle)) == []
    assert not locality.searching(set(idle), near_links=3)  # nothing to gain


def test_a_probe_is_kept_only_if_it_belongs_among_the_nearest() -> None:
    locality = measured(NEAR | FAR | {"probe-near": 1.5 * MS, "probe-far": 4.0 * MS})
    connected = set(NEAR) | set(FAR)
    # Seven nearest wanted: the slowest of those now is f2 (4.2 ms).
    assert locality.nearer("probe-near", connected | {"probe-near"}, near_links=7)
    assert not locality.nearer("probe-far", connected | {"probe-far"}, near_links=7)
    # With room among the nearest, any measured peer is worth keeping.
    assert locality.nearer("probe-far", {"n1", "probe-far"}, near_links=7)
    assert not locality.nearer("never-measured", connected, near_links=7)


def test_searching_until_enough_peers_are_near_or_while_every_path_is_queued() -> None:
    locality = measured(NEAR | FAR)
    # Four answer within the margin of the fastest, f1 beyond it: near is told from far.
    assert locality.searching(set(NEAR) | {"f1"}, near_links=5)
    assert not locality.searching(set(NEAR) | {"f1"}, near_links=4)
    # Only peers behind other switches: they look alike, but even the fastest answers
    # the margin slower than n1 once did, so the daemon keeps looking.
    assert locality.searching(set(FAR), near_links=2)
    # Only near ones, all alike and fast: nothing to look for.
    assert not locality.searching(set(NEAR), near_links=7)
    assert not locality.searching(set(), near_links=1)


def test_peers_named_by_a_near_neighbour_are_dialled_first_and_slow_ones_last() -> None:
    locality = measured({"n1": 1.4 * MS, "f1": 4.5 * MS})
    locality.heard("via-near", "n1")
    locality.heard("via-far", "f1")
    locality.measured("known-far", 5.0 * MS, 0.0)
    candidates = ["unknown", "known-far", "via-far", "via-near"]
    ordered = locality.order(candidates)
    assert ordered == ["via-near", "unknown", "via-far", "known-far"]
    assert locality.estimate("via-near") == 1.4 * MS
    assert locality.estimate("unknown") is None


def test_a_newcomer_likely_near_replaces_one_kept_that_is_not() -> None:
    """A full dial schedule: a peer named by a near neighbour pushes out one we know
    nothing of, or one the margin slower; never one as near as itself."""
    locality = measured({"n1": 1.4 * MS, "n2": 1.5 * MS, "f1": 4.5 * MS})
    locality.heard("via-near", "n1")
    locality.heard("via-far", "f1")
    assert locality.replaces("via-near", ["n2", "via-far"]) == "via-far"
    assert locality.replaces("via-near", ["n2", "stranger"]) == "stranger"
    assert locality.replaces("via-near", ["n2"]) is None
    assert locality.replaces("via-far", ["stranger"]) is None  # not likely near itself
    assert locality.replaces("stranger", ["via-far"]) is None  # nothing known of it
    # What we would say of our own peers.
    assert locality.near("n1") is True
    assert locality.near("f1") is False
    assert locality.near("stranger") is None


def test_the_nearest_introducer_is_kept() -> None:
    locality = measured({"n1": 1.4 * MS, "f1": 4.5 * MS})
    locality.heard("p", "f1")
    locality.heard("p", "n1")
    locality.heard("p", "f1")  # a slower one again does not replace it
    assert locality.estimate("p") == 1.4 * MS
    locality.heard("n1", "n1")  # a peer naming itself is not an introduction
    assert locality.estimate("n1") == 1.4 * MS


def test_probes_are_peers_not_connected_nor_measured_lately() -> None:
    locality = measured(NEAR, now=100.0)
    locality.heard("named", "n1")
    candidates = ["n1", "n2", "named", "stranger"]
    assert locality.probes(candidates, {"n1"}, now=100.0) == ["named", "stranger"]
    # Queues come and go: a peer measured long ago may be measured again.
    later = 100.0 + REMEASURE
    assert locality.probes(candidates, {"n1"}, now=later) == ["named", "n2", "stranger"]


def test_a_measurement_that_is_not_a_time_is_ignored() -> None:
    locality = measured({"n1": 1.4 * MS})
    for nonsense in (math.nan, math.inf, -1.0, 0.0):
        locality.measured("n1", nonsense, 0.0)
    assert locality.estimate("n1") == 1.4 * MS
    for bad in ({"margin": 0.0}, {"far_links": -1}, {"memory": 0}):
        with pytest.raises(ValueError, match="margin"):
            Locality(**bad)


def test_a_flood_of_named_peers_is_remembered_only_so_far() -> None:
    """A neighbour may name any number of peers: the oldest are forgotten."""
    locality = measured({"n1": 1.4 * MS})
    for i in range(3 * MEMORY):
        locality.heard(f"fake-{i}", "n1")
    assert locality.estimate("fake-0") is None
    assert locality.estimate(f"fake-{3 * MEMORY - 1}") == 1.4 * MS
    for i in range(MEMORY):
        locality.measured(f"seen-{i}", 2 * MS, 0.0)
    assert locality.estimate("n1") is None  # measured too long ago to be remembered
    assert locality.probes(["n1"], set(), now=0.0) == ["n1"]  # and so measured again


@given(
    st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0.1, 10.0), min_size=1, max_size=40),
    st.integers(0, 3),
)
def test_let_go_never_the_nearest_and_always_keeps_far_links(
    rtts_ms: dict[str, float], far_links: int
) -> None:
    locality = Locality(margin=1 * MS, far_links=far_links)
    for peer_id, rtt in rtts_ms.items():
        locality.measured(peer_id, rtt * MS, 0.0)
    going = locality.far(set(rtts_ms))
    fastest = min(rtts_ms.values())
    slow = [p for p, rtt in rtts_ms.items() if rtt * MS > fastest * MS + 1 * MS]
    assert set(going) <= set(slow)
    assert len(going) == max(0, len(slow) - far_links)
    assert [rtts_ms[p] for p in going] == sorted((rtts_ms[p] for p in going), reverse=True)


def test_probes_are_dialled_while_searching_a_few_at_a_time() -> None:
    """Connected to far peers only (every path queued): a few others are dialled to be
    measured, each not picked again for a while, within the connections left."""
    locality = measured(NEAR | FAR, now=0.0)  # n* once answered fast; now far ones only
    probing = Probing(locality)
    strangers = [f"s{i}" for i in range(10)]
    now = REMEASURE
    first = probing.pick(strangers, set(FAR), free=10, now=now, near_links=7)
    assert len(first) == PROBES
    for peer_id in first[:2]:
        probing.dialling(peer_id)
    # Two dialled: one more may be; the third picked but not dialled is not picked again.
    second = probing.pick(strangers, set(FAR), free=10, now=now, near_links=7)
    assert len(second) == 1 and not set(second) & set(first)
    assert probing.pick(strangers, set(FAR), free=0, now=now, near_links=7) == []
    probing.failed(first[0])  # the dial failed: its slot is free, the peer rests
    third = probing.pick(strangers, set(FAR), free=10, now=now, near_links=7)
    assert len(third) == 2 and first[0] not in third
    assert first[0] in probing.pick([first[0]], set(FAR), 10, now + PROBE_AGAIN, 7)
    # Enough near peers connected: nothing to look for.
    assert Probing(locality).pick(strangers, set(NEAR), 10, now, near_links=4) == []


def test_a_probe_is_judged_once_settled_and_kept_only_if_nearer() -> None:
    locality = measured(NEAR | FAR)
    probing = Probing(locality)
    for peer_id in ("p-near", "p-far"):
        probing.dialling(peer_id)
        probing.connected(peer_id, 10.0)
    assert probing.due(10.0 + SETTLE / 2) == []
    assert probing.next_due(10.0 + SETTLE / 2) == pytest.approx(SETTLE / 2)
    assert sorted(probing.due(10.0 + SETTLE)) == ["p-far", "p-near"]
    locality.measured("p-near", 1.5 * MS, 11.0)
    locality.measured("p-far", 4.0 * MS, 11.0)
    connected = set(NEAR) | set(FAR)  # 7, and the two probes: over a cap of 8
    # Seven nearest wanted (8 minus one far link): the slowest of those is f2.
    assert probing.judge("p-near", connected | {"p-near", "p-far"}, max_peers=8)
    assert not probing.judge("p-far", connected | {"p-near", "p-far"}, max_peers=8)
    assert not probing.is_probe("p-near") and probing.next_due(12.0) is None
    # With room in the mesh a probe stays whatever it measured.
    probing.dialling("p-slow")
    assert probing.judge("p-slow", {"n1", "p-slow"}, max_peers=8)


def test_only_a_download_well_below_a_known_link_speed_probes() -> None:
    gigabit = 125e6
    assert slow(0.5 * gigabit, gigabit)
    assert not slow(0.8 * gigabit, gigabit)
    assert not slow(0.0, None)  # loopback, Wi-Fi: RTTs there tell busy hosts, not switches
