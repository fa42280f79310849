"""How fast our own network link is, as the kernel reports it.

A download that runs well below it may be fed across a busy switch uplink, and then
looks for nearer peers (`core.locality.slow`). Loopback, Wi-Fi and some virtual NICs
report no speed: then it does not look.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from pathlib import Path

SYS_NET = Path("/sys/class/net")
SIOCGIFADDR = 0x8915  # an interface's IPv4 address
ANY = ("", "0.0.0.0", "::")  # noqa: S104 - listening on every interface


def link_speed(listen: str, sys_net: Path = SYS_NET) -> float | None:
    """Bytes/s of the interface carrying `listen` (of the fastest one when listening on
    all), or None if no such interface reports a speed."""
    names = [name for _, name in socket.if_nameindex() if name != "lo"]
    if listen not in ANY:
        names = [name for name in names if ipv4_of(name) == listen]
    speeds = [speed for name in names if (speed := speed_of(name, sys_net)) is not None]
    return max(speeds, default=None)


def ipv4_of(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()))
        except OSError:  # no IPv4 address
            return None
    return socket.inet_ntoa(answer[20:24])


def speed_of(name: str, sys_net: Path = SYS_NET) -> float | None:
    """Bytes/s from sysfs's megabits; None where the driver knows none (-1, EINVAL)."""
    try:
        megabits = int((sys_net / name / "speed").read_text())
    except (OSError, ValueError):
        return None
    return megabits * 125_000.0 if megabits > 0 else None
