"""Game directories: what a real daemon accepts as one (SetGameDir checks the directory as
it sees it), and games someone else copied in, with lanspreadd run as the unit runs it:
the `lanspread` user, keeping CAP_FOWNER. Plus set-game-dir's pure parts; its packaged
flow (drop-ins, restarts, players through polkit) is proven in
tests/booted/test_game_dirs.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from lanspreadctl.client import ClientError
from lanspreadctl.gamedir import (
    DEFAULT_DIR,
    check_filesystem,
    drop_in_text,
    escape_unit_path,
    game_dir_path,
    mount_of,
)
from lanspreadd.archive.writer import Entry
from lanspreadd.core.install import INSTALLING, INTENT
from tests.support import (
    ERR,
    Daemon,
    SystemBus,
    call,
    disconnect,
    error_name,
    make_game,
    tool,
)

GAME = "sample-game"
POLICY = Path(__file__).resolve().parent.parent / "dbus" / "org.lanspread.Lanspread1.conf"


@pytest.fixture
def as_service(service_user: str, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """lanspreadd as the unit runs it: the lanspread user (by default keeping CAP_FOWNER)
    on a system-like bus with the packaged policy."""
    made: list[Daemon] = []
    bus = SystemBus(POLICY)

    def make(caps: tuple[str, ...] = ("fowner",)) -> Daemon:
        games = tmp_path / "games"
        games.mkdir(exist_ok=True)
        daemon = Daemon(bus, games, tmp_path / "state", user=service_user, caps=caps)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
    bus.stop()


@pytest.fixture
def service_daemon(as_service: Callable[..., Daemon]) -> Daemon:
    return as_service()


def daemon_ids(daemon: Daemon) -> tuple[int, int]:
    assert daemon.user is not None
    user = pwd.getpwnam(daemon.user)
    return user.pw_uid, user.pw_gid


def set_game_dir(daemon: Daemon, path: str) -> tuple[str | None, str]:
    async def ask() -> tuple[str | None, str]:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        reply = await call(bus, "SetGameDir", "s", [path])
        await disconnect(bus)
        return error_name(reply), str(reply.body[0]) if reply.body else ""

    return asyncio.run(asyncio.wait_for(ask(), 30))


def test_set_game_dir_refusals_are_named_logged_and_change_nothing(
    service_daemon: Daemon, tmp_path: Path, make_tmpfs: Callable[[int], Path]
) -> None:
    daemon = service_daemon
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o755)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = make_tmpfs(1)
    os.chown(read_only, *daemon_ids(daemon))
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    daemon.start()
    cases = [
        ("/", "InvalidArgument", "cannot be /"),
        (str(daemon.state_dir), "InvalidArgument", "state directory"),
        (str(daemon.state_dir / "hashes"), "InvalidArgument", "state directory"),
        (str(tmp_path), "InvalidArgument", "holds lanspreadd's state directory"),
        ("relative/games", "InvalidArgument", "must be absolute"),
        ("", "InvalidArgument", "non-empty"),
        (str(tmp_path / "missing"), "InvalidArgument", "does not exist"),
        (str(a_file), "InvalidArgument", "not a directory"),
        (str(root_only), "NoAccess", "Permission denied"),
        (str(read_only), "NoAccess", "Read-only file system"),
    ]
    for path, name, words in cases:
        error, message = set_game_dir(daemon, path)
        assert error == ERR + name, (path, error, message)
        assert words in message, (path, message)
        if name == "NoAccess":
            assert f"run `lanspreadctl set-game-dir {path}` as root" in message
    assert daemon.ctl_json("status")["game_dir"] == str(daemon.game_dir)
    assert daemon.stderr().count("refused game directory") == len(cases)
    assert list(root_only.iterdir()) == [], "no probe file left behind"
    result = daemon.ctl("set-game-dir", str(root_only))
    assert result.returncode == 1
    assert "lanspreadctl set-game-dir" in result.stderr
    assert "Traceback" not in result.stderr + daemon.stderr()


def test_set_game_dir_takes_a_writable_directory_and_its_games(
    service_daemon: Daemon, tmp_path: Path
) -> None:
    daemon = service_daemon
    daemon.start()
    other = tmp_path / "other-games"
    other.mkdir()
    make_game(other, GAME)
    os.chown(other, *daemon_ids(daemon))
    assert set_game_dir(daemon, str(other)) == (None, "")
    assert daemon.ctl_json("status")["game_dir"] == str(other)
    assert daemon.ctl_json("show", GAME)["availability"] == "Ready", "picked up at once"


def test_a_game_root_copied_in_is_claimed_before_it_is_changed(service_daemon: Daemon) -> None:
    """`cp -a` by root: root's directories, 0755. The daemon gives itself an ACL entry
    (CAP_FOWNER) and installs; the files stay root's."""
    daemon = service_daemon
    daemon.start()
    root = make_game(daemon.game_dir, GAME)
    assert os.stat(root).st_uid == 0
    result = daemon.ctl("install", GAME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "local").is_dir()
    assert os.stat(root).st_uid == 0, "access was granted, not taken"
    assert "gave lanspreadd write access to 1 directories copied in" in daemon.stderr()
    assert daemon.ctl("uninstall", GAME).returncode == 0


