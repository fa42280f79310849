"""Peers in separate network namespaces joined by a bridge: real mDNS and real links.

The test creates a bridge namespace and one namespace per peer with a veth into
the bridge, runs each daemon inside its namespace (its D-Bus socket is a path,
so lanspreadctl reaches it from here), and deletes every namespace by name.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.netns import Lan, ip
from tests.support import Daemon, make_game, tree, wait_for
from tests.test_peers import GAME, MiB, connect, downloads, game_entries


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


@pytest.mark.slow
@pytest.mark.timeout(300)  # the trim waits 30 s, and the download is paced to outlast it
def test_a_downloader_lets_go_of_peers_behind_a_full_queue_and_keeps_the_near_ones(
    lan: Lan, lan_peer: Callable[..., Daemon]
) -> None:
    """Six holders; four send through an 8 Mbit/s egress that their uploads keep full
    (as behind a busy switch uplink), so QUIC reads their RTTs tens of milliseconds
    longer. A receiver with a cap of 2 peers, connected to all six while it downloads,
    lets the slow ones it dialled go beyond one and keeps the two near ones; the game
    arrives whole. The slow one that dialled the receiver is not let go: the far end
    judges (it may be the one far peer that feeds its switch). (Before locality, every
    holder served the download and none was let go.)"""
    # Rates that let 4 streams' 4 MiB chunks through well within the 30 s stall timeout.
    near = [lan_peer(f"near{i}", "--upload-limit", str(MiB)) for i in range(2)]
    far = [lan_peer(f"far{i}") for i in range(3)]
    dialler = lan_peer("dialler")  # far too, and it dials the receiver
    receiver = lan_peer("receiver", "--max-peers", "2", "--log-level", "debug")
    root = make_game(near[0].game_dir, GAME, "1.0", game_entries(320 * MiB))
    for holder in [*near[1:], *far, dialler]:
        subprocess.run(["cp", "-a", str(root), str(holder.game_dir / GAME)], check=True)
    for holder in (*far, dialler):
        assert holder.netns is not None
        lan.shape(holder.netns, "8mbit")
    for peer in (*near, *far, dialler, receiver):
        peer.start()
    for holder in (*near, *far):  # more than its cap: as when a crowd dialled it
        connect(receiver, holder)
    connect(dialler, receiver)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 6, 30, "the holders")

    receiver.ctl("download", "--no-wait", GAME)
    names = {p.name for p in far}

    def far_let_go() -> list[str]:
        lines = receiver.stderr().splitlines()
        return [line for line in lines if "go: the mesh is full" in line]

    # The trim comes 30 s after a connection is made (MeshPolicy.MIN_AGE).
    wait_for(lambda: len(far_let_go()) >= 2, 90, "two far holders let go")
    let_go = far_let_go()
    assert all(any(f"letting {name} " in line for name in names) for line in let_go), let_go
    assert not any(f"letting {p.name} " in line for p in near for line in let_go), let_go
    connected = {p["name"] for p in receiver.ctl_json("peers")}
    assert {p.name for p in near} | {dialler.name} <= connected, connected
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 120, "the download")
    assert not any(f"letting {dialler.name} " in line for line in far_let_go()), far_let_go()
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready", receiver.stderr()
    assert downloads(receiver.game_dir / GAME) == downloads(root)


def test_our_link_speed_is_read_from_the_interface_we_listen_on(lan: Lan) -> None:
    """A veth reports 10 Gbit/s; loopback reports nothing, nor does a namespace with
    only loopback: there a download never probes for nearer peers."""
    ns, address = lan.add_host(0)
    code = "import sys; from lanspreadd.net.linkspeed import link_speed as s; print(s(sys.argv[1]))"

    def speed_in(namespace: str, listen: str) -> str:
        run = ["ip", "netns", "exec", namespace, sys.executable, "-c", code, listen]
        return subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip()

    lonely = f"lslo-{lan.tag}"
    ip("netns", "add", lonely)
    lan.namespaces.append(lonely)  # deleted with the rest
    everywhere = "0.0.0.0"  # noqa: S104 - what --listen defaults to
    assert speed_in(ns, address) == str(10_000 * 125_000.0)
    assert speed_in(ns, everywhere) == str(10_000 * 125_000.0)
    assert speed_in(ns, "127.0.0.1") == "None"
    assert speed_in(lonely, everywhere) == "None"
