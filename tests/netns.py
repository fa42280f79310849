"""Test networks: a bridge in its own namespace and one namespace per host.

Every namespace is named after this run and deleted by name.
"""

from __future__ import annotations

import secrets
import subprocess

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

    def shape(self, ns: str, rate: str) -> None:
        """Limit what a host can send (its uplink), like a slower NIC."""
        ip_netns_exec(
            ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "256kb",
            "latency",
            "100ms",
        )

    def delete(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def ip_netns_exec(ns: str, *cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, timeout=30)
