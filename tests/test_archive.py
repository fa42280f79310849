from __future__ import annotations

import os
import shutil
import threading
import zlib
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
from lanspreadd.archive.writer import Entry, write_rar4, write_rar5, write_rar5_volumes
from lanspreadd.errors import ArchiveError, Cancelled, DiskFull, UnsafeArchive
from tests.support import SAMPLES

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
    import time

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
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in tools):
        assert time.monotonic() < deadline, "the unpack tool outlived the daemon"
        time.sleep(0.05)
