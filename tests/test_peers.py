"""Several real daemons on loopback, each on its own private bus."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lanspreadd.app.downloader import SOURCES_GRACE
from lanspreadd.archive.writer import Entry
from lanspreadd.core.hashes import HashCache
from lanspreadd.protocol.session import DEAD_AFTER, PING_INTERVAL
from tests.support import Daemon, free_port, make_game, tree, wait_for

GAME = "sample-game"
MiB = 1 << 20

MakePeer = Callable[..., Daemon]


def game_entries(size: int, seed: bytes = b"x") -> list[Entry]:
    block = os.urandom(MiB)
    data = (block * (size // MiB + 1))[:size]
    return [
        Entry("bin/"),
        Entry("bin/start.sh", b"#!/bin/sh\necho hi\n", 0o755),
        Entry("data/payload.bin", data),
        Entry("seed.txt", seed),
    ]


def seed_game(peer: Daemon, entries: list[Entry], version: str = "1.0") -> Path:
    return make_game(peer.game_dir, GAME, version, entries, fmt="rar5")


def copy_game(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / GAME
    shutil.copytree(src, dest)
    return dest


def downloads(root: Path) -> dict[str, bytes | None]:
    return {k: v for k, v in tree(root).items() if not k.startswith(("local", "."))}


def connect(a: Daemon, b: Daemon) -> str:
    result: dict[str, Any] = a.ctl_json("connect", f"{b.listen}:{b.port}")
    return str(result["peer_id"])


def sources_of(peer: Daemon) -> int:
    return int(peer.ctl_json("show", GAME)["sources"])


def test_mdns_discovery_download_and_install(lan_peer: MakePeer) -> None:
    source = lan_peer("alpha")
    receiver = lan_peer("beta")
    root = seed_game(source, game_entries(6 * MiB))
    source.start()
    receiver.start()
    assert receiver.ctl("wait-peers", "1", "--timeout", "20").returncode == 0
    peers = receiver.ctl_json("peers")
    assert [p["name"] for p in peers] == ["alpha"]
    assert peers[0]["games"] == {GAME: "1.0"}
    wait_for(lambda: sources_of(receiver) == 1, 10, "the source's snapshot")

    result = receiver.ctl_json("download", "--install", GAME)
    assert result["state"] == "finished"
    got = receiver.game_dir / GAME
    assert downloads(got) == downloads(root)
    assert (got / "local" / "data" / "payload.bin").stat().st_size == 6 * MiB
    shown = receiver.ctl_json("show", GAME)
    assert shown["availability"] == "Ready"
    assert shown["installed"] is True
    # The receiver now serves the game itself, with the hashes it verified while
    # downloading: it does not read the whole game again first.
    wait_for(lambda: source.ctl_json("peers")[0]["games"] == {GAME: "1.0"}, 10, "the new source")
    assert "hashing sample-game" not in receiver.stderr()
    assert "hashing sample-game before serving it" in source.stderr()


def test_three_sources_all_contribute(make_peer: MakePeer) -> None:
    sources = [make_peer(f"src{i}") for i in range(3)]
    receiver = make_peer("receiver")
    root = seed_game(sources[0], game_entries(48 * MiB))
    for other in sources[1:]:
        copy_game(root, other.game_dir)
    for peer in [*sources, receiver]:
        peer.start()
    for peer in sources:
        connect(receiver, peer)
    wait_for(lambda: sources_of(receiver) == 3, 10, "three sources")
    result = receiver.ctl_json("download", GAME)
    assert result["state"] == "finished"
    # The Job object says how much came from whom.
    # Keyed by peer id, which joins them to the Peer objects (names may collide).
    assert set(result["sources"]) == {p.ctl_json("status")["peer_id"] for p in sources}
    assert all(n > 0 for n in result["sources"].values())
    assert sum(result["sources"].values()) == result["bytes"]
    assert result["progress"] == 1.0 and result["progress_valid"] is True
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    line = next(line for line in receiver.stderr().splitlines() if "downloaded sample-game" in line)
    assert "from 3 source(s)" in line
    for peer in sources:
        assert f"{peer.name} " in line


def test_daemons_on_addresses_of_their_own_dial_and_fetch_from_them(make_peer: MakePeer) -> None:
    """Each daemon on its own 127.0.0.N, as on a LAN (and in the flash-crowd bench): its
    QUIC dials and data channels leave from that address, so peers know it by one address
    (grants, data channels back to it, redials, per-address caps)."""
    source = make_peer("alpha", listen="127.0.0.2", port=free_port("127.0.0.2"))
    receiver = make_peer("beta", listen="127.0.0.3", port=free_port("127.0.0.3"))
    root = seed_game(source, game_entries(4 * MiB))
    source.start()
    receiver.start()
    # The source dials: the receiver knows it only by the address that dial came from,
    # and its data channels go back there (nothing listens on 127.0.0.1 here).
    connect(source, receiver)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the source's snapshot")
    assert [(p["name"], p["address"]) for p in receiver.ctl_json("peers")] == [
        ("alpha", "127.0.0.2")
    ]
    assert [p["address"] for p in source.ctl_json("peers")] == ["127.0.0.3"]

    # The source's grants hold only from 127.0.0.3: the receiver's data channels
    # leave from there, for a download and a stream install alike.
    assert receiver.ctl_json("stream-install", GAME)["state"] == "finished"
    assert receiver.ctl_json("show", GAME)["installed"] is True
    assert receiver.ctl_json("download", GAME)["state"] == "finished"
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    assert "data-token-from-another-address" not in source.stderr()


def two_sources(make_peer: MakePeer, size: int, *args: str) -> tuple[Daemon, Daemon, Daemon, Path]:
    """Two sources with the same game and a receiver connected to both."""
    first, second = make_peer("first", extra_args=args), make_peer("second", extra_args=args)
    receiver = make_peer("receiver")
    root = seed_game(first, game_entries(size))
    copy_game(root, second.game_dir)
    for peer in (first, second, receiver):
        peer.start()
    connect(receiver, first)
    connect(receiver, second)
    wait_for(lambda: sources_of(receiver) == 2, 10, "two sources")
    return first, second, receiver, root


@pytest.mark.slow
def test_killed_source_mid_download(make_peer: MakePeer) -> None:
    first, _second, receiver, root = two_sources(
        make_peer, 96 * MiB, "--upload-limit", str(16 * MiB)
    )

    job = receiver.ctl_json("download", "--no-wait", GAME)["job"]
    wait_for(lambda: first.ctl_json("show", GAME)["outbound_transfers"] > 0, 30, "transfers")
    first.stop(signal.SIGKILL)
    result = receiver.ctl_json("show", GAME)
    assert result["operation"] == "download"
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 60, "the download")
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready", job
    assert downloads(receiver.game_dir / GAME) == downloads(root)


def one_slow_source(make_peer: MakePeer, size: int, rate: int) -> tuple[Daemon, Daemon, Path]:
    """A source sending `rate` bytes/s and a receiver that has started downloading."""
    source = make_peer("source", extra_args=("--upload-limit", str(rate)))
    receiver = make_peer("receiver")
    root = seed_game(source, game_entries(size))
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the source")
    receiver.ctl("download", "--no-wait", GAME)
    return source, receiver, root


@pytest.mark.slow
def test_all_peers_gone_then_resume_without_refetching(make_peer: MakePeer) -> None:
    source, receiver, root = one_slow_source(make_peer, 96 * MiB, 16 * MiB)
    resume = receiver.game_dir / GAME / ".lanspread-download.json"
    wait_for(
        lambda: resume.exists() and len(json.loads(resume.read_text())["verified"]) > 2,
        30,
        "some verified chunks",
    )
    source.stop(signal.SIGKILL)
    took = wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 30, "peers-gone")
    # Liveness notices within seconds; then the download waits out the grace for a
    # source to come back, and no longer.
    assert took < SOURCES_GRACE + 15, "peers-gone came too late"
    assert receiver.ctl_json("show", GAME)["availability"] == "Absent"
    assert not (receiver.game_dir / GAME / "version.ini").exists()
    log = receiver.stderr()
    assert "every source of sample-game left; waiting" in log
    assert "bytes are kept for a resume" in log
    assert log.count("download of sample-game failed") == 0

    kept = len(json.loads(resume.read_text())["verified"])
    assert kept > 0
    source.start()
    connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the source again")
    assert receiver.ctl_json("download", GAME)["state"] == "finished"
    assert f"resuming sample-game: {kept} chunks already verified" in receiver.stderr()
    assert downloads(receiver.game_dir / GAME) == downloads(root)


def test_corrupt_source_is_demoted_and_honest_ones_finish(make_peer: MakePeer) -> None:
    honest = [make_peer("honest1"), make_peer("honest2")]
    liar = make_peer("liar")
    receiver = make_peer("receiver")
    root = seed_game(honest[0], game_entries(40 * MiB))
    copy_game(root, honest[1].game_dir)
    bad_root = copy_game(root, liar.game_dir)
    # The liar lists the right hashes (cached) but serves damaged bytes.
    HashCache(liar.state_dir / "hashes").file_entries(GAME, bad_root)
    archive = bad_root / f"{GAME}.rar"
    st = archive.stat()
    with archive.open("r+b") as fh:
        for offset in range(MiB, st.st_size - MiB, 4 * MiB):
            fh.seek(offset)
            fh.write(b"\xff" * 64)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    for peer in [*honest, liar, receiver]:
        peer.start()
    for peer in [*honest, liar]:
        connect(receiver, peer)
    wait_for(lambda: sources_of(receiver) == 3, 10, "three sources")
    assert receiver.ctl_json("download", GAME)["state"] == "finished"
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    log = receiver.stderr()
    assert "corrupt chunk" in log
    assert "from liar" in log
    assert "dropping liar as a source" in log


def test_outdated_and_local_only_peers_are_never_sources(make_peer: MakePeer) -> None:
    good = make_peer("good")
    outdated = make_peer("outdated")
    local_only = make_peer("localonly")
    receiver = make_peer("receiver")
    root = seed_game(good, game_entries(4 * MiB))
    seed_game(outdated, game_entries(4 * MiB), version="0.9")
    (local_only.game_dir / GAME / "local").mkdir(parents=True)
    for peer in (good, outdated, local_only, receiver):
        peer.start()
    connect(receiver, outdated)
    connect(receiver, local_only)
    refused = receiver.ctl("download", GAME)
    assert refused.returncode == 1
    assert "2 peer(s) connected, none serves it yet" in refused.stderr
    connect(receiver, good)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the one good source")
    games = {p["name"]: p["games"] for p in receiver.ctl_json("peers")}
    assert games == {"good": {GAME: "1.0"}, "outdated": {}, "localonly": {}}
    assert receiver.ctl_json("download", GAME)["state"] == "finished"
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    for peer in (outdated, local_only):
        assert "asked for the file list" not in peer.stderr()


@pytest.mark.slow
def test_removing_a_game_on_a_source_mid_download(make_peer: MakePeer) -> None:
    # Sources at a set rate: unlimited on loopback, the download could end before the
    # test saw a transfer, and the removal would not land mid-download.
    first, _second, receiver, root = two_sources(
        make_peer, 96 * MiB, "--upload-limit", str(16 * MiB)
    )
    expected = downloads(root)
    receiver.ctl("download", "--no-wait", GAME)
    wait_for(lambda: first.ctl_json("show", GAME)["outbound_transfers"] > 0, 30, "transfers")
    removed = first.ctl_json("remove", GAME)
    assert removed["state"] == "finished"
    assert first.ctl_json("show", GAME)["outbound_transfers"] == 0
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 60, "the download")
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready"
    assert downloads(receiver.game_dir / GAME) == expected


@pytest.mark.slow
def test_goodbye_and_killed_peers_leave_the_table(make_peer: MakePeer) -> None:
    a, b, c = make_peer("a"), make_peer("b"), make_peer("c")
    for peer in (a, b, c):
        peer.start()
    connect(a, b)
    connect(a, c)
    assert len(a.ctl_json("peers")) == 2
    assert b.stop() == 0
    wait_for(lambda: len(a.ctl_json("peers")) == 1, 5, "the goodbye")
    assert "peer said goodbye: daemon shutting down" in a.stderr()
    c.stop(signal.SIGKILL)
    # Silent for DEAD_AFTER after its last ping, which came up to a ping interval ago.
    silence = DEAD_AFTER + PING_INTERVAL + 10
    wait_for(lambda: len(a.ctl_json("peers")) == 0, silence, "the silent peer to time out")


@pytest.mark.slow
def test_download_errors_are_named(make_peer: MakePeer) -> None:
    lonely = make_peer("lonely")
    lonely.start()
    result = lonely.ctl("--json", "download", GAME)
    assert result.returncode == 1
    assert "NoSources" in result.stdout
    assert "no peer is connected" in lonely.ctl("download", GAME).stderr
    bad = lonely.ctl("connect", "127.0.0.1:1")
    assert bad.returncode == 1
    assert "no lanspread peer answered" in bad.stderr
    assert lonely.ctl("connect", "not an address:x").returncode == 2


@pytest.mark.parametrize("target", ["self"])
def test_connecting_to_itself_is_refused(make_peer: MakePeer, target: str) -> None:
    peer = make_peer("narcissus").start()
    result = peer.ctl("connect", f"127.0.0.1:{peer.port}")
    assert result.returncode == 1
    assert "connected to itself" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mdns", [False, True], ids=["manual", "mdns"])
def test_a_peer_that_came_back_is_reconnected(request: pytest.FixtureRequest, mdns: bool) -> None:
    """A laptop that slept or a cable pulled for a while: the peers find each other again."""
    make_peer: MakePeer = request.getfixturevalue("lan_peer" if mdns else "make_peer")
    a, b = make_peer("a"), make_peer("b")
    a.start()
    b.start()
    if mdns:
        assert a.ctl("wait-peers", "1", "--timeout", "20").returncode == 0
    else:
        connect(a, b)
    wait_for(lambda: len(b.ctl_json("peers")) == 1, 10, "b to see a")
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        silence = DEAD_AFTER + PING_INTERVAL + 10
        wait_for(lambda: len(a.ctl_json("peers")) == 0, silence, "a to notice b is silent")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: [p["name"] for p in a.ctl_json("peers")] == ["b"], 20, "a to redial b")
    wait_for(lambda: [p["name"] for p in b.ctl_json("peers")] == ["a"], 10, "b to see a again")


@pytest.mark.slow
def test_a_game_is_announced_only_once_hashed(make_peer: MakePeer) -> None:
    """Peers never wait on a file list while the source reads a big game for hashing."""
    source, receiver = make_peer("source"), make_peer("receiver")
    root = seed_game(source, game_entries(MiB))
    with (root / "zz-extras.bin").open("wb") as fh:
        fh.truncate(6 << 30)  # sparse, but hashing it still takes seconds; hashed last
    cache = source.state_dir / "hashes" / f"{GAME}.json"
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: "hashing sample-game before serving it" in source.stderr(), 10, "hashing")
    assert sources_of(receiver) == 0
    assert source.ctl_json("show", GAME)["served"] is False
    assert "Ready (hashing for peers)" in source.ctl("games").stdout
    # Stopped mid-way, the daemon does not finish the pass first; what it hashed is kept.
    assert source.stop() == 0
    assert "sample-game is ready to serve" not in source.stderr()
    partial = json.loads(cache.read_text())
    assert f"{GAME}.rar" in partial
    assert "zz-extras.bin" not in partial
    source.start()
    connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 120, "the hashed game")
    assert "sample-game is ready to serve" in source.stderr()
    assert "zz-extras.bin" in json.loads(cache.read_text())
    assert source.ctl_json("show", GAME)["served"] is True


@pytest.mark.slow
def test_a_peer_that_gets_the_game_mid_download_joins_as_a_source(make_peer: MakePeer) -> None:
    """The first finisher at a party serves the others still downloading."""
    first = make_peer("first", extra_args=("--upload-limit", str(8 * MiB)))
    late, receiver = make_peer("late"), make_peer("receiver")
    root = seed_game(first, game_entries(64 * MiB))
    for peer in (first, late, receiver):
        peer.start()
    connect(receiver, first)
    connect(receiver, late)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the first source")
    receiver.ctl("download", "--no-wait", GAME)
    wait_for(lambda: first.ctl_json("show", GAME)["outbound_transfers"] > 0, 10, "transfers")
    # The late peer gets the game (placed atomically, as a finished download would be).
    staging = late.game_dir / ".incoming"
    shutil.copytree(root, staging)
    staging.rename(late.game_dir / GAME)
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 60, "the download")
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready"
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    log = receiver.stderr()
    assert "late joins the download of sample-game as a source" in log
    summary = next(line for line in log.splitlines() if "downloaded sample-game 1.0" in line)
    assert "from 2 source(s)" in summary
    assert "late 0 MiB" not in summary


@pytest.mark.slow
def test_a_download_survives_its_only_source_dropping_out_for_a_while(
    make_peer: MakePeer,
) -> None:
    """A switch that reboots: the source is gone for seconds, then back; no peers-gone."""
    source, receiver, root = one_slow_source(make_peer, 48 * MiB, 8 * MiB)
    wait_for(lambda: source.ctl_json("show", GAME)["outbound_transfers"] > 0, 10, "transfers")
    assert source.proc is not None
    source.proc.send_signal(signal.SIGSTOP)
    try:
        silence = DEAD_AFTER + PING_INTERVAL + 10
        wait_for(lambda: receiver.ctl_json("peers") == [], silence, "the source to drop out")
    finally:
        source.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: receiver.ctl_json("show", GAME)["operation"] == "", 60, "the download")
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready"
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    log = receiver.stderr()
    assert "every source of sample-game left; waiting" in log
    assert "source joins the download of sample-game as a source" in log
    assert "bytes are kept for a resume" not in log
