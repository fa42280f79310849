"""Peers in separate network namespaces joined by a bridge: real mDNS and real links.

The test creates a bridge namespace and one namespace per peer with a veth into
the bridge, runs each daemon inside its namespace (its D-Bus socket is a path,
so lanspreadctl reaches it from here), and deletes every namespace by name.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, PrivateBus, make_game, tree
from tests.test_peers import GAME, MiB, downloads, game_entries, wait_for

SUBNET = "10.213.77"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Lan:
    """A bridge in its own namespace and one namespace per host, all named by this run."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge_ns = f"lsbr-{self.tag}"
        self.namespaces: list[str] = []
        ip("netns", "add", self.bridge_ns)
        self.namespaces.append(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_host(self, index: int) -> tuple[str, str]:
        ns = f"lsh{index}-{self.tag}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        host_if, bridge_if = f"h{index}{self.tag}", f"b{index}{self.tag}"
        ip("link", "add", host_if, "type", "veth", "peer", "name", bridge_if)
        ip("link", "set", host_if, "netns", ns)
        ip("link", "set", bridge_if, "netns", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "set", bridge_if, "master", "br0")
        ip("-n", self.bridge_ns, "link", "set", bridge_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", host_if, "name", "eth0")
        address = f"{SUBNET}.{index + 1}"
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up", "multicast", "on")
        ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return ns, address

    def delete(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        network = Lan()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    try:
        yield network
    finally:
        network.delete()
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert network.tag not in leftover


@pytest.fixture
def lan_peer(lan: Lan, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(name: str, *extra_args: str) -> Daemon:
        ns, address = lan.add_host(len(made))
        base = tmp_path / name
        (base / "bus").mkdir(parents=True)
        (base / "games").mkdir()
        daemon = Daemon(
            PrivateBus(base / "bus"),
            base / "games",
            base / "state",
            name=name,
            listen=address,
            mdns=True,
            netns=ns,
            port=41800,
            extra_args=extra_args,
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        daemon.bus.stop()


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
    deadline = time.monotonic() + 15
    while "first" in {p["name"] for p in receiver.ctl_json("peers")}:
        assert time.monotonic() < deadline, "the killed source was never dropped"
        time.sleep(0.2)
