"""The Debian package on Debian 13 booted with systemd as PID 1, used as a player would.

Each machine is a debootstrapped Debian 13 in systemd-nspawn with the .deb built from
this checkout installed by apt; the daemon runs under its own hardened unit. Tests only
use what a user has: systemctl, journalctl, busctl and lanspreadctl, as root and as an
unprivileged player (who has no login session, so polkit refuses every change).
"""

from __future__ import annotations

import re

import pytest

from tests.booted.machine import Machine

pytestmark = pytest.mark.timeout(900)

UNIT = "lanspreadd.service"
PLAYER = "player"


@pytest.fixture(scope="session")
def player(alpha: Machine) -> str:
    alpha.run("useradd", "--create-home", PLAYER)
    return PLAYER


def test_package_installs_an_enabled_running_hardened_unit(alpha: Machine, player: str) -> None:
    assert alpha.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert alpha.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert alpha.unit("FragmentPath") == "/usr/lib/systemd/system/lanspreadd.service"
    assert alpha.unit("User") == "lanspread"
    status = alpha.run("lanspreadctl", "status").stdout
    assert "serving 6 catalog games" in status
    assert "game dir:   /var/lib/lanspread/games" in status
    games = alpha.run("lanspreadctl", "games", user=player).stdout
    assert "teeworlds" in games
    security = alpha.run("systemd-analyze", "security", UNIT).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert match, security
    assert float(match.group(1)) <= 2.0
    verify = alpha.run("systemd-analyze", "verify", UNIT, check=False)
    problems = [line for line in verify.stderr.splitlines() if "'man " not in line]
    assert problems == [], verify.stderr
