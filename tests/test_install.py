"""Install, update, uninstall and remove-download, and crash safety under SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lanspreadd.archive.extract import LARGE_ENTRY, free_bytes
from lanspreadd.archive.writer import Entry, write_rar5
from lanspreadd.core.install import (
    BACKUP,
    INSTALLING,
    INTENT,
    RESUME_FILE,
    GameFiles,
    fsync_tree,
    read_intent,
    recover,
)
from lanspreadd.core.library import INSTALLED_VERSION
from lanspreadd.errors import ArchiveError, DiskFull, InvalidState, UnsafeArchive
from tests.crafted_rar import (
    Raw,
    directory,
    fifo,
    file_copy,
    setuid_file,
    symlink,
    write_raw_rar5,
)
from tests.support import SAMPLES, Daemon, default_entries, make_game, tree, wait_for
from tests.test_archive import installed_files, rarfile_reading

CATALOG_GAME = "sample-game"  # in the daemon's embedded catalog
BIG = bytes(range(256)) * (4 << 12)  # 4 MiB: several progress callbacks

CHILD = """
import os, signal, sys
from pathlib import Path
from lanspreadd.core.install import GameFiles
root, op, kill_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def die(name):
    if name == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
seen = []
def progress(done, total):
    seen.append(done)
    if kill_at == "mid-unpack" and len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
