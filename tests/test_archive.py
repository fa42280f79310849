from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
import rarfile

from lanspreadd.archive.extract import (
    LARGE_ENTRY,
    Extraction,
    Listing,
    Member,
    choose_backend,
    list_archive,
    safe_member_path,
)
from lanspreadd.archive.provider import RarStreamProvider, TreeEntry
from lanspreadd.archive.writer import Entry, write_rar4, write_rar5, write_rar5_volumes
from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, UnpackStalled, UnsafeArchive
from tests.crafted_rar import (
    REDIR_HARD_LINK,
    Raw,
    directory,
    fifo,
    file_copy,
    hard_link,
    setuid_file,
    symlink,
    write_raw_rar4,
    write_raw_rar5,
)
from tests.support import SAMPLES, wait_for

REPO = Path(__file__).resolve().parents[1]

ENTRIES = [
    Entry("dir/"),
    Entry("dir/a.bin", os.urandom(70_000)),
    Entry("run.sh", b"#!/bin/sh\n", 0o755),
    Entry("with space/ünïcode.txt", b"hello"),
]


def extract(archive: Path, dest: Path, backend: str | None = None) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    return Extraction(list_archive(archive), dest, lambda _n: None, threading.Event()).run(backend)


def assert_matches_listing(archive: Path, dest: Path) -> None:
    """Every file unpacked with the size and CRC32 the archive header records."""
    listing = list_archive(archive)
    assert listing.members
    for member in listing.members:
        path = dest.joinpath(*member.path.parts)
        if member.is_dir:
            assert path.is_dir()
        else:
            data = path.read_bytes()
            assert len(data) == member.size
            assert zlib.crc32(data) == member.crc, member.path


@pytest.mark.parametrize("backend", ["rarfile", "unar", "bsdtar"])
@pytest.mark.parametrize("writer", [write_rar4, write_rar5])
def test_stored_archives_written_by_helper(tmp_path: Path, backend: str, writer: object) -> None:
    archive = tmp_path / "game.rar"
    writer(archive, ENTRIES)  # type: ignore[operator]
    assert extract(archive, tmp_path / "out", backend) == backend
    out = tmp_path / "out"
    assert (out / "dir" / "a.bin").read_bytes() == ENTRIES[1].data
    assert (out / "with space" / "ünïcode.txt").read_bytes() == b"hello"
    assert os.access(out / "run.sh", os.X_OK)


@pytest.mark.parametrize("backend", ["rarfile", "unar"])
def test_stored_rar5_volumes_written_by_helper(tmp_path: Path, backend: str) -> None:
    volumes = write_rar5_volumes(tmp_path / "game.part1.rar", ENTRIES, 20_000)
    assert len(volumes) > 2
    listing = list_archive(volumes[0])
    assert listing.volumes == tuple(volumes)
    extract(volumes[0], tmp_path / "out", backend)
    assert (tmp_path / "out" / "dir" / "a.bin").read_bytes() == ENTRIES[1].data


@pytest.mark.parametrize(
    ("sample", "expected_backend"),
    [
        ("rar3-solid.rar", "unar"),
        ("rar5-solid.rar", "unar"),
        ("rar3-vols.part1.rar", "rarfile"),
        ("rar5-vols.part1.rar", "rarfile"),
        ("rar3-subdirs.rar", "rarfile"),
        ("rar5-subdirs.rar", "rarfile"),
    ],
)
def test_rarfile_samples(tmp_path: Path, sample: str, expected_backend: str) -> None:
    for path in SAMPLES.glob(sample.split(".part")[0] + "*"):
        shutil.copy(path, tmp_path)
    archive = tmp_path / sample
    assert extract(archive, tmp_path / "out") == expected_backend
    assert_matches_listing(archive, tmp_path / "out")


