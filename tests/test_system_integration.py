"""systemd unit, system bus policy and polkit policy, checked with the real tools.

The D-Bus part starts a real dbus-daemon with a system-bus configuration that
includes our policy file, runs lanspreadd as the `lanspread` service user, and
uses busctl/dbus-send as `nobody` to prove the name cannot be taken while reads
work and changes are refused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support import SystemBus, as_user, free_port, name_has_owner, tool, wait_for

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lanspreadd.service"
POLICY = ROOT / "dbus" / "org.lanspread.Lanspread1.conf"
ACTIVATION = ROOT / "dbus" / "org.lanspread.Lanspread1.service"
BUS_NAME = "org.lanspread.Lanspread1"


def test_unit_hardening_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_activation_file_points_at_the_unit() -> None:
    text = ACTIVATION.read_text()
    assert f"Name={BUS_NAME}" in text
    assert "SystemdService=dbus-org.lanspread.Lanspread1.service" in text
    assert "Alias=dbus-org.lanspread.Lanspread1.service" in UNIT.read_text()
    assert f"BusName={BUS_NAME}" in UNIT.read_text()


def test_policy_grants_nothing_but_owning_and_calling() -> None:
    root = ET.parse(POLICY).getroot()
    rules = [(p.attrib, r.tag, r.attrib) for p in root.iter("policy") for r in p]
    assert rules == [
        ({"user": "lanspread"}, "allow", {"own": BUS_NAME}),
        ({"context": "default"}, "allow", {"send_destination": BUS_NAME}),
    ]


def test_system_bus_policy_as_non_root(service_user: str) -> None:
    bus = SystemBus(POLICY)
    base, address = bus.base, bus.address
    state = base / "state"
    games = base / "games"
    for directory in (state, games):
        directory.mkdir()
        shutil.chown(directory, service_user, service_user)
    daemon: subprocess.Popen[str] | None = None
    try:
        request_name = [
            tool("dbus-send"),
            f"--bus={address}",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            f"string:{BUS_NAME}",
            "uint32:4",
        ]
        taken = subprocess.run(as_user("nobody", *request_name), capture_output=True, text=True)
        assert taken.returncode != 0
        assert "AccessDenied" in taken.stderr

        daemon = subprocess.Popen(
            as_user(
                service_user,
                sys.executable,
                "-m",
                "lanspreadd",
                "--bus",
                address,
                "--state-dir",
                str(state),
                "--game-dir",
                str(games),
                "--no-mdns",
                "--config",
                "/dev/null",
                "--listen",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--polkit",
                "on",
                keep_read_search=True,
            ),
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        busctl = [tool("busctl"), f"--address={address}"]

        def on_the_bus(daemon: subprocess.Popen[str] = daemon) -> bool:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            return name_has_owner(address, BUS_NAME)

        wait_for(on_the_bus, 20, "lanspreadd on the system-like bus")
        reply = subprocess.run(
            as_user(
                "nobody",
                *busctl,
                "call",
                BUS_NAME,
                "/org/lanspread/Lanspread1",
                "org.lanspread.Lanspread1.Manager",
                "ListGames",
            ),
            capture_output=True,
            text=True,
        )
        assert reply.returncode == 0, reply.stderr
        assert reply.stdout.startswith("aa{sv} 6"), reply.stdout
        changed = subprocess.run(
            as_user(
                "nobody",
                *busctl,
                "call",
                BUS_NAME,
                "/org/lanspread/Lanspread1",
                "org.lanspread.Lanspread1.Manager",
                "SetGameDir",
                "s",
                "/tmp",
            ),
            capture_output=True,
            text=True,
        )
        assert changed.returncode != 0
        assert "polkit" in changed.stderr
        second = subprocess.run(as_user("nobody", *request_name), capture_output=True, text=True)
        assert "AccessDenied" in second.stderr
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
            if daemon.stderr:
                daemon.stderr.close()
        bus.stop()