def test_without_fowner_a_copied_game_fails_naming_the_fix(
    as_service: Callable[..., Daemon],
) -> None:
    daemon = as_service(caps=())
    daemon.start()
    root = make_game(daemon.game_dir, GAME)
    before = sorted(p.name for p in root.iterdir())
    result = daemon.ctl("--json", "install", GAME)
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert outcome["error_name"] == ERR + "NoAccess"
    fix = f"run `lanspreadctl set-game-dir {daemon.game_dir}` as root"
    assert fix in outcome["error_message"]
    assert sorted(p.name for p in root.iterdir()) == before, "nothing lost or left"
    assert not (root / INTENT).exists()
    assert not (root / INSTALLING).exists()
    assert daemon.ctl("status").returncode == 0


def test_set_game_dir_while_a_job_runs_is_busy(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME, "1.0", [Entry("big.bin", bytes(256 << 20))])
    daemon.start()
    other = game_dir.parent / "other"
    other.mkdir()

    async def scenario() -> tuple[str | None, str | None]:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        job = await call(bus, "Install", "s", [GAME])
        busy = await call(bus, "SetGameDir", "s", [str(other)])
        await disconnect(bus)
        return error_name(job), error_name(busy)

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == (None, ERR + "Busy")
    assert daemon.ctl_json("status")["game_dir"] == str(game_dir)


# ---- set-game-dir's pure parts ----------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/srv/games", "/home/player/My Games", "/mnt/disk-1/gämes", "/media/p/.hidden", "/srv/a:b_c"],
)
def test_helper_instance_is_systemd_escape_path(path: str) -> None:
    escaped = subprocess.run(
        [tool("systemd-escape"), "--path", path], capture_output=True, text=True, check=True
    )
    assert escape_unit_path(Path(path)) == escaped.stdout.strip()


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/", "not in /"),
        ("/srv", "not in /srv"),
        ("/etc/games", "under /srv, /mnt, /media or /home/USER"),
        ("/home/no-such-user-here/Games", "no user's home directory"),
        ("/var/lib/lanspread", "state directory"),
        ("/var/lib/lanspread/hashes", "state directory"),
        ("games", "absolute"),
        ("/srv/new\nline", "plain path"),
        ('/srv/a"quote', "plain path"),
    ],
)
def test_set_game_dir_refuses_places_before_touching_anything(path: str, words: str) -> None:
    with pytest.raises(ClientError) as refused:
        game_dir_path(path)
    assert refused.value.code == 2
    assert words in str(refused.value)


def test_set_game_dir_accepts_where_players_keep_games() -> None:
    for path in ("/srv/games", "/mnt/disk/games", "/media/p/USB/games", str(DEFAULT_DIR)):
        assert game_dir_path(path) == Path(path)


def test_drop_in_gives_the_service_the_directory_and_nothing_else() -> None:
    text = drop_in_text(Path("/srv/lan games/100%"))
    assert text is not None
    assert 'ReadWritePaths="-/srv/lan games/100%%"' in text
    assert 'WantsMountsFor="/srv/lan games/100%%"' in text
    assert "ProtectHome" not in text
    home = drop_in_text(Path("/home/player/Games"))
    assert home is not None
    assert "ProtectHome=tmpfs" in home
    assert 'BindPaths="-/home/player/Games"' in home
    assert drop_in_text(DEFAULT_DIR) is None, "the default needs no drop-in"


def test_mount_of_names_the_filesystem_that_will_hold_a_path(
    make_tmpfs: Callable[[int], Path],
) -> None:
    disk = make_tmpfs(1)
    assert mount_of(disk / "not" / "made" / "yet") == (disk, "tmpfs")


@pytest.fixture
def ntfs_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A real NTFS filesystem as a USB disk is mounted (ntfs-3g on a block device, so
    FUSE's `fuseblk`), with the given mount options."""
    image = tmp_path / "ntfs.img"
    with image.open("wb") as disk:
        disk.truncate(8 << 20)
    subprocess.run([tool("mkntfs"), "-F", "-Q", str(image)], check=True, capture_output=True)
    attached = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mount = tmp_path / "usb"
    mount.mkdir()
    mounted = False

    def mount_with(options: str) -> Path:
        nonlocal mounted
        if mounted:
            subprocess.run(["umount", str(mount)], check=True)
        subprocess.run([tool("ntfs-3g"), "-o", options, device, str(mount)], check=True)
        mounted = True
        return mount

    try:
        yield mount_with
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_ntfs_is_refused_unless_mounted_as_lanspreads(
    ntfs_disk: Callable[[str], Path], service_user: str
) -> None:
    daemon = pwd.getpwnam(service_user)
    disk = ntfs_disk("umask=0022")
    with pytest.raises(ClientError) as refused:
        check_filesystem(disk / "games", daemon)
    assert f"is on NTFS or exFAT (FUSE) ({disk})" in str(refused.value)
    assert refused.value.code == 2
    assert "keeps no Unix owners or ACLs" in str(refused.value)
    assert "Mount it with -o uid=lanspread,gid=GROUP,umask=0002" in str(refused.value)
    disk = ntfs_disk(f"uid={daemon.pw_uid},gid={daemon.pw_gid},umask=0002")
    assert check_filesystem(disk / "games", daemon) is False, "taken, without ACLs"