@pytest.mark.parametrize("sample", ["rar3-vols.part1.rar", "rar5-vols.part1.rar"])
def test_multivolume_samples_with_unar(tmp_path: Path, sample: str) -> None:
    for path in SAMPLES.glob(sample.split(".part")[0] + "*"):
        shutil.copy(path, tmp_path)
    extract(tmp_path / sample, tmp_path / "out", "unar")
    assert_matches_listing(tmp_path / sample, tmp_path / "out")


def test_unar_numbered_siblings_are_kept_apart(tmp_path: Path) -> None:
    """unar 1.10 treats game1.rar and game2.rar as one volume set; we must not."""
    write_rar5(tmp_path / "game1.rar", [Entry("one.txt", b"1" * 1000)])
    write_rar5(tmp_path / "game2.rar", [Entry("two.txt", b"2" * 2000)])
    extract(tmp_path / "game1.rar", tmp_path / "out1", "unar")
    extract(tmp_path / "game2.rar", tmp_path / "out2", "unar")
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == ["one.txt"]
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["two.txt"]
    assert (tmp_path / "out2" / "two.txt").read_bytes() == b"2" * 2000
    assert not list(tmp_path.glob(".lanspread-links-*")), "private links are cleaned up"


def test_bsdtar_runs_without_the_double_dash_rarfile_adds(tmp_path: Path) -> None:
    """rarfile 4.5 passes `--` to bsdtar, which rejects it; our bsdtar back-end works."""
    shutil.copy(SAMPLES / "rar5-solid.rar", tmp_path)
    extract(tmp_path / "rar5-solid.rar", tmp_path / "out", "bsdtar")
    assert_matches_listing(tmp_path / "rar5-solid.rar", tmp_path / "out")


def _listing(size: int, stored: bool, volumes: int) -> Listing:
    member = Member(PurePosixPath("big.bin"), size, False, False, 0o644, 0, stored)
    paths = tuple(Path(f"g.part{i + 1}.rar") for i in range(volumes))
    return Listing(paths[0], (member,), True, paths)


def test_large_rar5_entries_avoid_unar() -> None:
    assert choose_backend(_listing(LARGE_ENTRY, stored=False, volumes=1)) == "bsdtar"
    assert choose_backend(_listing(LARGE_ENTRY - 1, stored=False, volumes=1)) == "unar"
    assert choose_backend(_listing(LARGE_ENTRY, stored=True, volumes=3)) == "rarfile"
    with pytest.raises(ArchiveError, match="2 GiB"):
        choose_backend(_listing(LARGE_ENTRY, stored=False, volumes=3))


def test_sizes_declared_by_directories_and_links_do_not_choose_the_backend(
    tmp_path: Path,
) -> None:
    """A directory claiming 2 GiB (plus a link, so rarfile cannot take it) chose bsdtar."""
    archive = tmp_path / "crafted.rar"
    write_raw_rar5(
        archive,
        [
            directory("big/", declared_size=LARGE_ENTRY),
            Raw("run", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
            symlink("link", "run"),
        ],
    )
    assert archive.stat().st_size < 300
    assert choose_backend(list_archive(archive)) == "unar"


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "C:/x", "", "./.", "a\x00b"]
)
def test_unsafe_member_names(name: str) -> None:
    with pytest.raises(UnsafeArchive):
        safe_member_path(name)


@pytest.mark.parametrize("writer", [write_rar4, write_rar5])
@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_unsafe_archives_are_refused_before_unpacking(
    tmp_path: Path, writer: object, name: str
) -> None:
    archive = tmp_path / "game" / "evil.rar"
    archive.parent.mkdir()
    writer(archive, [Entry("fine.txt", b"x"), Entry(name, b"pwned")])  # type: ignore[operator]
    with pytest.raises(UnsafeArchive):
        extract(archive, tmp_path / "game" / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "game" / "escape.txt").exists()
    assert not list((tmp_path / "game" / "out").iterdir())


