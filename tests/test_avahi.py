"""What a desktop's mDNS browser shows of the party: avahi on the test's own LAN.

avahi-daemon runs in a host namespace of the test's bridge, on a private system bus
(a copy of the system bus configuration with its policy directories, listening in
the test's directory), with its run-time files on a tmpfs of its own mount
namespace: it never meets the machine's interfaces, bus or avahi. `avahi-browse
-rpt` lists what it sees, as any desktop would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanspreadd.core.redial import FIRST_DELAY
from lanspreadd.net.discovery import instance_label
from tests.netns import Lan, ip
from tests.support import Daemon, TimedOut, name_has_owner, wait_for

AVAHI_HOST = 20  # a host index of the bridge that lan_peer does not reach
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
# What makes the copy a bus of its own: no user switch, fork, pid file, syslog or
# service activation (which could start a real avahi), no other listen address, and
# none of the machine's local overrides. The policy directories stay.
DROPPED = {"user", "fork", "pidfile", "syslog", "standard_system_servicedirs", "servicehelper"}
AVAHI_CONF = """\
[server]
host-name=lanspread-test-{tag}
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=yes

[wide-area]
enable-wide-area=no

[publish]
disable-publishing=yes

[reflector]
enable-reflector=no
"""
# Prints a line for each QUIC connection that reaches HOST:PORT (a new destination
# connection id in a long-header packet: a dial; its retransmissions repeat the id),
# with the time it came on the machine's monotonic clock.
DIAL_COUNTER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
seen = set()
while True:
    data = sock.recv(65536)
    if len(data) > 6 and data[0] & 0x80 and data[6 : 6 + data[5]] not in seen:
        seen.add(data[6 : 6 + data[5]])
        print(f"dial {time.monotonic()}", flush=True)
"""


Popen = subprocess.Popen[str]


@dataclass(frozen=True)
class Service:
    """One resolved line of `avahi-browse -p`: the instance name and its TXT."""

    name: str
    address: str
    port: int
    txt: dict[str, str]


def unescape(text: str) -> str:
    """avahi's escaping undone: `\\DDD` is a byte in decimal, `\\X` is X."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\" and re.fullmatch(r"\d{3}", text[i + 1 : i + 4]):
            out.append(int(text[i + 1 : i + 4]))
            i += 4
        elif text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1].encode()
            i += 2
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


def parse_browse(output: str) -> list[Service]:
    services = []
    for line in output.splitlines():
        fields = line.split(";")
        if fields[0] != "=" or len(fields) < 10:
            continue
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', ";".join(fields[9:]))
        txt = dict(unescape(s).partition("=")[::2] for s in strings)
        services.append(Service(unescape(fields[3]), fields[7], int(fields[8]), txt))
    return services


def system_bus_config(socket_path: Path) -> str:
    """The machine's system bus configuration, made into a private bus at `socket_path`."""
    root = ET.parse(SYSTEM_CONF).getroot()
    for element in list(root):
        if element.tag in DROPPED or element.tag in ("listen", "include"):
            root.remove(element)
        elif element.tag == "includedir" and element.text and not element.text.startswith("/"):
            element.text = str(SYSTEM_CONF.parent / element.text)
    listen = ET.SubElement(root, "listen")
    listen.text = f"unix:path={socket_path}"
    header = (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
    )
    return header + ET.tostring(root, encoding="unicode")


def needed(tool: str) -> str:
    path = shutil.which(tool)
    assert path is not None, f"{tool} is missing: scripts/setup installs it"
    return path


