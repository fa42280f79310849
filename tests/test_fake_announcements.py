"""Made-up mDNS services on the LAN: real daemons, real zeroconf on loopback.

A hostile responder announces 200 lanspread services with made-up peer ids, all
pointing at one host:port where nothing answers (a UDP socket here that counts what
reaches it). Unguarded, every daemon dialled every one of them for ever.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.support import Daemon, free_port, wait_for

FAKES = 200
WINDOW = 20.0  # seconds: a dial's Initial and its retransmissions take 10
PER_DIAL = 8  # an Initial and its retransmissions until the dial gives up
HOSTILE = [sys.executable, "-m", "tests.scenarios.hostile_flood"]


def names(peer: Daemon) -> set[str]:
    return {p["name"] for p in peer.ctl_json("peers")}


def received(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


@pytest.mark.slow
def test_fake_services_cost_a_few_packets_and_honest_peers_still_meet(
    make_peer: Callable[..., Daemon],
) -> None:
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", free_port()))
    target.setblocking(False)
    port = str(target.getsockname()[1])
    fakes = subprocess.Popen(
        [*HOSTILE, "mdns-fake", str(FAKES), "127.0.0.1", port, "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fakes.stdout is not None
        assert fakes.stdout.readline().strip() == f"announced {FAKES}"
        # Named for this run: other daemons on this host may answer on loopback mDNS.
        tag = secrets.token_hex(3)
        a, b = make_peer(f"a-{tag}", mdns=True), make_peer(f"b-{tag}", mdns=True)
        a.start()
        b.start()
        started = time.monotonic()
        wait_for(lambda: b.name in names(a) and a.name in names(b), 30, "a and b to meet")
        time.sleep(max(0.0, WINDOW - (time.monotonic() - started)))
        count = received(target)
        # Each daemon dials the address twice in the window (again 10 s after the
        # first), whatever ids claim it.
        assert count <= 2 * 2 * PER_DIAL, count
        assert a.ctl_json("status")["refusals"].get("mdns-too-many-peers", 0) > 0
    finally:
        if fakes.stdin is not None:
            fakes.stdin.close()
        fakes.wait(10)
        if fakes.stdout is not None:
            fakes.stdout.close()
        target.close()