@pytest.mark.parametrize("sample", ["rar3-symlink-unix.rar", "rar5-evil-symlink-traversal.rar"])
def test_links_pointing_out_are_refused(tmp_path: Path, sample: str) -> None:
    shutil.copy(SAMPLES / sample, tmp_path)
    with pytest.raises(UnsafeArchive, match="links outside"):
        list_archive(tmp_path / sample)


def test_corrupt_data_is_detected(tmp_path: Path) -> None:
    archive = tmp_path / "game.rar"
    payload = os.urandom(50_000)
    write_rar5(archive, [Entry("data.bin", payload)])
    raw = bytearray(archive.read_bytes())
    at = raw.find(payload[:64]) + 1000
    raw[at] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        extract(archive, tmp_path / "out", "rarfile")
    with pytest.raises(ArchiveError):
        extract(archive, tmp_path / "out2", "unar")


@pytest.mark.parametrize("cut", [10, 60, 0.5])
def test_truncated_archives(tmp_path: Path, cut: float) -> None:
    archive = tmp_path / "game.rar"
    write_rar5(archive, [Entry("data.bin", os.urandom(50_000)), Entry("b.txt", b"b")])
    raw = archive.read_bytes()
    keep = int(len(raw) * cut) if isinstance(cut, float) else cut
    archive.write_bytes(raw[:keep])
    with pytest.raises(ArchiveError):
        extract(archive, tmp_path / "out")


def test_not_a_rar_and_not_a_first_volume(tmp_path: Path) -> None:
    (tmp_path / "junk.rar").write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ArchiveError, match="not a readable RAR"):
        list_archive(tmp_path / "junk.rar")
    for path in SAMPLES.glob("rar5-vols.part*.rar"):
        shutil.copy(path, tmp_path)
    with pytest.raises(ArchiveError, match="first volume"):
        list_archive(tmp_path / "rar5-vols.part2.rar")


def test_cancel_stops_native_unpack(tmp_path: Path) -> None:
    archive = tmp_path / "big.rar"
    write_rar5(archive, [Entry("big.bin", bytes(16 << 20))])
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int) -> None:
        seen.append(done)
        cancel.set()

    (tmp_path / "out").mkdir()
    with pytest.raises(Cancelled):
        Extraction(list_archive(archive), tmp_path / "out", progress, cancel).run()
    assert seen and seen[-1] < 16 << 20


@pytest.mark.parametrize("backend", ["rarfile", "unar"])
def test_disk_full_is_named(tmp_path: Path, small_tmpfs: Path, backend: str) -> None:
    archive = tmp_path / "big.rar"
    write_rar5(archive, [Entry("big.bin", os.urandom(3 << 20))])
    with pytest.raises(DiskFull, match="no space left"):
        extract(archive, small_tmpfs / "out", backend)
    assert archive.stat().st_size > 3 << 20, "the archive is untouched"


def test_rarfile_reads_helper_archives_natively(tmp_path: Path) -> None:
    archive = tmp_path / "g.rar"
    write_rar4(archive, ENTRIES)
    with rarfile.RarFile(str(archive)) as rf:
        assert rf.read("dir/a.bin") == ENTRIES[1].data


KILLED_CHILD = """
import sys, threading
from pathlib import Path
from lanspreadd.archive.extract import Extraction, list_archive
archive, dest = Path(sys.argv[1]), Path(sys.argv[2])
def progress(done):
    print("progress", done, flush=True)
Extraction(list_archive(archive), dest, progress, threading.Event()).run("unar")
"""


