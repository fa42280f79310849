"""Stream install: frames, the one-pass RAR provider, the receiver, and real daemons."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanspreadd.app.stream_install import StreamReceiver
from lanspreadd.archive.extract import Extraction, free_bytes, list_archive
from lanspreadd.archive.provider import RarStreamProvider
from lanspreadd.core.install import BACKUP, INSTALLING, INTENT, GameFiles
from lanspreadd.core.library import INSTALLED_VERSION
from lanspreadd.errors import ArchiveError, DiskFull, PeerError
from lanspreadd.protocol import stream
from lanspreadd.protocol.errors import RemoteProtocolError
from tests.crafted_rar import Raw, file_copy, write_raw_rar5
from tests.support import SAMPLES, Daemon, make_game, tree, wait_for
from tests.test_archive import installed_files, rarfile_reading
from tests.test_peers import GAME, MiB, connect, game_entries

MakePeer = Callable[..., Daemon]


# ---- frames --------------------------------------------------------------------------
def test_frames_round_trip_and_order() -> None:
    frames: list[stream.Frame] = [
        stream.Dir("bin", 0o755),
        stream.FileStart("bin/run", 3, 0o755),
        stream.Data(b"abc"),
        stream.FileEnd(zlib.crc32(b"abc")),
        stream.Copy("bin/run-again", "bin/run", 0o755),
        stream.End(2, 6),
    ]
    data = b"".join(stream.encode(f) for f in frames)
    decoder = stream.StreamDecoder()
    got = []
    for i in range(0, len(data), 7):  # arbitrary split points
        got += decoder.feed(data[i : i + 7])
    assert got == frames
    assert decoder.finished


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        ([stream.Data(b"x")], "outside a file"),
        ([stream.FileStart("a", 1, 0), stream.Data(b"xy")], "more bytes"),
        ([stream.FileStart("a", 2, 0), stream.Data(b"x"), stream.FileEnd(0)], "announced"),
        ([stream.FileStart("a", 2, 0), stream.Dir("b", 0)], "before the file ended"),
        ([stream.FileStart("../etc/passwd", 1, 0)], "escaping"),
        ([stream.FileStart("/abs", 1, 0)], "absolute"),
        ([stream.Dir(".lanspread_owned", 0)], "reserved"),
        ([stream.End(0, 0), stream.Dir("a", 0)], "after the end"),
        ([stream.Copy("a", "../etc/shadow", 0)], "escaping"),
        ([stream.Copy("/abs", "a", 0)], "absolute"),
        ([stream.FileStart("a", 2, 0), stream.Copy("b", "a", 0)], "before the file ended"),
    ],
)
def test_hostile_streams_are_refused(frames: list[stream.Frame], complaint: str) -> None:
    data = b"".join(stream.encode(f) for f in frames)
    with pytest.raises(RemoteProtocolError, match=complaint):
        stream.StreamDecoder().feed(data)


@pytest.mark.parametrize(
    ("length", "names"),
    [(stream.MAX_PATH + 1, b"a" * (stream.MAX_PATH + 1) + b"b"), (5, b"abc"), (1, b"a" * 5000)],
)
def test_copy_frames_with_bad_path_lengths_are_refused(length: int, names: bytes) -> None:
    payload = stream.COPY.pack(0o644, length) + names
    with pytest.raises(RemoteProtocolError, match="bad path lengths"):
        stream.StreamDecoder().feed(stream.HEADER.pack(stream.T_COPY, len(payload)) + payload)


def test_oversized_frame_header_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        stream.StreamDecoder().feed(stream.HEADER.pack(stream.T_DATA, 64 << 20))


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_fuzz_decoder_only_raises_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        stream.StreamDecoder().feed(data)


# ---- the one-pass provider -----------------------------------------------------------
def collect(provider: RarStreamProvider) -> dict[str, bytes | None]:
    """The tree a receiver builds: a copy holds the bytes of the file it names."""
    out: dict[str, bytes | None] = {}
    for entry, pieces in provider.entries():
        data = b"".join(pieces)
        if entry.copy_of is not None:
            assert not data, "a copy sends no bytes of its own"
            data = out[entry.copy_of] or b""
        out[entry.path] = None if entry.is_dir else data
    return out


def reference(archive: Path, dest: Path) -> dict[str, bytes | None]:
    dest.mkdir()
    Extraction(list_archive(archive), dest, lambda _n: None, threading.Event()).run()
    return tree(dest)


@pytest.mark.parametrize(
    ("sample", "unar_runs"),
    [
        ("rar3-solid.rar", 1),
        ("rar5-solid.rar", 1),
        ("rar3-vols.part1.rar", 0),
        ("rar5-vols.part1.rar", 0),
        ("rar5-subdirs.rar", 0),
        ("rar5-dups.rar", 1),
        ("rar5-hlink.rar", 1),
    ],
)
def test_provider_decompresses_each_archive_once(
    tmp_path: Path, sample: str, unar_runs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in SAMPLES.glob(sample.split(".part")[0] + "*"):
        shutil.copy(path, tmp_path)
    runs: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(cmd: list[str], *args: object, **kwargs: object) -> object:
        if "unar" in cmd:
            runs.append(cmd)
        return real_popen(cmd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    streamed = collect(RarStreamProvider([tmp_path / sample]))
    assert len(runs) == unar_runs, "one decompression per archive, never one per file"
    monkeypatch.undo()
    expected = reference(tmp_path / sample, tmp_path / "ref")
    assert {k: v for k, v in streamed.items() if v is not None} == {
        k: v for k, v in expected.items() if v is not None
    }


# ---- the receiver, on a real socket pair ---------------------------------------------
def serve_frames(sock: socket.socket, frames: list[stream.Frame], close_early: bool) -> None:
    with sock, contextlib.suppress(OSError):  # the receiver may hang up on a bad stream
        data = b"".join(stream.encode(f) for f in frames)
        sock.sendall(data[: len(data) // 2] if close_early else data)


def receive(
    root: Path, frames: list[stream.Frame], close_early: bool = False, total: int | None = None
) -> None:
    """`total`: what the source announced; by default the bytes of its Data frames."""
    ours, theirs = socket.socketpair()
    sender = threading.Thread(target=serve_frames, args=(theirs, frames, close_early))
    sender.start()
    try:
        if total is None:
            total = sum(len(f.data) for f in frames if isinstance(f, stream.Data))
        receiver = StreamReceiver(ours, threading.Event(), lambda _d, _t: None, total)
        GameFiles(root).replace_local(receiver.fill, "stream-install")
    finally:
        ours.close()
        sender.join()


def good_frames(payload: bytes) -> list[stream.Frame]:
    return [
        stream.Dir("data", 0o755),
        stream.FileStart("data/big.bin", len(payload), 0o644),
        *[stream.Data(payload[i : i + MiB]) for i in range(0, len(payload), MiB)],
        stream.FileEnd(zlib.crc32(payload)),
        stream.End(1, len(payload)),
    ]


def assert_settled(root: Path) -> None:
    for name in (INSTALLING, BACKUP, INTENT, "version.ini"):
        assert not (root / name).exists(), name
    assert not list(root.glob("*.rar"))


@pytest.mark.parametrize("failure", ["corrupt", "closed", "hostile", "error"])
def test_receiver_failures_keep_the_previous_install(tmp_path: Path, failure: str) -> None:
    root = tmp_path / GAME
    root.mkdir()
    old = os.urandom(3 * MiB)
    receive(root, good_frames(old))
    before = tree(root / "local")
    new = os.urandom(3 * MiB)
    frames = good_frames(new)
    if failure == "corrupt":
        frames[-2] = stream.FileEnd(zlib.crc32(new) ^ 1)
    elif failure == "hostile":
        frames.insert(0, stream.FileStart("../escape.bin", 1, 0))
    elif failure == "error":
        frames[-1] = stream.StreamError("archive went bad on the source")
    expected = {"corrupt": ArchiveError, "closed": PeerError}.get(failure, PeerError)
    with pytest.raises(expected):
        receive(root, frames, close_early=failure == "closed")
    assert tree(root / "local") == before
    assert not (tmp_path / "escape.bin").exists()
    assert_settled(root)
    receive(root, good_frames(new))  # a retry starts again from scratch
    assert (root / "local" / "data" / "big.bin").read_bytes() == new


def with_copies(payload: bytes, copies: int) -> list[stream.Frame]:
    """good_frames, then `copies` copies of its one file (a RAR5 archive's -oi copies)."""
    frames = good_frames(payload)
    end = frames.pop()
    assert isinstance(end, stream.End)
    frames += [stream.Copy(f"data/copy-{i}.bin", "data/big.bin", 0o755) for i in range(copies)]
    return [*frames, stream.End(1 + copies, (1 + copies) * len(payload))]


def test_receiver_makes_copies_of_files_it_received(tmp_path: Path) -> None:
    root = tmp_path / GAME
    root.mkdir()
    payload = os.urandom(3 * MiB)
    receive(root, with_copies(payload, 3), total=4 * len(payload))
    local = root / "local"
    for name in ("big.bin", "copy-0.bin", "copy-1.bin", "copy-2.bin"):
        st = (local / "data" / name).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1, name
        assert (local / "data" / name).read_bytes() == payload, name
    assert stat.S_IMODE((local / "data" / "copy-0.bin").stat().st_mode) == 0o755
    assert_settled(root)


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        # Ten copies of 1 MiB where the source announced room for one: copies cost the
        # source nothing to send, the receiver checked its disk for what was announced.
        (with_copies(bytes(MiB), 10), "more than the 1048576 bytes it announced"),
        ([stream.Copy("data/copy.bin", "data/nothing.bin", 0o644)], "a file it never sent"),
        ([*good_frames(bytes(MiB))[:-1], stream.Copy("../x", "data/big.bin", 0)], "bad stream"),
    ],
)
def test_receiver_refuses_copies_it_cannot_trust(
    tmp_path: Path, frames: list[stream.Frame], complaint: str
) -> None:
    root = tmp_path / GAME
    root.mkdir()
    with pytest.raises(PeerError, match=complaint):
        receive(root, frames, total=MiB)
    assert not (root / "local").exists()
    assert not (tmp_path / "x").exists()
    assert_settled(root)


