"""The Debian package on Debian 13 booted with systemd as PID 1, used as a player would.

Each machine is a debootstrapped Debian 13 in systemd-nspawn with the .deb built from
this checkout installed by apt; the daemon runs under its own hardened unit, on Debian's
Python and Debian's own dependencies. Tests only use what a user has: systemctl,
journalctl, busctl and lanspreadctl, as root and as an unprivileged player (who has no
login session, so polkit refuses every change). Games are rarfile's sample archives:
stored, compressed solid (RAR3 and RAR5) and multi-volume.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.booted.machine import (
    INBOX,
    MACHINE_PREFIX,
    TIMINGS,
    WORK,
    Machine,
    MachineError,
    cached_root,
    host_run,
    proc_mounted,
    unpack,
)
from tests.support import SAMPLES, make_game

pytestmark = pytest.mark.timeout(900)

UNIT = "lanspreadd.service"
SERVICE_USER = "lanspread"
GAMES = "/var/lib/lanspread/games"
BUS = ("org.lanspread.Lanspread1", "/org/lanspread/Lanspread1", "org.lanspread.Lanspread1.Manager")
CATALOG = Path(__file__).resolve().parents[2] / "lanspreadd" / "data" / "game.db"

# Kind of archive -> (sample archives, the catalog game that carries it, its version).
KINDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "stored": (("rar5-subdirs.rar",), "openarena", "0.8.8"),
    "solid-rar5": (("rar5-solid.rar",), "teeworlds", "0.7.5"),
    "solid-rar3": (("rar3-solid.rar",), "wesnoth", "1.18.0"),
    "volumes-rar5": (
        ("rar5-vols.part1.rar", "rar5-vols.part2.rar", "rar5-vols.part3.rar"),
        "xonotic",
        "0.8.6",
    ),
}


# ---- helpers: what a user types, and what they would look at ---------------------------
def show(machine: Machine, game: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(machine.run("lanspreadctl", "--json", "show", game).stdout)
    return result


def wait_game(
    machine: Machine, game: str, holds: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def check() -> bool:
        state.update(show(machine, game))
        return holds(state)

    try:
        machine.wait_for(check, 60, f"{game}: {what}")
    except MachineError as exc:
        raise MachineError(f"{exc}; last seen {state}") from None
    return state


def seed(machine: Machine, game: str, archives: list[Path], version: str, tmp: Path) -> None:
    """Copy a game in by hand as the README says: archives first, version.ini last.

    The copy is made as the service user: files root copies into the default game
    directory are not the daemon's to write beside (a separate fix).
    """
    box = tmp / f"{machine.name}-{game}-{version}"
    box.mkdir()
    for archive in archives:
        shutil.copy(archive, box)
    inbox = machine.put(box)
    script = (
        f'set -e; d={GAMES}/{game}; mkdir -p "$d"; rm -f "$d"/*.rar "$d"/version.ini; '
        f'cp {inbox}/*.rar "$d"/; echo {version} > "$d"/version.ini'
    )
    machine.run("sh", "-c", script, user=SERVICE_USER)


def forget(machine: Machine, game: str) -> None:
    """Start a game from nothing on this machine."""
    machine.run("rm", "-rf", f"{GAMES}/{game}", user=SERVICE_USER)
    wait_game(machine, game, lambda g: g["availability"] == "Absent", "forgotten")


def samples(kind: str) -> list[Path]:
    return [SAMPLES / name for name in KINDS[kind][0]]


def archive_tree(archives: list[Path], scratch: Path) -> dict[str, str]:
    """Path -> SHA-256 of every file in an archive set, unpacked on the host by unar."""
    out = scratch / f"reference-{len(list(scratch.glob('reference-*')))}"
    out.mkdir()
    for archive in archives:
        shutil.copy(archive, out)
    subprocess.run(
        ["unar", "-q", "-no-directory", "-o", str(out / "tree"), str(out / archives[0].name)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {
        str(path.relative_to(out / "tree")): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (out / "tree").rglob("*")
        if path.is_file()
    }


def installed_tree(machine: Machine, game: str) -> dict[str, str]:
    listing = machine.run(
        "sh",
        "-c",
        f"cd {GAMES}/{game}/local && find . -type f ! -name .lanspread-version -print0 "
        "| sort -z | xargs -0 -r sha256sum",
    ).stdout
    return {line[66:].removeprefix("./"): line[:64] for line in listing.splitlines()}


def archive_hashes(machine: Machine, game: str) -> dict[str, str]:
    listing = machine.run("sh", "-c", f"cd {GAMES}/{game} && sha256sum *.rar").stdout
    return {line[66:]: line[:64] for line in listing.splitlines()}


def ctl(machine: Machine, *args: str, timeout: float = 120) -> str:
    """lanspreadctl as root; an operation must end 'finished'."""
    return machine.run("lanspreadctl", *args, timeout=timeout).stdout


def exposure(machine: Machine) -> float:
    security = machine.run("systemd-analyze", "security", UNIT).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert match, security
    return float(match.group(1))


@pytest.fixture(autouse=True)
def timed_test(request: pytest.FixtureRequest) -> Any:
    started = time.monotonic()
    yield
    TIMINGS[request.node.name] = time.monotonic() - started


# ---- the package and its unit ---------------------------------------------------------
def test_package_installs_an_enabled_running_hardened_unit(alpha: Machine, player: str) -> None:
    assert alpha.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    assert alpha.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert alpha.unit("FragmentPath") == "/usr/lib/systemd/system/lanspreadd.service"
    assert alpha.unit("User") == SERVICE_USER
    assert alpha.unit("Type") == "notify-reload"
    status = ctl(alpha, "status")
    assert "serving 6 catalog games" in status
    assert f"game dir:   {GAMES}" in status
    assert "teeworlds" in alpha.run("lanspreadctl", "games", user=player).stdout
    assert exposure(alpha) <= 2.0
    actions = alpha.run("pkaction").stdout.split()
    assert sorted(a for a in actions if a.startswith("org.lanspread.")) == [
        f"org.lanspread.{name}"
        for name in (
            "cancel-operation",
            "configure",
            "download-game",
            "install-game",
            "manage-catalog",
            "manage-peers",
            "remove-game",
        )
    ]
    verify = alpha.run("systemd-analyze", "verify", UNIT, check=False)
    problems = [line for line in verify.stderr.splitlines() if "'man " not in line]
    assert problems == [], verify.stderr
    # The daemon runs on Debian's Python and Debian's own dependencies, not a virtualenv.
    pid = alpha.unit("MainPID")
    assert alpha.run("readlink", f"/proc/{pid}/exe").stdout.strip().startswith("/usr/bin/python3")
    location = alpha.run("python3", "-c", "import dbus_fast; print(dbus_fast.__file__)").stdout
    assert location.startswith("/usr/lib/python3/dist-packages/")


def test_lintian_finds_no_errors_or_warnings(booted_host: None, deb: Path) -> None:
    """Debian 13's lintian, in a Debian 13 root (a chroot: nothing to boot)."""
    image = cached_root(extra=("lintian",))
    work = Path(tempfile.mkdtemp(prefix=f"{MACHINE_PREFIX}{os.getpid()}-lintian-", dir=WORK))
    try:
        root = work / "root"
        unpack(image, root)
        (root / INBOX.lstrip("/")).mkdir(parents=True)
        shutil.copy(deb, root / INBOX.lstrip("/") / deb.name)
        with proc_mounted(root):
            result = subprocess.run(
                [
                    "chroot",
                    str(root),
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "env",
                    "HOME=/tmp",
                    "lintian",
                    "--fail-on",
                    "error,warning",
                    "--display-level",
                    ">=warning",
                    f"{INBOX}/{deb.name}",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
    finally:
        host_run(["rm", "-rf", str(work)], timeout=120)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_enable_disable_start_stop_restart(alpha: Machine) -> None:
    alpha.run("systemctl", "disable", "--now", UNIT)
    assert alpha.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert alpha.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert alpha.unit("Result") == "success", "SIGTERM stops it cleanly"
    # Disabled also removes the D-Bus activation alias: nothing starts it behind our back.
    unreachable = alpha.run("lanspreadctl", "status", check=False)
    assert unreachable.returncode == 3, unreachable

    alpha.run("systemctl", "enable", "--now", UNIT)
    assert alpha.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    # Type=notify(-reload): once systemctl returns, the daemon is ready and on the bus.
    assert "serving" in ctl(alpha, "status")

    before = alpha.unit("MainPID")
    alpha.run("systemctl", "restart", UNIT)
    assert alpha.unit("MainPID") != before
    assert "serving" in ctl(alpha, "status")

    alpha.run("systemctl", "stop", UNIT)
    assert alpha.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert alpha.unit("Result") == "success"
    assert "lanspreadd stopped" in alpha.journal()
    alpha.run("systemctl", "start", UNIT)
    assert "serving" in ctl(alpha, "status")


def test_reload_is_done_when_systemctl_reload_returns(alpha: Machine, tmp_path: Path) -> None:
    def catalog_with(*extra: str) -> str:
        db = tmp_path / "game.db"
        db.unlink(missing_ok=True)
        shutil.copy(CATALOG, db)
        with sqlite3.connect(db) as conn:
            for game in extra:
                conn.execute(
                    "INSERT INTO games (id, name, version) VALUES (?, ?, '1.0')", (game, game)
                )
        conn.close()
        return alpha.put(db)

    config = "/etc/lanspread/lanspreadd.toml"
    alpha.run("cp", config, f"{config}.orig")
    try:
        alpha.run("cp", catalog_with("first-extra"), "/etc/lanspread/game.db")
        alpha.run("sh", "-c", f"echo 'catalog = \"/etc/lanspread/game.db\"' >> {config}")
        alpha.run("systemctl", "restart", UNIT)
        assert show(alpha, "first-extra")["catalog_version"] == "1.0"

        alpha.run("cp", catalog_with("first-extra", "second-extra"), "/etc/lanspread/game.db")
        alpha.run("systemctl", "reload", UNIT, timeout=30)
        assert show(alpha, "second-extra")["availability"] == "Absent"

        # A broken catalog: the reload still completes, the old catalog stays, the
        # journal says why.
        alpha.run("sh", "-c", "echo not a database > /etc/lanspread/game.db")
        alpha.run("systemctl", "reload", UNIT, timeout=30)
        assert show(alpha, "second-extra")["catalog_version"] == "1.0"
        assert "catalog reload failed, keeping the old catalog" in alpha.journal()
        assert alpha.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    finally:
        alpha.run("mv", f"{config}.orig", config)
        alpha.run("rm", "-f", "/etc/lanspread/game.db")
        alpha.run("systemctl", "restart", UNIT)


def test_watchdog_restarts_a_hung_daemon(alpha: Machine) -> None:
    pid = alpha.unit("MainPID")
    restarts = int(alpha.unit("NRestarts"))
    alpha.run("kill", "-STOP", pid)
    # WatchdogSec=30s, then SIGABRT (with SIGCONT: a stopped daemon dies too), RestartSec=5s.
    alpha.wait_for(
        lambda: alpha.unit("MainPID") not in ("0", pid) and alpha.unit("ActiveState") == "active",
        90,
        "a restarted daemon",
        interval=1,
    )
    assert int(alpha.unit("NRestarts")) == restarts + 1
    assert "Watchdog timeout" in alpha.journal()
    assert "serving" in ctl(alpha, "status")


def test_dbus_activation_starts_the_stopped_service(alpha: Machine, player: str) -> None:
    alpha.run("systemctl", "stop", UNIT)
    assert alpha.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    started = time.monotonic()
    reply = alpha.run("busctl", "call", *BUS, "ListGames", user=player)
    TIMINGS["D-Bus activation"] = time.monotonic() - started
    assert reply.stdout.startswith("aa{sv} 6"), reply.stdout
    assert alpha.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    bus_log = alpha.journal("dbus.service")
    assert "Activating via systemd: service name='org.lanspread.Lanspread1'" in bus_log


def test_a_local_flood_leaves_the_daemon_serving(alpha: Machine, player: str) -> None:
    """A player calling ListGames 5,000 times with 200 in flight filled the daemon's
    socket, and dbus-fast (Debian's compiled one too) took EAGAIN for a dead bus: the
    daemon exited and systemd restarted it. It must not even notice."""
    pid, restarts = alpha.unit("MainPID"), alpha.unit("NRestarts")
    client = alpha.put(Path(__file__).with_name("flood_client.py"))
    for _ in range(3):
        alpha.run("python3", client, "5000", "200", user=player, check=False, timeout=180)
    assert (alpha.unit("MainPID"), alpha.unit("NRestarts")) == (pid, restarts), alpha.journal()
    reply = alpha.run("busctl", "call", *BUS, "ListGames", user=player)
    assert reply.stdout.startswith("aa{sv} "), reply.stdout


def test_a_player_without_a_session_may_look_but_not_change(alpha: Machine, player: str) -> None:
    assert "teeworlds" in alpha.run("lanspreadctl", "games", user=player).stdout
    for command in (
        ("install", "teeworlds"),
        ("uninstall", "teeworlds"),
        ("download", "teeworlds"),
        ("reload-catalog",),
    ):
        refused = alpha.run("lanspreadctl", *command, user=player, check=False)
        assert refused.returncode == 4, (command, refused)
        assert "not authorised" in refused.stderr, refused.stderr
    raw = alpha.run("busctl", "call", *BUS, "Install", "s", "teeworlds", user=player, check=False)
    assert raw.returncode != 0
    assert "polkit" in raw.stderr or "authori" in raw.stderr.lower(), raw.stderr
    assert f"game dir:   {GAMES}" in ctl(alpha, "status"), "nothing changed"


# ---- games ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_game_is_installed_updated_and_uninstalled(
    alpha: Machine, kind: str, tmp_path: Path
) -> None:
    _, game, version = KINDS[kind]
    forget(alpha, game)
    old = make_game(tmp_path / "old", game, "0.9", sentinel=False) / f"{game}.rar"
    seed(alpha, game, [old], "0.9", tmp_path)
    wait_game(alpha, game, lambda g: g["availability"] == "Outdated", "copied in (old version)")
    assert "finished" in ctl(alpha, "install", game)
    assert installed_tree(alpha, game) == archive_tree([old], tmp_path)

    seed(alpha, game, samples(kind), version, tmp_path)
    wait_game(alpha, game, lambda g: g["update_ready"], "update ready")
    assert "finished" in ctl(alpha, "update", game)
    assert installed_tree(alpha, game) == archive_tree(samples(kind), tmp_path)
    state = show(alpha, game)
    assert (state["availability"], state["installed_version"]) == ("Ready", version)
    assert f"update of {game} finished" in alpha.journal()

    assert "finished" in ctl(alpha, "uninstall", game)
    state = show(alpha, game)
    assert not state["installed"]
    assert state["downloaded"], "the archives stay"
    assert alpha.run("test", "-e", f"{GAMES}/{game}/local", check=False).returncode == 1


# ---- two machines on one LAN -----------------------------------------------------------
def test_two_machines_trade_compressed_games(
    peers: tuple[Machine, Machine], tmp_path: Path
) -> None:
    alpha, beta = peers
    for source, receiver, kind in ((alpha, beta, "solid-rar5"), (beta, alpha, "solid-rar3")):
        _, game, version = KINDS[kind]
        forget(receiver, game)
        forget(source, game)
        seed(source, game, samples(kind), version, tmp_path)
        wait_game(receiver, game, lambda g: g["sources"] >= 1, f"served by {source.name}")
        assert "finished" in ctl(receiver, "download", game, "--install", timeout=300)
        state = show(receiver, game)
        assert (state["availability"], state["installed"]) == ("Ready", True)
        assert installed_tree(receiver, game) == archive_tree(samples(kind), tmp_path)
        assert archive_hashes(receiver, game) == {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in samples(kind)
        }


@pytest.mark.parametrize("kind", list(KINDS))
def test_stream_install_from_a_peer(
    peers: tuple[Machine, Machine], kind: str, tmp_path: Path
) -> None:
    alpha, beta = peers
    _, game, version = KINDS[kind]
    forget(beta, game)
    forget(alpha, game)
    seed(alpha, game, samples(kind), version, tmp_path)
    wait_game(beta, game, lambda g: g["sources"] >= 1, "served by alpha")
    assert "finished" in ctl(beta, "stream-install", game, timeout=300)
    state = show(beta, game)
    assert (state["availability"], state["installed"]) == ("LocalOnly", True)
    assert installed_tree(beta, game) == archive_tree(samples(kind), tmp_path)
    assert not state["downloaded"], "no archives were stored"