def test_unpack_tool_dies_with_the_daemon(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    archive = tmp_path / "big.rar"
    write_rar5(archive, [Entry(f"f{i}.bin", bytes(64 << 20)) for i in range(8)])
    (tmp_path / "out").mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, str(archive), str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    child.stdout.readline()
    tools = subprocess.run(
        ["pgrep", "-P", str(child.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert tools, "unar is running under the daemon"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    wait_for(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in tools),
        10,
        "the unpack tool to die with the daemon",
    )


SPECIAL_MEMBERS = [
    (write_raw_rar5, fifo("game/pipe"), "a FIFO"),
    (write_raw_rar4, fifo("game/pipe"), "a FIFO"),
    (write_raw_rar5, Raw("game/tty", stat.S_IFCHR | 0o666), "a character device"),
    (write_raw_rar4, Raw("game/disk", stat.S_IFBLK | 0o660), "a block device"),
    (write_raw_rar5, Raw("game/sock", stat.S_IFSOCK | 0o755), "a socket"),
    # A hard link's mode is a file's; one that says FIFO is refused as what bsdtar makes.
    (write_raw_rar5, Raw("game/h", stat.S_IFIFO | 0o644, redir=(REDIR_HARD_LINK, "x")), "a FIFO"),
    (write_raw_rar5, Raw("game/r", stat.S_IFREG | 0o644, redir=(9, "x")), "a redirection"),
    # A RAR5 link mode with no link record, and a BeOS host's link, which rarfile
    # reads as files but bsdtar creates as links: their targets would go unchecked.
    (write_raw_rar5, Raw("game/l", stat.S_IFLNK | 0o777, b"/etc/shadow"), "a link whose"),
    (write_raw_rar4, Raw("game/l", stat.S_IFLNK | 0o777, b"/etc", host=5), "a link whose"),
]


@pytest.mark.parametrize(("writer", "member", "kind"), SPECIAL_MEMBERS)
def test_special_members_are_refused_by_name_before_unpacking(
    tmp_path: Path, writer: object, member: Raw, kind: str
) -> None:
    archive = tmp_path / "game.rar"
    writer(archive, [Raw("game/ok.txt", stat.S_IFREG | 0o644, b"fine"), member])  # type: ignore[operator]
    with pytest.raises(UnsafeArchive) as refused:
        list_archive(archive)
    assert f"{member.name!r} is {kind}" in str(refused.value)
    assert "game.rar" in str(refused.value)


def rarfile_reading(archive: Path) -> dict[str, bytes]:
    """Every file as rarfile itself reads it: it reads a copy or hard link as its file."""
    with rarfile.RarFile(str(archive)) as rf:
        return {info.filename: rf.read(info) for info in rf.infolist() if not info.is_dir()}


def installed_files(root: Path) -> dict[str, bytes]:
    """The installed files as a user sees them, each checked to be a file of its own:
    no link, no second name for one inode."""
    files = {}
    for path in root.rglob("*"):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            continue
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, (path, oct(st.st_mode))
        files[str(path.relative_to(root))] = path.read_bytes()
    return files


@pytest.mark.parametrize("backend", ["unar", "bsdtar"])
@pytest.mark.parametrize("sample", ["rar5-dups.rar", "rar5-hlink.rar"])
def test_file_copies_and_hard_links_install_as_copies(
    tmp_path: Path, sample: str, backend: str
) -> None:
    """WinRAR's -oi stores identical files once; unar made them links, bsdtar empty files
    or hard links. Installed, each is a file of its own with its file's bytes."""
    shutil.copy(SAMPLES / sample, tmp_path)
    archive = tmp_path / sample
    listing = list_archive(archive)
    assert choose_backend(listing) == "unar"
    assert listing.total_bytes == sum(len(data) for data in rarfile_reading(archive).values())
    extract(archive, tmp_path / "out", backend)
    installed = installed_files(tmp_path / "out")
    assert installed == rarfile_reading(archive)
    assert len(installed) == {"rar5-dups.rar": 9, "rar5-hlink.rar": 3}[sample]


COPIED = os.urandom(100_000)
WITH_COPIES = [
    directory("data/"),
    Raw("data/big.bin", stat.S_IFREG | 0o644, COPIED),
    Raw("bin/run", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
    # unar's link for this one pointed at data/sub/data/big.bin: the name is the archive's
    file_copy("data/sub/copy.bin", "data/big.bin", len(COPIED)),
    hard_link("other/link.bin", "data/big.bin", len(COPIED)),
    file_copy("bin/run-again", "bin/run", 10),
]


@pytest.mark.parametrize("backend", ["rarfile", "unar", "bsdtar"])
def test_crafted_copies_install_as_copies_with_every_backend(tmp_path: Path, backend: str) -> None:
    archive = tmp_path / "game.rar"
    write_raw_rar5(archive, WITH_COPIES)
    out = tmp_path / "out"
    assert extract(archive, out, backend) == backend
    assert installed_files(out) == rarfile_reading(archive)
    modes, owners = modes_and_owners(out)
    assert modes["bin/run"] == 0o755 and modes["bin/run-again"] == 0o644  # each its own mode
    assert modes["data/sub"] == modes["other"] == 0o755
    assert owners == {(os.geteuid(), out.stat().st_gid)}


@pytest.mark.parametrize("backend", ["rarfile", "unar", "bsdtar"])
def test_a_copy_of_a_copy_holds_the_file(tmp_path: Path, backend: str) -> None:
    """rarfile cannot read a copy of a copy; WinRAR copies the first copy from disk."""
    archive = tmp_path / "game.rar"
    write_raw_rar5(archive, [*WITH_COPIES, file_copy("chain.bin", "other/link.bin", len(COPIED))])
    listing = list_archive(archive)
    assert listing.members[-1].copy_of == PurePosixPath("data/big.bin")
    extract(archive, tmp_path / "out", backend)
    assert installed_files(tmp_path / "out")["chain.bin"] == COPIED


@pytest.mark.parametrize(
    ("members", "error", "complaint"),
    [
        ([hard_link("game/a", "/etc/shadow", 4)], UnsafeArchive, "is a hard link to '/etc/shadow'"),
        ([file_copy("game/a", "../../x", 4)], UnsafeArchive, "is a copy of '../../x', outside"),
        ([file_copy("game/a", "game/gone", 4)], ArchiveError, "which the archive does not hold"),
        ([directory("game/d/"), file_copy("game/a", "game/d", 0)], UnsafeArchive, "a directory"),
        ([symlink("game/l", "ok.txt"), hard_link("game/a", "game/l", 6)], UnsafeArchive, "a link"),
        (
            [
                file_copy("game/a", "game/b", 4),
                file_copy("game/b", "game/c", 4),
                file_copy("game/c", "game/b", 4),
            ],
            UnsafeArchive,
            "form a cycle",
        ),
    ],
)
def test_copies_of_what_is_no_file_of_the_archive_are_refused_by_name(
    tmp_path: Path, members: list[Raw], error: type[ArchiveError], complaint: str
) -> None:
    archive = tmp_path / "game.rar"
    write_raw_rar5(archive, [Raw("game/ok.txt", stat.S_IFREG | 0o644, b"fine"), *members])
    with pytest.raises(error) as refused:
        list_archive(archive)
    assert "game.rar: archive member 'game/" in str(refused.value)
    assert complaint in str(refused.value)


@pytest.mark.parametrize("missing", [2, 3])
@pytest.mark.parametrize("sample", ["rar3-vols", "rar5-vols"])
def test_a_missing_volume_is_named(tmp_path: Path, sample: str, missing: int) -> None:
    """rarfile stopped quietly at a missing volume, listing part of the game; then a
    bare 'No such file or directory'."""
    for path in SAMPLES.glob(f"{sample}.part*.rar"):
        shutil.copy(path, tmp_path)
    (tmp_path / f"{sample}.part{missing}.rar").unlink()
    with pytest.raises(ArchiveError) as refused:
        list_archive(tmp_path / f"{sample}.part1.rar")
    assert str(refused.value) == (
        f"{sample}.part1.rar: the volume {sample}.part{missing}.rar is missing; "
        "the set cannot be unpacked without it"
    )


def test_a_volume_gone_after_listing_is_named(tmp_path: Path) -> None:
    for path in SAMPLES.glob("rar5-vols.part*.rar"):
        shutil.copy(path, tmp_path)
    listing = list_archive(tmp_path / "rar5-vols.part1.rar")
    provider = RarStreamProvider([tmp_path / "rar5-vols.part1.rar"])
    (tmp_path / "rar5-vols.part2.rar").unlink()
    with pytest.raises(ArchiveError, match=r"the volume rar5-vols\.part2\.rar is missing"):
        Extraction(listing, tmp_path / "out", lambda _n: None, threading.Event()).run()
    with pytest.raises(ArchiveError, match=r"the volume rar5-vols\.part2\.rar is missing"):
        drain(provider.entries())


def test_special_files_found_after_unpacking_are_refused_not_opened(tmp_path: Path) -> None:
    """Should a tool read an archive differently from rarfile, the tree check still holds."""
    archive = tmp_path / "game.rar"
    write_rar5(archive, [Entry("ok.txt", b"fine")])
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "planted")
    with pytest.raises(UnsafeArchive, match="'planted' a FIFO"):
        extract(archive, tmp_path / "out")


HOSTILE_MODES = [
    setuid_file("bin/run", b"#!/bin/sh\n"),
    Raw("bin/sgid", stat.S_IFREG | stat.S_ISGID | 0o750, b"x"),
    Raw("data/owned.txt", stat.S_IFREG | 0o600, b"not yours", owner=(4242, 4343)),
    Raw("data/readonly.txt", stat.S_IFREG | 0o444, b"ro"),
    directory("shared/", 0o1777),
    directory("locked/", 0o555),
    Raw("locked/inside.txt", stat.S_IFREG | 0o644, b"in"),
]
NORMALISED = {
    "bin": 0o755,
    "bin/run": 0o755,
    "bin/sgid": 0o755,
    "data": 0o755,
    "data/owned.txt": 0o644,
    "data/readonly.txt": 0o644,
    "shared": 0o755,
    "locked": 0o755,
    "locked/inside.txt": 0o644,
}


def modes_and_owners(root: Path) -> tuple[dict[str, int], set[tuple[int, int]]]:
    modes = {}
    owners = set()
    for path in root.rglob("*"):
        st = path.lstat()
        modes[str(path.relative_to(root))] = stat.S_IMODE(st.st_mode)
        owners.add((st.st_uid, st.st_gid))
    return modes, owners


@pytest.mark.parametrize("backend", ["rarfile", "unar", "bsdtar"])
@pytest.mark.parametrize("writer", [write_raw_rar4, write_raw_rar5])
def test_owner_and_set_id_bits_are_never_restored(
    tmp_path: Path, backend: str, writer: object
) -> None:
    """bsdtar as root restored owners, set-id and sticky bits; unar the sticky bit."""
    archive = tmp_path / "game.rar"
    writer(archive, HOSTILE_MODES)  # type: ignore[operator]
    out = tmp_path / "out"
    assert extract(archive, out, backend) == backend
    modes, owners = modes_and_owners(out)
    assert modes == NORMALISED
    assert owners == {(os.geteuid(), out.stat().st_gid)}
    assert (out / "data" / "owned.txt").read_bytes() == b"not yours"


@pytest.mark.parametrize("backend", ["rarfile", "unar", "bsdtar"])
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("rar5-owner.rar", {"owner1.txt": 0o644, "owner2.txt": 0o644}),
        # Read-only Unix modes would keep a later uninstall out of ro_dir; the Windows
        # read-only attribute shares its bit with the Unix execute bit.
        ("rar5-readonly-unix.rar", {"ro_dir": 0o755, "ro_dir/ro_file.txt": 0o644}),
        ("rar3-readonly-unix.rar", {"ro_dir": 0o755, "ro_dir/ro_file.txt": 0o644}),
        ("rar5-readonly-win.rar", {"ro_dir": 0o755, "ro_dir/ro_file.txt": 0o644}),
    ],
)
def test_samples_install_with_our_owner_and_plain_modes(
    tmp_path: Path, backend: str, sample: str, expected: dict[str, int]
) -> None:
    shutil.copy(SAMPLES / sample, tmp_path)
    out = tmp_path / "out"
    extract(tmp_path / sample, out, backend)
    modes, owners = modes_and_owners(out)
    assert modes == expected
    assert owners == {(os.geteuid(), out.stat().st_gid)}


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def _running_tool(parent: int, name: str) -> int:
    """The pid of `name` started by `parent`, once it is exec'd."""
    found: list[int] = []

    def running() -> bool:
        for pid in _children(parent):
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.append(pid)
        return bool(found)

    wait_for(running, 30, f"{name} to run under {parent}")
    return found[0]


@pytest.fixture
def stuck_unar(tmp_path: Path) -> Iterator[tuple[Listing, Path]]:
    """A real compressed sample whose first member's path in the destination is a FIFO
    that nobody reads: unar blocks opening it, as a tool stuck on I/O would."""
    shutil.copy(SAMPLES / "rar5-solid.rar", tmp_path)
    listing = list_archive(tmp_path / "rar5-solid.rar")
    assert choose_backend(listing) == "unar"
    dest = tmp_path / "out"
    dest.mkdir()
    os.mkfifo(dest / "stest1.txt")
    yield listing, dest
    # Let a tool that is still blocked go on, should the code under test have hung.
    fd = os.open(dest / "stest1.txt", os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)


def _in_thread(work: object) -> tuple[threading.Event, list[BaseException]]:
    done = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, raised


def test_a_stuck_unpack_tool_is_stopped_with_a_named_error(
    stuck_unar: tuple[Listing, Path],
) -> None:
    listing, dest = stuck_unar
    extraction = Extraction(listing, dest, lambda _n: None, threading.Event(), stall_timeout=1.0)
    # Session fixtures (the booted machines) may have children of their own running.
    before = set(_children(os.getpid()))
    started = time.monotonic()
    done, raised = _in_thread(extraction.run)
    assert done.wait(30), "the stuck tool was never stopped"
    assert isinstance(raised[0], UnpackStalled), raised
    assert "unar wrote nothing for 1 s while unpacking rar5-solid.rar" in str(raised[0])
    assert 1.0 <= time.monotonic() - started < 30
    assert not [pid for pid in set(_children(os.getpid())) - before if _alive(pid)]


def test_cancel_stops_a_running_tool_within_5_s(stuck_unar: tuple[Listing, Path]) -> None:
    listing, dest = stuck_unar
    cancel = threading.Event()
    running = threading.Event()
    extraction = Extraction(listing, dest, lambda _n: running.set(), cancel)
    done, raised = _in_thread(extraction.run)
    assert running.wait(30)
    tool = _running_tool(os.getpid(), "unar")
    cancel.set()
    cancelled = time.monotonic()
    assert done.wait(30)
    assert time.monotonic() - cancelled < 5
    assert isinstance(raised[0], Cancelled), raised
    assert not _alive(tool)


CAPSET_DENIED = """
import sys, threading
from pathlib import Path
from tests.seccomp import deny_capset
from lanspreadd.archive.extract import Extraction, list_archive
from lanspreadd.archive.provider import RarStreamProvider
deny_capset()
archive, dest = Path(sys.argv[1]), Path(sys.argv[2])
def progress(done):
    print("progress", done, flush=True)
print(Extraction(list_archive(archive), dest, progress, threading.Event()).run(), flush=True)
for entry, pieces in RarStreamProvider([archive]).entries():
    print(entry.path, len(b"".join(pieces)), flush=True)
"""


def _capset_denied(archive: Path, dest: Path) -> subprocess.Popen[str]:
    """A daemon stand-in under the unit's ~@privileged filter: capset(2) fails."""
    return subprocess.Popen(
        [sys.executable, "-c", CAPSET_DENIED, str(archive), str(dest)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sample", ["rar3-solid.rar", "rar5-solid.rar"])
def test_compressed_archives_unpack_and_stream_where_capset_is_refused(
    tmp_path: Path, sample: str
) -> None:
    """Under the unit, `setpriv --pdeathsig` failed: exit 127, 'activate capabilities'."""
    shutil.copy(SAMPLES / sample, tmp_path)
    (tmp_path / "out").mkdir()
    child = _capset_denied(tmp_path / sample, tmp_path / "out")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("progress")]
    assert lines == ["unar", "stest1.txt 2048", "stest2.txt 2048"]
    assert_matches_listing(tmp_path / sample, tmp_path / "out")


def test_unpack_tool_dies_with_a_killed_daemon_without_capabilities(
    stuck_unar: tuple[Listing, Path],
) -> None:
    listing, dest = stuck_unar
    child = _capset_denied(listing.archive, dest)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("progress"), "unar never started"
        tool = _running_tool(child.pid, "unar")
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
        child.communicate()
    wait_for(lambda: not _alive(tool), 10, "the unpack tool to die with the daemon")


def test_stream_source_reports_the_tools_own_failure(tmp_path: Path) -> None:
    """A failing unar read as 'the archive ended early' on the source."""
    shutil.copy(SAMPLES / "rar5-solid.rar", tmp_path)
    archive = tmp_path / "rar5-solid.rar"
    provider = RarStreamProvider([archive])
    archive.write_bytes(b"\0" * archive.stat().st_size)  # the archive changed after listing
    with pytest.raises(ArchiveError, match=r"unar failed on rar5-solid\.rar \(exit 1\): \S"):
        drain(provider.entries())


def drain(entries: Iterator[tuple[TreeEntry, Iterator[bytes]]]) -> None:
    for _entry, pieces in entries:
        b"".join(pieces)


def test_stream_source_stops_a_stuck_unar(tmp_path: Path) -> None:
    """A stopped unar stands in for a hung one: the source's reader must not wait forever."""
    shutil.copy(SAMPLES / "rar5-solid.rar", tmp_path)
    children = Path(f"/proc/self/task/{threading.get_native_id()}/children")

    def started_here() -> set[int]:
        return {int(pid) for pid in children.read_text().split()}

    # Session fixtures (the booted machines) may have children of this thread running.
    before = started_here()
    for _attempt in range(10):
        provider = RarStreamProvider([tmp_path / "rar5-solid.rar"], stall_timeout=1.0)
        entries = provider.entries()
        next(entries)  # unar has been started by this thread
        (tool,) = started_here() - before
        os.kill(tool, signal.SIGSTOP)
        if _alive(tool):
            break
        entries.close()  # it finished before it could be stopped: try again
    else:
        pytest.fail("unar always finished before it could be stopped")
    started = time.monotonic()
    with pytest.raises(UnpackStalled, match="unar wrote nothing for 1 s"):
        drain(entries)
    assert time.monotonic() - started < 30
    assert not _alive(tool)


def test_stream_source_catches_a_truncated_archive_unar_calls_fine(tmp_path: Path) -> None:
    """unar -o - exits 0 on a truncated archive; sizes and CRCs catch it."""
    shutil.copy(SAMPLES / "rar5-solid.rar", tmp_path)
    archive = tmp_path / "rar5-solid.rar"
    provider = RarStreamProvider([archive])
    archive.write_bytes(archive.read_bytes()[:150])
    assert (
        subprocess.run(["unar", "-q", "-o", "-", str(archive)], capture_output=True).returncode == 0
    )
    with pytest.raises(ArchiveError, match=r"ended early|CRC"):
        drain(provider.entries())
