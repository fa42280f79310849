"""Game directories wherever players keep games, on the package under a booted systemd.

One machine of its own (with rsync, on a LAN of its own so alpha and beta never see it)
goes through what a player does: `lanspreadctl set-game-dir` as root for a directory
under /srv, on a disk (a tmpfs) mounted under /mnt after the service started, and under
/home/player; a compressed game copied into each by root (`cp -a`) and by the player
(`cp`, `cp -r`, `rsync -a`), then installed and uninstalled by the service; a restart
in between. A player sets a directory through the lanspread-gamedir@ helper unit, which
polkit refuses (the message names the command) until a rule allows it. Moving the
directory is refused while a job runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.booted.conftest import FAILED, boot
from tests.booted.machine import TIMINGS, Lan, Machine, MachineError, cached_root
from tests.support import SAMPLES

pytestmark = pytest.mark.timeout(900)

UNIT = "lanspreadd.service"
PLAYER = "player"
DROP_IN = "/etc/systemd/system/lanspreadd.service.d/gamedir.conf"
DEFAULT = "/var/lib/lanspread/games"
SAMPLE = "rar5-solid.rar"
# Catalog game -> how it is copied in: by root, or by the player.
COPIES = {
    "teeworlds": ("root", "cp -a {src} {dst}"),
    "wesnoth": (PLAYER, "mkdir {dst} && cp {src}/*.rar {dst}/ && cp {src}/version.ini {dst}/"),
    "openarena": (PLAYER, "cp -r {src} {dst}"),
    "xonotic": (PLAYER, "rsync -a {src}/ {dst}/"),
}
POLKIT_RULE = "/etc/polkit-1/rules.d/50-lanspread-test-player.rules"
ALLOW_PLAYER = """polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.systemd1.manage-units" &&
        action.lookup("unit").indexOf("lanspread-gamedir@") == 0 &&
        action.lookup("verb") == "start" && subject.user == "player") {
        return polkit.Result.YES;
    }
});
"""


@pytest.fixture(scope="module")
def gamma(deb: Path) -> Iterator[Machine]:
    """A machine with rsync and a player, on a LAN of its own."""
    started = time.monotonic()
    image = cached_root(extra=("rsync",))
    TIMINGS["gamma: root with rsync (cache)"] = time.monotonic() - started
    lan = Lan()
    booted = cast(Generator[Machine, None, None], boot("gamma", image, deb, lan))
    try:
        machine = next(booted)
        machine.run("useradd", "--create-home", PLAYER)
        yield machine
    finally:
        booted.close()  # destroys the machine
        lan.close()


def put_game(machine: Machine, tmp: Path, sample: str) -> str:
    """A game of one sample archive, world-readable inside the machine."""
    box = tmp / sample.removesuffix(".rar")
    box.mkdir()
    shutil.copy(SAMPLES / sample, box)
    (box / "version.ini").write_text("1.0\n")
    return machine.put(box)


@pytest.fixture(scope="module")
def game(gamma: Machine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A compressed (solid RAR5) game."""
    return put_game(gamma, tmp_path_factory.mktemp("game"), SAMPLE)