def test_receiver_on_a_full_disk(make_tmpfs: Callable[[int], Path]) -> None:
    root = make_tmpfs(4) / GAME
    root.mkdir()
    with pytest.raises(DiskFull):
        receive(root, good_frames(os.urandom(6 * MiB)))
    assert not (root / "local").exists()
    assert_settled(root)


# ---- real daemons ----------------------------------------------------------------------
def seed_sample(peer: Daemon, sample: str) -> Path:
    root = peer.game_dir / GAME
    root.mkdir(parents=True)
    for path in SAMPLES.glob(sample.split(".part")[0] + "*"):
        shutil.copy(path, root)
    (root / "version.ini").write_text("1.0\n")
    return root


@pytest.mark.parametrize(
    "sample",
    [
        "helper-rar5",
        "rar3-solid.rar",
        "rar5-solid.rar",
        "rar5-vols.part1.rar",
        "rar5-dups.rar",
        "rar5-hlink.rar",
    ],
)
def test_stream_install_between_daemons(make_peer: MakePeer, tmp_path: Path, sample: str) -> None:
    source, receiver = make_peer("source"), make_peer("receiver")
    if sample == "helper-rar5":
        root = make_game(source.game_dir, GAME, "1.0", game_entries(5 * MiB))
        archive = root / f"{GAME}.rar"
    else:
        root = seed_sample(source, sample)
        archive = root / sample
    expected = reference(archive, tmp_path / "expected")
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 1, 10, "the source")
    assert receiver.ctl_json("stream-install", GAME)["state"] == "finished"
    got = receiver.game_dir / GAME
    # The installed version is recorded, so a LocalOnly game can still show it.
    assert tree(got / "local") == expected | {INSTALLED_VERSION: b"1.0\n"}
    if sample != "helper-rar5":
        # Copies and hard links too: files of their own, as rarfile reads them.
        installed = installed_files(got / "local")
        assert installed.pop(INSTALLED_VERSION) == b"1.0\n"
        assert installed == rarfile_reading(archive)
    assert_settled(got)
    shown = receiver.ctl_json("show", GAME)
    assert (shown["installed"], shown["downloaded"], shown["availability"]) == (
        True,
        False,
        "LocalOnly",
    )
    assert shown["installed_version"] == "1.0"
    # LocalOnly is never served: the source sees no game from the receiver.
    peers = source.ctl_json("peers")
    assert peers[0]["games"] == {}