class Avahi:
    """avahi-daemon in a host namespace of `lan`, on a private system bus."""

    def __init__(self, lan: Lan, base: Path) -> None:
        self.base = base
        base.mkdir()
        self.procs: list[Popen] = []
        try:
            self._start_all(lan)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, lan: Lan) -> None:
        base = self.base
        self.env = os.environ | {
            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={base / 'system_bus_socket'}"
        }
        config = base / "system.conf"
        config.write_text(system_bus_config(base / "system_bus_socket"))
        bus = self._start(
            [
                needed("dbus-daemon"),
                f"--config-file={config}",
                "--nofork",
                "--nopidfile",
                "--print-address=1",
            ],
            "dbus-daemon.log",
            stdout=subprocess.PIPE,
        )
        # Printed once the bus listens (its socket file appears earlier, at bind()).
        assert bus.stdout is not None
        assert bus.stdout.readline().startswith("unix:"), self.logs()
        self.ns, _ = lan.add_host(AVAHI_HOST)
        (base / "avahi-daemon.conf").write_text(AVAHI_CONF.format(tag=lan.tag))
        # Its pid file and socket are compiled in under /run/avahi-daemon: a tmpfs on
        # /run in a mount namespace of its own keeps them away from any real avahi.
        setup = 'mount -t tmpfs -o size=1m tmpfs /run && mkdir /run/avahi-daemon && exec "$@"'
        self.proc = self._start(
            [
                "ip", "netns", "exec", self.ns,
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", setup, "sh",
                needed("avahi-daemon"), "--file", str(base / "avahi-daemon.conf"),
                "--no-drop-root", "--no-chroot", "--no-rlimits", "--no-proc-title",
            ],
            "avahi-daemon.log",
        )  # fmt: skip

        def ready() -> bool:
            assert self.proc.poll() is None, self.logs()
            return name_has_owner(self.env["DBUS_SYSTEM_BUS_ADDRESS"], "org.freedesktop.Avahi")

        wait_for(ready, 20, "avahi-daemon on its bus")

    def _start(self, cmd: list[str], log_name: str, stdout: int | None = None) -> Popen:
        """A process of ours, its output in a file: dbus-daemon logs every refusal, and
        would block on a full pipe."""
        with (self.base / log_name).open("w") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log if stdout is None else stdout,
                stderr=log if stdout is not None else subprocess.STDOUT,
                env=self.env,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.base.glob("*.log")))

    def browse(self) -> list[Service]:
        """What a desktop shows now: avahi-browse, resolved, parsable, until all is told."""
        result = subprocess.run(
            [needed("avahi-browse"), "-rpt", "_lanspread._udp"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr + self.logs()
        return parse_browse(result.stdout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def avahi(lan: Lan, tmp_path: Path) -> Iterator[Avahi]:
    server = Avahi(lan, tmp_path / "avahi")
    try:
        yield server
    finally:
        server.stop()


class DialCounter:
    """The QUIC dials that reach an address where nothing answers, each with its time."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", DIAL_COUNTER, host, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.out = ""
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.out, _ = self.proc.communicate(timeout=10)

    def dials(self) -> list[float]:
        """Every dial so far (the counter stops to tell them all)."""
        self.stop()
        return [
            float(line.split()[1]) for line in self.out.splitlines() if line.startswith("dial ")
        ]


@contextmanager
def dial_counter(ns: str, host: str, port: int) -> Iterator[DialCounter]:
    counter = DialCounter(ns, host, port)
    try:
        yield counter
    finally:
        counter.stop()


def logged(daemon: Daemon, text: str) -> Callable[[], bool]:
    return lambda: text in daemon.stderr()


def by_name(services: list[Service]) -> dict[str, str]:
    return {s.name: s.txt.get("id", "") for s in services}


@pytest.mark.slow
def test_avahi_shows_a_daemon_by_its_name_and_its_withdrawal_stops_redialling(
    avahi: Avahi, lan_peer: Callable[..., Daemon]
) -> None:
    gans, other = lan_peer("gans"), lan_peer("other", "--log-level", "debug")
    gans.name = "Grüne Gans. 1"  # readable: a space, UTF-8, and a dot zeroconf cannot send
    gans.start()
    other.start()
    gans_id = gans.ctl_json("status")["peer_id"]
    label = instance_label(gans.name)
    assert label == "Grüne Gans- 1"

    def listed() -> bool:
        shown = [s for s in avahi.browse() if s.name == label]
        return [(s.address, s.port, s.txt.get("id")) for s in shown] == [
            (gans.listen, gans.port, gans_id)
        ]

    wait_for(listed, 30, f"avahi to show {label!r} with its peer id in TXT")
    # Withdrawal goes by what the other daemon learnt when it resolved the name.
    announced = f"peer {gans_id[:8]} announces itself as {label} at {gans.listen}:{gans.port}"
    wait_for(logged(other, announced), 30, "the other daemon to resolve it")

    assert gans.netns is not None
    started = time.monotonic()
    assert gans.stop() == 0
    with dial_counter(gans.netns, gans.listen, gans.port) as counter:
        withdrew = f"peer {gans_id[:8]} withdrew its mDNS name {label}"
        try:
            wait_for(logged(other, withdrew), 15, "the other daemon to see the withdrawal")
        except TimedOut as exc:
            raise AssertionError(f"{exc}; its log:\n{other.stderr()}") from None
        seen_at = time.monotonic()
        wait_for(lambda: label not in by_name(avahi.browse()), 15, "avahi to see it withdraw")
        # A peer still known is dialled FIRST_DELAY after its connection drops, then
        # again twice that later: watch past both. A dial the withdrawal raced is allowed.
        time.sleep(max(0.0, started + 3 * FIRST_DELAY + 2.0 - time.monotonic()))
        late = [at for at in counter.dials() if at > seen_at]
    assert late == [], f"{gans_id[:8]} was dialled after it withdrew"


@pytest.mark.slow
def test_daemons_with_one_name_get_distinct_instance_names(
    lan: Lan, avahi: Avahi, lan_peer: Callable[..., Daemon]
) -> None:
    twins = [lan_peer("a"), lan_peer("b"), lan_peer("c")]
    long_name = "Ötzis Spielhöhle über dem Brennerpaß – zweiter Stock, hinten 🎮🎮"
    for twin in twins:
        twin.name = long_name  # 63 characters, more than 63 bytes
    labels = [instance_label(long_name, n) for n in (1, 2, 3)]
    assert all(len(label.encode()) <= 63 for label in labels)
    assert labels[1] == "Ötzis Spielhöhle über dem Brennerpaß – zweiter Stock, (2)"

    # b's cable is plugged in later: both take the name, then meet (RFC 6762 section 9).
    b_port = f"b1{lan.tag}"  # tests.netns names the bridge's end of host 1's link so
    ip("-n", lan.bridge_ns, "link", "set", b_port, "nomaster")
    for twin in twins[:2]:
        twin.start(wait=False)
    for twin in twins[:2]:
        twin.wait_ready()
    announcing = f"announcing {labels[0]}._lanspread._udp.local. on mDNS"
    for twin in twins[:2]:
        wait_for(logged(twin, announcing), 20, "both to announce")
    ids = [twin.ctl_json("status")["peer_id"] for twin in twins[:2]]
    ip("-n", lan.bridge_ns, "link", "set", b_port, "master", "br0")
    # The greater id keeps the name, the other takes "Name (2)"; neither is lost.
    expected = {labels[0]: max(ids), labels[1]: min(ids)}
    wait_for(lambda: by_name(avahi.browse()) == expected, 60, f"avahi to show {expected}")
    loser = twins[ids.index(min(ids))]
    # Logged once its new name is registered, which is when avahi may already show it.
    told = f"mDNS name {labels[0]} is held by peer {max(ids)[:8]} too"
    wait_for(lambda: told in loser.stderr(), 10, "the loser to say why it renamed")
    for twin in twins[:2]:
        assert twin.ctl("wait-peers", "1", "--timeout", "30").returncode == 0

    # One more later: its probe finds both names taken.
    twins[2].start()
    expected[labels[2]] = twins[2].ctl_json("status")["peer_id"]
    wait_for(lambda: by_name(avahi.browse()) == expected, 30, f"avahi to show {expected}")