@pytest.fixture(autouse=True)
def timed_and_journal(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    TIMINGS[request.node.name] = time.monotonic() - started
    if request.node.stash.get(FAILED, False) and "gamma" in request.fixturenames:
        machine: Machine = request.getfixturevalue("gamma")
        if machine.leader is not None:
            for unit in (UNIT, "lanspread-gamedir@*"):
                log = machine.run("journalctl", "--no-pager", "-n", "40", "-u", unit, check=False)
                print(f"---- gamma: journalctl -u {unit}\n{log.stdout}")


# ---- what a user types and looks at ------------------------------------------------------
def ctl(machine: Machine, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return machine.run("lanspreadctl", *args, user=user, check=False, timeout=180)


def status(machine: Machine) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(machine.run("lanspreadctl", "--json", "status").stdout)
    return result


def show(machine: Machine, game_id: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        machine.run("lanspreadctl", "--json", "show", game_id).stdout
    )
    return result


def set_game_dir(machine: Machine, path: str) -> str:
    result = ctl(machine, "set-game-dir", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"game directory is now {path}" in result.stdout
    assert status(machine)["game_dir"] == path
    return result.stdout


def sha256_tree(machine: Machine, root: str) -> dict[str, str]:
    listing = machine.run(
        "sh",
        "-c",
        f"cd {shlex.quote(root)} && find . -type f ! -name .lanspread-version -print0 "
        "| sort -z | xargs -0 -r sha256sum",
    ).stdout
    return {line[66:].removeprefix("./"): line[:64] for line in listing.splitlines()}


def reference_tree(tmp: Path) -> dict[str, str]:
    """What the sample holds, unpacked on the host."""
    shutil.copy(SAMPLES / SAMPLE, tmp)
    subprocess.run(
        ["unar", "-q", "-no-directory", "-o", str(tmp / "tree"), str(tmp / SAMPLE)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {
        str(p.relative_to(tmp / "tree")): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp / "tree").rglob("*")
        if p.is_file()
    }


def copy_in_install_uninstall(machine: Machine, game_dir: str, game: str, tmp: Path) -> None:
    """Each way of adding a game by hand, then the service installs and uninstalls it."""
    expected = reference_tree(tmp)
    for game_id, (who, command) in COPIES.items():
        dst = f"{game_dir}/{game_id}"
        machine.run("rm", "-rf", dst)
        script = command.format(src=shlex.quote(game), dst=shlex.quote(dst))
        machine.run("sh", "-c", script, user=None if who == "root" else who)

        def seen(game_id: str = game_id) -> bool:
            return bool(show(machine, game_id)["downloaded"])

        try:
            machine.wait_for(seen, 30, f"{game_id} seen")
        except MachineError as exc:
            raise MachineError(f"{exc} (copied by {who}: {script})") from None
        installed = ctl(machine, "install", game_id)
        assert installed.returncode == 0, (who, script, installed.stdout + installed.stderr)
        assert "finished" in installed.stdout
        assert sha256_tree(machine, f"{dst}/local") == expected, (who, script)
        owner = machine.run("stat", "-c", "%U", dst).stdout.strip()
        assert owner == ("root" if who == "root" else who), "access granted, not taken"
        uninstalled = ctl(machine, "uninstall", game_id)
        assert uninstalled.returncode == 0, uninstalled.stdout + uninstalled.stderr
        assert not show(machine, game_id)["installed"]


def exposure(machine: Machine) -> float:
    security = machine.run("systemd-analyze", "security", UNIT).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    assert match, security
    return float(match.group(1))


# ---- the tests ----------------------------------------------------------------------------
def test_refusals_before_anything_changes(gamma: Machine) -> None:
    for path, words in (
        ("/", "not in /"),
        ("/etc/games", "under /srv, /mnt, /media or /home/USER"),
        ("/var/lib/lanspread", "state directory"),
        ("/home/nobody-here/Games", "no user's home directory"),
        ("games", "absolute"),
    ):
        refused = ctl(gamma, "set-game-dir", path)
        assert refused.returncode == 2, (path, refused)
        assert words in refused.stderr, (path, refused.stderr)
    assert gamma.run("test", "-e", DROP_IN, check=False).returncode == 1
    assert status(gamma)["game_dir"] == DEFAULT


def test_srv_games_of_the_player_copied_in_by_root_and_the_player(
    gamma: Machine, game: str, tmp_path: Path
) -> None:
    """/srv/games, made by the administrator for the player."""
    gamma.run("install", "-d", "-o", PLAYER, "-g", PLAYER, "/srv/games")
    gamma.run("cp", "-a", game, "/srv/games/supertuxkart")  # a library from before
    said = set_game_dir(gamma, "/srv/games")
    assert show(gamma, "supertuxkart")["downloaded"], "the games already there are picked up"
    assert f"{UNIT} may now write /srv/games" in said
    assert f"restarted {UNIT}" in said
    assert 'ReadWritePaths="-/srv/games"' in gamma.run("cat", DROP_IN).stdout
    verify = gamma.run(
        "systemd-analyze", "verify", UNIT, "lanspread-gamedir@srv-games.service", check=False
    )
    assert [line for line in verify.stderr.splitlines() if "'man " not in line] == []
    copy_in_install_uninstall(gamma, "/srv/games", game, tmp_path)
    assert exposure(gamma) <= 2.0


def test_a_disk_mounted_after_start_stays_writable_after_restart(
    gamma: Machine, game: str, tmp_path: Path
) -> None:
    """The player's disk, mounted while the service runs; set-game-dir makes its games
    directory; a restart keeps it writable."""
    assert gamma.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    gamma.run("mkdir", "-p", "/mnt/disk")
    uid = gamma.run("id", "-u", PLAYER).stdout.strip()
    gamma.run("mount", "-t", "tmpfs", "-o", f"size=64m,uid={uid},gid={uid}", "tmpfs", "/mnt/disk")
    said = set_game_dir(gamma, "/mnt/disk/games")
    assert "created /mnt/disk/games" in said
    assert gamma.run("stat", "-c", "%U", "/mnt/disk/games").stdout.strip() == PLAYER
    gamma.run("systemctl", "restart", UNIT)
    assert status(gamma)["game_dir"] == "/mnt/disk/games"
    copy_in_install_uninstall(gamma, "/mnt/disk/games", game, tmp_path)
    # Run again (nothing changed), it repairs access and does not restart the service.
    pid = gamma.unit("MainPID")
    again = set_game_dir(gamma, "/mnt/disk/games")
    assert "restarted" not in again
    assert gamma.unit("MainPID") == pid


def test_home_games_of_the_player(gamma: Machine, game: str, tmp_path: Path) -> None:
    said = set_game_dir(gamma, f"/home/{PLAYER}/Games")
    assert f"created /home/{PLAYER}/Games" in said
    drop_in = gamma.run("cat", DROP_IN).stdout
    assert "ProtectHome=tmpfs" in drop_in
    assert f'BindPaths="-/home/{PLAYER}/Games"' in drop_in
    assert gamma.run("stat", "-c", "%U %a", f"/home/{PLAYER}").stdout.strip() == f"{PLAYER} 700"
    copy_in_install_uninstall(gamma, f"/home/{PLAYER}/Games", game, tmp_path)
    # Inside the service the player's files show their owner, not nobody (65534).
    pid = gamma.unit("MainPID")
    inside = gamma.run(
        "nsenter", "-t", pid, "-m", "-U", "stat", "-c", "%U", f"/home/{PLAYER}/Games/xonotic"
    )
    assert inside.stdout.strip() == PLAYER
    # The rest of /home stays out of its sight.
    hidden = gamma.run("nsenter", "-t", pid, "-m", "ls", "-A", f"/home/{PLAYER}").stdout.split()
    assert hidden == ["Games"]
    assert exposure(gamma) <= 2.0
    # An installed game is the player's to delete by hand, subdirectories and all.
    dst = f"/home/{PLAYER}/Games/supertuxkart"
    gamma.run("cp", "-r", put_game(gamma, tmp_path, "rar5-subdirs.rar"), dst, user=PLAYER)
    gamma.wait_for(lambda: show(gamma, "supertuxkart")["downloaded"], 30, "supertuxkart seen")
    assert ctl(gamma, "install", "supertuxkart").returncode == 0
    assert gamma.run("find", f"{dst}/local", "-mindepth", "2", "-type", "d").stdout
    gamma.run("rm", "-rf", dst, user=PLAYER)
    gamma.wait_for(lambda: not show(gamma, "supertuxkart")["installed"], 30, "deletion seen")


def test_a_player_goes_through_the_helper_unit(gamma: Machine) -> None:
    target = f"/home/{PLAYER}/More Games"
    helper = "lanspread-gamedir@home-player-More\\x20Games.service"
    refused = ctl(gamma, "set-game-dir", target, user=PLAYER)
    assert refused.returncode == 4, refused
    assert f"as root, run: lanspreadctl set-game-dir '{target}'" in refused.stderr
    assert status(gamma)["game_dir"] != target

    gamma.run("sh", "-c", f"cat > {POLKIT_RULE}", stdin=ALLOW_PLAYER)
    try:
        gamma.wait_for(
            lambda: ctl(gamma, "set-game-dir", target, user=PLAYER).returncode == 0,
            30,
            "polkit reading the rule",
        )
        assert status(gamma)["game_dir"] == target
        assert gamma.unit("Result", helper) == "success"
        assert gamma.run("stat", "-c", "%U", target).stdout.strip() == PLAYER
    finally:
        gamma.run("rm", "-f", POLKIT_RULE)


def stop_an_install(machine: Machine, game_id: str) -> Callable[[], None]:
    """Catch the unpack tool of an install and SIGSTOP it: a job that runs until the
    returned function lets it go on."""
    catch = (
        f"lanspreadctl install --no-wait {game_id} >/dev/null || exit 2; "
        "end=$(($(date +%s) + 10)); while [ $(date +%s) -lt $end ]; do "
        "pkill -STOP -x unar && exit 0; pkill -STOP -f '^/usr/bin/python3 -I -S -c' && exit 0; "
        "done; exit 1"
    )
    for _attempt in range(10):
        caught = machine.run("sh", "-c", catch, check=False).returncode == 0
        if caught and show(machine, game_id)["operation"] == "install":
            break
        machine.wait_for(lambda: not show(machine, game_id)["operation"], 30, "install ended")
        machine.run("lanspreadctl", "uninstall", game_id, check=False)
    else:
        pytest.fail("the install always ended before its unpack tool could be stopped")

    def go_on() -> None:
        tools = "pkill -CONT -x unar; pkill -CONT -f '^/usr/bin/python3 -I -S'; true"
        machine.run("sh", "-c", tools)
        machine.wait_for(lambda: not show(machine, game_id)["operation"], 60, "install ended")

    return go_on


def test_moving_the_game_dir_waits_for_jobs(gamma: Machine, game: str) -> None:
    """Root and the player's helper alike are refused with Busy while an install runs."""
    here = status(gamma)["game_dir"]
    gamma.run("sh", "-c", f"rm -rf '{here}/teeworlds' && cp -a {game} '{here}/teeworlds'")
    gamma.wait_for(lambda: show(gamma, "teeworlds")["downloaded"], 30, "teeworlds seen")
    go_on = stop_an_install(gamma, "teeworlds")
    try:
        pid = gamma.unit("MainPID")
        busy = ctl(gamma, "set-game-dir", "/srv/games")
        assert busy.returncode == 1, busy
        assert "lanspreadd is busy (install of teeworlds)" in busy.stderr
        gamma.run("sh", "-c", f"cat > {POLKIT_RULE}", stdin=ALLOW_PLAYER)
        gamma.wait_for(
            lambda: "busy" in ctl(gamma, "set-game-dir", "/srv/games", user=PLAYER).stderr,
            30,
            "the helper's Busy reaching the player",
        )
        assert gamma.unit("MainPID") == pid, "not restarted under a running job"
        assert status(gamma)["game_dir"] == here
    finally:
        gamma.run("rm", "-f", POLKIT_RULE)
        go_on()
    assert show(gamma, "teeworlds")["installed"]


def test_back_to_the_default(gamma: Machine) -> None:
    said = set_game_dir(gamma, DEFAULT)
    assert f"removed {DROP_IN}" in said
    assert gamma.run("test", "-e", DROP_IN, check=False).returncode == 1
    assert gamma.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert "Traceback" not in gamma.journal()