def test_stream_install_of_a_set_missing_a_volume_names_it(make_peer: MakePeer) -> None:
    source, receiver = make_peer("source"), make_peer("receiver")
    root = seed_sample(source, "rar5-vols.part1.rar")
    (root / "rar5-vols.part2.rar").unlink()
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 1, 10, "the source")
    failed = receiver.ctl("--json", "stream-install", GAME)
    assert failed.returncode == 1, failed.stderr
    outcome = json.loads(failed.stdout)
    assert outcome["state"] == "failed"
    assert "the volume rar5-vols.part2.rar is missing" in outcome["error_message"]
    assert_settled(receiver.game_dir / GAME)


def test_stream_install_of_ten_thousand_copies_is_refused_before_writing(
    make_peer: MakePeer, make_tmpfs: Callable[[int], Path]
) -> None:
    """Copies cost the source nothing to send: the receiver's disk check counts them."""
    source, receiver = make_peer("source"), make_peer("receiver")
    receiver.game_dir = make_tmpfs(16)
    root = source.game_dir / GAME
    root.mkdir(parents=True)
    copied = os.urandom(MiB)
    members = [Raw("data/file.bin", 0o100644, copied)]
    members += [file_copy(f"data/copy-{i}.bin", "data/file.bin", MiB) for i in range(10_000)]
    write_raw_rar5(root / f"{GAME}.rar", members)
    (root / "version.ini").write_text("1.0\n")
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 1, 30, "the source")
    free = free_bytes(receiver.game_dir)
    failed = receiver.ctl("--json", "stream-install", GAME)
    assert failed.returncode == 1, failed.stderr
    outcome = json.loads(failed.stdout)
    assert outcome["state"] == "failed"
    assert outcome["error_name"] == "org.lanspread.Lanspread1.Error.DiskFull"
    assert f"needs {10_001 * MiB} bytes to install" in outcome["error_message"]
    assert free_bytes(receiver.game_dir) == free, "nothing was written"
    assert not (receiver.game_dir / GAME / "local").exists()
    assert_settled(receiver.game_dir / GAME)