files = GameFiles(root, progress=progress, step=die)
getattr(files, op)()
"""


def run_child(root: Path, op: str, kill_at: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), op, kill_at], capture_output=True, timeout=60
    )
    return proc.returncode


def entries(version: str) -> list[Entry]:
    return [*default_entries(version), Entry("data/big.bin", BIG + version.encode())]


def expected_tree(tmp_path: Path, version: str) -> dict[str, bytes | None]:
    scratch = tmp_path / f"expected-{version}"
    root = make_game(scratch, "g", version, entries(version))
    GameFiles(root).install()
    return tree(root / "local")


def assert_clean(root: Path) -> None:
    assert not (root / INSTALLING).exists()
    assert not (root / BACKUP).exists()
    assert not (root / INTENT).exists()
    assert not list(root.glob(".lanspread-links-*"))
    if (root / "local").exists():
        assert not (root / "local" / ".lanspread_owned").exists()


def test_install_update_uninstall_remove(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    progress: list[tuple[int, int]] = []
    files = GameFiles(root, progress=lambda d, t: progress.append((d, t)))
    assert files.install() is False
    assert (root / "local" / "VERSION.txt").read_text() == "1.0"
    assert progress[-1][0] == progress[-1][1] > len(BIG)
    assert_clean(root)

    make_game(tmp_path / "games", "g", "2.0", entries("2.0"))
    assert GameFiles(root).install() is True
    assert (root / "local" / "VERSION.txt").read_text() == "2.0"
    assert_clean(root)

    GameFiles(root).uninstall()
    assert not (root / "local").exists()
    assert (root / "g.rar").exists(), "uninstall keeps the download"

    GameFiles(root).remove_download()
    assert not (root / "version.ini").exists()
    assert not list(root.glob("*.rar"))
    with pytest.raises(InvalidState):
        GameFiles(root).remove_download()
    with pytest.raises(InvalidState):
        GameFiles(root).uninstall()


INSTALL_STEPS_OLD = ["intent", "staging", "mid-unpack", "unpacked-0"]
INSTALL_STEPS_NEW = ["promoted", "cleaned"]


@pytest.mark.parametrize("kill_at", INSTALL_STEPS_OLD + INSTALL_STEPS_NEW)
def test_fresh_install_killed(tmp_path: Path, kill_at: str) -> None:
    new = expected_tree(tmp_path, "1.0")
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    archives_before = tree(root)
    assert run_child(root, "install", kill_at) == -signal.SIGKILL
    recover(root)
    assert_clean(root)
    if kill_at in INSTALL_STEPS_OLD:
        assert not (root / "local").exists()
    else:
        assert tree(root / "local") == new
    assert {k: v for k, v in tree(root).items() if not k.startswith("local")} == archives_before


UPDATE_STEPS_OLD = ["intent", "staging", "mid-unpack", "unpacked-0", "marked", "backed-up"]


@pytest.mark.parametrize("kill_at", UPDATE_STEPS_OLD + INSTALL_STEPS_NEW)
def test_update_killed_ends_old_or_new(tmp_path: Path, kill_at: str) -> None:
    old = expected_tree(tmp_path, "1.0")
    new = expected_tree(tmp_path, "2.0")
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    (root / "local" / "savegame.dat").write_bytes(b"player progress")
    old = tree(root / "local")
    make_game(tmp_path / "games", "g", "2.0", entries("2.0"))
    assert run_child(root, "install", kill_at) == -signal.SIGKILL
    recover(root)
    assert_clean(root)
    expected = old if kill_at in UPDATE_STEPS_OLD else new
    assert tree(root / "local") == expected


@pytest.mark.parametrize(
    ("kill_at", "installed"),
    [("intent", True), ("marked", True), ("moved", False), ("deleted", False)],
)
def test_uninstall_killed(tmp_path: Path, kill_at: str, installed: bool) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    before = tree(root / "local")
    assert run_child(root, "uninstall", kill_at) == -signal.SIGKILL
    recover(root)
    assert_clean(root)
    if installed:
        assert tree(root / "local") == before
    else:
        assert not (root / "local").exists()


@pytest.mark.parametrize("kill_at", ["intent", "deleted"])
def test_remove_download_killed(tmp_path: Path, kill_at: str) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    assert run_child(root, "remove_download", kill_at) == -signal.SIGKILL
    recover(root)
    assert not (root / "version.ini").exists()
    assert not list(root.glob("*.rar"))
    assert read_intent(root) is None


def test_foreign_staging_directories_are_never_deleted(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    foreign = root / INSTALLING
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    with pytest.raises(InvalidState, match="not created by lanspread"):
        GameFiles(root).install()
    assert (foreign / "precious.txt").read_text() == "mine"
    assert recover(root) is None
    assert (foreign / "precious.txt").read_text() == "mine"

    backup = root / BACKUP
    backup.mkdir()
    (backup / "precious.txt").write_text("mine too")
    (root / INTENT).write_text('{"op": "update", "started": 0}')
    recover(root)
    assert (backup / "precious.txt").read_text() == "mine too"
    assert (foreign / "precious.txt").read_text() == "mine"


def test_torn_intent_recovers_conservatively(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    before = tree(root / "local")
    (root / INTENT).write_bytes(b'{"op": "upd')
    recover(root)
    assert tree(root / "local") == before
    assert_clean(root)


def test_unsafe_archive_leaves_previous_install(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    before = tree(root / "local")
    (root / "g.rar").unlink()
    write_rar5(root / "g.rar", [Entry("ok.txt", b"x"), Entry("../../escape.txt", b"x")])
    with pytest.raises(UnsafeArchive):
        GameFiles(root).install()
    assert tree(root / "local") == before
    assert not (tmp_path / "escape.txt").exists()
    assert_clean(root)


def test_install_into_full_disk_is_refused_cleanly(small_tmpfs: Path) -> None:
    root = small_tmpfs / "g"
    root.mkdir()
    write_rar5(root / "g.rar", [Entry("a.bin", os.urandom(1 << 20))])
    (root / "version.ini").write_text("1.0")
    with pytest.raises(DiskFull):
        GameFiles(root).install()
    assert (root / "g.rar").stat().st_size > 1 << 20
    assert not (root / "local").exists()
    assert_clean(root)


@pytest.mark.parametrize("sample", ["rar5-dups.rar", "rar5-hlink.rar"])
def test_file_copies_and_hard_links_install_as_files_of_their_own(
    tmp_path: Path, sample: str
) -> None:
    root = tmp_path / "g"
    root.mkdir()
    shutil.copy(SAMPLES / sample, root)
    (root / "version.ini").write_text("1.0\n")
    progress: list[tuple[int, int]] = []
    GameFiles(root, progress=lambda d, t: progress.append((d, t))).install()
    installed = installed_files(root / "local")
    assert installed.pop(INSTALLED_VERSION) == b"1.0\n"
    assert installed == rarfile_reading(root / sample)
    total = sum(len(data) for data in installed.values())
    assert progress[-1] == (total, total), "every copy counts in the progress"
    assert_clean(root)


def test_ten_thousand_copies_of_one_file_are_refused_before_writing(
    make_tmpfs: Callable[[int], Path],
) -> None:
    """Each copy is a header of some 40 bytes: the archive is a thousandth of the tree it
    would unpack to. The disk-space check counts every copy at its file's size."""
    root = make_tmpfs(16) / "g"
    root.mkdir()
    copied = os.urandom(1 << 20)
    members = [Raw("data/file.bin", stat.S_IFREG | 0o644, copied)]
    members += [
        file_copy(f"data/copy-{i}.bin", "data/file.bin", len(copied)) for i in range(10_000)
    ]
    write_raw_rar5(root / "g.rar", members)
    (root / "version.ini").write_text("1.0\n")
    expanded = 10_001 * len(copied)
    assert (root / "g.rar").stat().st_size < expanded // 1000
    free = free_bytes(root)
    with pytest.raises(
        DiskFull, match=f"g needs {expanded} bytes to install, only {free} are free"
    ):
        GameFiles(root).install()
    assert free_bytes(root) == free, "nothing was written"
    assert not (root / "local").exists()
    assert_clean(root)


