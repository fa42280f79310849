"""Made-up mDNS services on the LAN: real daemons, real zeroconf, the test's own bridge.

A hostile responder announces 200 lanspread services with made-up peer ids, all
pointing at one host:port where nothing answers (a UDP socket there counts what
reaches it). Unguarded, every daemon dialled every one of them for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.netns import Lan
from tests.scenarios.hostile_flood import HOSTILE, PER_DIAL, ask, finish, start_hostile
from tests.support import Daemon, wait_for

FAKES = 200
WINDOW = 20.0  # seconds: a dial's Initial and its retransmissions take 10
HOSTILE_HOST = 9  # an index lan_peer does not reach with two daemons


def names(peer: Daemon) -> set[str]:
    return {p["name"] for p in peer.ctl_json("peers")}


@pytest.mark.slow
def test_fake_services_cost_a_few_packets_and_honest_peers_still_meet(
    lan: Lan, lan_peer: Callable[..., Daemon]
) -> None:
    a, b = lan_peer("a"), lan_peer("b")
    ns, target = lan.add_host(HOSTILE_HOST)
    hostile = ["ip", "netns", "exec", ns, *HOSTILE]
    counter = start_hostile([*hostile, "count", target, "9"], "listening")
    try:
        fakes = start_hostile([*hostile, "mdns-fake", str(FAKES), target, "9", target], "announced")
        try:
            a.start()
            b.start()
            begun = time.monotonic()
            wait_for(lambda: names(a) == {"b"} and names(b) == {"a"}, 30, "a and b to meet")
            time.sleep(max(0.0, WINDOW - (time.monotonic() - begun)))
            count = ask(counter)
            # Each daemon dials the address twice in the window (again 10 s after the
            # first), whatever ids claim it.
            assert count <= 2 * 2 * PER_DIAL, count
            assert a.ctl_json("status")["refusals"].get("mdns-too-many-peers", 0) > 0
        finally:
            finish(fakes)
    finally:
        finish(counter)