@pytest.mark.slow
def test_stream_install_cancel_and_source_death(make_peer: MakePeer) -> None:
    slow = ("--upload-limit", str(8 * MiB))
    first, second = make_peer("first", extra_args=slow), make_peer("second")
    receiver = make_peer("receiver")
    root = make_game(first.game_dir, GAME, "1.0", game_entries(48 * MiB))
    for peer in (first, second, receiver):
        peer.start()
    connect(receiver, first)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 1, 10, "the source")

    receiver.ctl("stream-install", "--no-wait", GAME)
    staging = receiver.game_dir / GAME / INSTALLING
    wait_for(staging.exists, 20, "the stream to start")
    assert receiver.ctl("cancel", GAME).returncode == 0
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 20, "the cancel")
    assert receiver.ctl_json("show", GAME)["installed"] is False
    assert_settled(receiver.game_dir / GAME)

    receiver.ctl("stream-install", "--no-wait", GAME)
    wait_for(staging.exists, 20, "the second stream to start")
    first.stop(signal.SIGKILL)
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 60, "the failure")
    assert receiver.ctl_json("show", GAME)["installed"] is False
    assert_settled(receiver.game_dir / GAME)
    assert "stream-install of sample-game failed" in receiver.stderr()

    shutil.copytree(root, second.game_dir / GAME)
    wait_for(lambda: second.ctl_json("show", GAME)["availability"] == "Ready", 10, "copy")
    connect(receiver, second)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] >= 1, 10, "the new source")
    assert receiver.ctl_json("stream-install", GAME)["state"] == "finished"


def test_low_disk_download_streams_and_peak_use_stays_near_install_size(
    make_peer: MakePeer, make_tmpfs: Callable[[int], Path]
) -> None:
    size = 40 * MiB
    source = make_peer("source", extra_args=("--upload-limit", str(32 * MiB)))
    receiver = make_peer("receiver")
    receiver.game_dir = make_tmpfs(64)  # room for the install, not for archives + install
    make_game(source.game_dir, GAME, "1.0", game_entries(size))
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: receiver.ctl_json("show", GAME)["sources"] == 1, 10, "the source")

    # Fill the disk so that the archives and the install cannot both fit.
    filler = receiver.game_dir / "filler.bin"
    st = os.statvfs(receiver.game_dir)
    free = st.f_bavail * st.f_frsize
    filler.write_bytes(bytes(free - size - 20 * MiB))
    base_used = _used(receiver.game_dir)

    peak = [0]
    stop = threading.Event()

    def sample_usage() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _used(receiver.game_dir) - base_used)

    sampler = threading.Thread(target=sample_usage)
    sampler.start()
    try:
        result = receiver.ctl_json("download", "--install", GAME)
    finally:
        stop.set()
        sampler.join()
    assert result["state"] == "finished"
    assert "will be stream-installed instead" in receiver.stderr()
    shown = receiver.ctl_json("show", GAME)
    assert shown["availability"] == "LocalOnly"
    installed = sum(p.stat().st_size for p in (receiver.game_dir / GAME).rglob("*") if p.is_file())
    assert peak[0] <= installed * 1.05 + 2 * MiB, (peak[0], installed)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