def test_a_set_with_a_missing_volume_is_refused_by_its_name(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    before = tree(root / "local")
    (root / "g.rar").unlink()
    for path in SAMPLES.glob("rar5-vols.part*.rar"):
        shutil.copy(path, root)
    (root / "rar5-vols.part2.rar").unlink()
    with pytest.raises(ArchiveError) as refused:
        GameFiles(root).install()
    assert "the volume rar5-vols.part2.rar is missing" in str(refused.value)
    assert tree(root / "local") == before
    assert_clean(root)


def test_remove_download_of_an_unfinished_download_frees_its_resume_state(
    tmp_path: Path,
) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    (root / "version.ini").unlink()
    (root / RESUME_FILE).write_text('{"verified": [[0, 0]]}')
    (root / "notes.txt").write_text("the user's own file")
    GameFiles(root).remove_download()
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_fsync_tree_skips_fifos_and_other_special_files(tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes: the job hung, cancel and SIGTERM too."""
    staged = tmp_path / "staged"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "file.bin").write_bytes(b"data")
    os.mkfifo(staged / "sub" / "pipe")
    os.symlink("file.bin", staged / "sub" / "link")
    done = threading.Event()

    def sync() -> None:
        fsync_tree(staged)
        done.set()

    threading.Thread(target=sync, daemon=True).start()
    try:
        assert done.wait(30), "fsync_tree blocked on a FIFO"
    finally:
        if not done.is_set():  # let the blocked open return
            os.close(os.open(staged / "sub" / "pipe", os.O_WRONLY))


def crafted_game(root: Path, with_fifo: bool) -> None:
    """The attack found by hand: 2 GiB declared by a directory plus a link chose bsdtar,
    which as root installed a setuid binary; a FIFO hung the install."""
    for old in root.glob("*.rar"):
        old.unlink()
    members = [
        directory("big/", declared_size=LARGE_ENTRY),
        setuid_file("bin/su-game", b"#!/bin/sh\nid\n"),
        symlink("start", "bin/su-game"),
    ]
    if with_fifo:
        members.append(fifo("bin/pipe"))
    write_raw_rar5(root / "g.rar", members)


def test_crafted_archive_with_a_fifo_is_refused_and_the_install_kept(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    GameFiles(root).install()
    before = tree(root / "local")
    crafted_game(root, with_fifo=True)
    with pytest.raises(UnsafeArchive, match="'bin/pipe' is a FIFO"):
        GameFiles(root).install()
    assert tree(root / "local") == before
    assert_clean(root)


def test_crafted_archive_installs_without_set_id_bits(tmp_path: Path) -> None:
    root = make_game(tmp_path / "games", "g", "1.0", entries("1.0"))
    crafted_game(root, with_fifo=False)
    files = GameFiles(root)
    files.install()
    assert files.backends == ["unar"]
    local = root / "local"
    assert stat.S_IMODE((local / "bin" / "su-game").stat().st_mode) == 0o755
    assert os.readlink(local / "start") == "bin/su-game"
    assert (local / "big").is_dir()
    for path in [local, *local.rglob("*")]:
        st = path.lstat()
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), path
        assert st.st_uid == os.geteuid(), path
    assert_clean(root)


def stuck_tool_game(game_dir: Path) -> Path:
    """A game unar unpacks (a link keeps rarfile out): a big file, then `z.txt`, where
    the test puts a FIFO nobody reads, so unar blocks as a hung tool would."""
    root = game_dir / CATALOG_GAME
    root.mkdir(parents=True)
    write_raw_rar5(
        root / "game.rar",
        [
            Raw("a.bin", stat.S_IFREG | 0o644, bytes(256 << 20)),
            Raw("z.txt", stat.S_IFREG | 0o644, b"z"),
            symlink("link", "z.txt"),
        ],
    )
    (root / "version.ini").write_text("1.0")
    return root


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def block_unar(root: Path, daemon_pid: int) -> int:
    """Plant the FIFO as soon as staging appears; return unar's pid once it blocks."""
    staging = root / INSTALLING
    wait_for(staging.is_dir, 60, "the install to start", every=0.001)
    os.mkfifo(staging / "z.txt")
    blocked: list[int] = []

    def blocked_on_the_fifo() -> bool:
        tools = subprocess.run(
            ["pgrep", "-P", str(daemon_pid), "-x", "unar"], capture_output=True, text=True
        ).stdout.split()
        # A FIFO's open waits in the kernel's wait_for_partner.
        if tools and Path(f"/proc/{tools[0]}/wchan").read_text() == "wait_for_partner":
            blocked.append(int(tools[0]))
        return bool(blocked)

    wait_for(blocked_on_the_fifo, 60, "unar to reach the FIFO")
    assert (staging / "a.bin").stat().st_size == 256 << 20
    return blocked[0]


@pytest.mark.parametrize("how", ["cancel", "SIGTERM"])
def test_cancel_and_sigterm_stop_a_running_tool_within_5_s(
    daemon: Daemon, game_dir: Path, how: str
) -> None:
    root = stuck_tool_game(game_dir)
    daemon.start()
    assert daemon.ctl("install", "--no-wait", CATALOG_GAME).returncode == 0
    assert daemon.proc is not None
    tool = block_unar(root, daemon.proc.pid)
    asked = time.monotonic()
    if how == "cancel":
        assert daemon.ctl("cancel", CATALOG_GAME).returncode == 0
        wait_for(lambda: not (root / INTENT).exists(), 5 - (time.monotonic() - asked), "cancel")
        assert daemon.ctl_json("show", CATALOG_GAME)["installed"] is False
    else:
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - asked < 5, "SIGTERM was not honoured in time"
    assert gone(tool), "unar outlived its job"
    assert not (root / INSTALLING).exists()
    assert not (root / "local").exists()
