"""Peers in separate network namespaces joined by a bridge: real mDNS and real links.

The test creates a bridge namespace and one namespace per peer with a veth into
the bridge, runs each daemon inside its namespace (its D-Bus socket is a path,
so lanspreadctl reaches it from here), and deletes every namespace by name.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest

from tests.support import Daemon, make_game, tree, wait_for
from tests.test_peers import GAME, MiB, downloads, game_entries


@pytest.mark.slow
def test_discovery_download_and_a_killed_source_across_namespaces(
    lan_peer: Callable[..., Daemon],
) -> None:
    slow = ("--upload-limit", str(8 * MiB))  # so the kill lands mid-download
    first, second = lan_peer("first", *slow), lan_peer("second", *slow)
    receiver = lan_peer("receiver")
    root = make_game(first.game_dir, GAME, "1.0", game_entries(64 * MiB))
    second_root = second.game_dir / GAME
    subprocess.run(["cp", "-a", str(root), str(second_root)], check=True)
    for peer in (first, second, receiver):
        peer.start()
    assert receiver.ctl("wait-peers", "2", "--timeout", "30").returncode == 0
    peers = {p["name"]: p for p in receiver.ctl_json("peers")}
    assert peers["first"]["address"] == first.listen
    assert peers["second"]["address"] == second.listen
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 2, 10, "two sources")

    receiver.ctl("download", "--no-wait", "--install", GAME)
    wait_for(lambda: first.ctl_json("show", GAME)["outbound_transfers"] > 0, 20, "transfers")
    first.stop(signal.SIGKILL)
    assert receiver.ctl_json("show", GAME)["operation"] == "download"
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 90, "the download")
    shown = receiver.ctl_json("show", GAME)
    assert shown["availability"] == "Ready"
    assert shown["installed"] is True
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    payload = tree(receiver.game_dir / GAME / "local")["data/payload.bin"]
    assert payload is not None
    assert len(payload) == 64 * MiB
    # The dead source leaves the receiver's table on our own liveness, not mDNS's.
    wait_for(
        lambda: "first" not in {p["name"] for p in receiver.ctl_json("peers")},
        15,
        "the killed source to be dropped",
    )
