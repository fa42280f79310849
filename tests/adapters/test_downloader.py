"""The downloader against fake peers and real data servers serving real files.

The peer layer below it is `FakePeers` (who holds the game, their file lists, each with
a fresh grant on that source's data server); the sources' data servers are real
`DataServer`s on loopback reading game files from temporary directories. Time runs on
the downloader's injected clock, so the sources' grace period passes without waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar, cast

import pytest

from lanspreadd.app.downloader import SOURCES_GRACE, STREAMS_PER_SOURCE, Downloader
from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.hashes import hash_file
from lanspreadd.core.manifest import manifest_root
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import CorruptData, NoMajority, NoSources, PeerError, PeersGone
from lanspreadd.net.dataserver import DataServer, Grant, OutboundTransfers
from lanspreadd.net.peers import Peer
from lanspreadd.net.transport import PeerConnection
from lanspreadd.protocol.messages import FileEntry, FileList
from tests.support import FakeClock

T = TypeVar("T")
GAME = "quake"
VERSION = "1.0"
CHUNK = 64 << 10
HONEST = {
    "data.bin": bytes(range(256)) * (12 * CHUNK // 256),  # 12 whole chunks
    "maps/e1m1.bsp": b"e1m1" * 25_000,  # 100 000 bytes: a whole chunk and a part
    "version.ini": f"{VERSION}\n".encode(),
}
CHUNKS = 12 + 2 + 1
TOTAL = sum(len(data) for data in HONEST.values())


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def altered(files: dict[str, bytes]) -> dict[str, bytes]:
    """The same names and sizes, other bytes in every chunk."""
    return {
        path: data if path == "version.ini" else bytes(b ^ 0x5A for b in data)
        for path, data in files.items()
    }


def bit_rot(files: dict[str, bytes]) -> dict[str, bytes]:
    """One flipped byte in the first chunk of data.bin."""
    data = bytearray(files["data.bin"])
    data[1000] ^= 1
    return files | {"data.bin": bytes(data)}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def listed(root: Path) -> tuple[FileEntry, ...]:
    """What a source's file list says of its tree, in the order peers list files."""
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return tuple(
        FileEntry(path, (root / path).stat().st_size, tuple(hash_file(root / path, CHUNK)))
        for path in paths
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


class Clock(FakeClock):
    """The shared fake clock, counting the times the downloader looked at it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self._read = asyncio.Event()

    def __call__(self) -> float:
        self.reads += 1
        self._read.set()
        return super().__call__()

    async def until_read(self, times: int) -> None:
        """Wait until the clock was read `times` more times."""
        until = self.reads + times
        while self.reads < until:
            self._read.clear()
            await self._read.wait()


class FakeSource:
    """One peer that holds the game: a real data server over its own directory."""

    def __init__(self, name: str, root: Path, lists: tuple[FileEntry, ...]) -> None:
        self.name = name
        self.root = root
        self.lists = lists  # what its file list says, true or not
        self.requests = 0  # chunk requests its data server was asked to serve
        self.stall_after: int | None = None  # hold every request after this many
        self.asked = asyncio.Event()  # set on each chunk request
        self.connections_seen = 0
        self.on_idle: Callable[[], None] = lambda: None  # its last data connection ended
        self.transfers = OutboundTransfers(self._transfers_changed)
        self.server = DataServer(
            self._servable, self.transfers, RefusalTally(), ConnectionCaps(8, 16)
        )
        self.leave: Callable[[], None] = lambda: None
        self.peer: Peer | None = None

    @property
    def peer_id(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:32]

    def _servable(self, game_id: str, version: str) -> bool:
        self.requests += 1
        self.asked.set()
        if self.requests == self.stall_after:
            # This request goes out at once; the upload limit holds every later one.
            self.server.limiter.rate = 1
        return (game_id, version) == (GAME, VERSION)

    async def until_asked(self, requests: int) -> None:
        while self.requests < requests:
            self.asked.clear()
            await self.asked.wait()

    def _transfers_changed(self, game_id: str, count: int) -> None:
        self.connections_seen += count > 0
        if count == 0:
            self.on_idle()

    async def vanish(self) -> None:
        """Leave the peer table and drop every data connection (its power went)."""
        self.leave()
        await self.transfers.cancel_and_drain(GAME)

    def resume_serving(self) -> None:
        self.stall_after, self.server.limiter.rate = None, 0

    def reconnect(self) -> None:
        """The same peer on a new connection (its switch rebooted): a new table entry."""
        assert self.peer is not None
        self.peer = replace(self.peer, since=self.peer.since + 60)

    async def start(self) -> None:
        await self.server.start("127.0.0.1", 0)
        assert self.server.server is not None
        port = self.server.server.sockets[0].getsockname()[1]
        # The downloader never touches a peer's control connection.
        no_connection = cast(PeerConnection, None)
        self.peer = Peer(self.peer_id, self.name, "127.0.0.1", port, no_connection, True)


class FakePeers:
    """The peer layer as the downloader sees it (`PeerSource`)."""

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}
        self.sources: dict[str, FakeSource] = {}
        self.asked: list[str] = []

    def join(self, source: FakeSource) -> None:
        assert source.peer is not None
        self.sources[source.peer_id] = source
        self.peers[source.peer_id] = source.peer
        source.leave = lambda: self.leave(source)

    def leave(self, source: FakeSource) -> None:
        self.peers.pop(source.peer_id, None)

    def holding(self, game_id: str, version: str) -> list[Peer]:
        return [p for p in self.peers.values() if (game_id, version) == (GAME, VERSION)]

    async def request_file_list(self, peer_id: str, game_id: str, version: str) -> FileList:
        """As the source's Host answers: a fresh grant over what it lists."""
        self.asked.append(self.sources[peer_id].name)
        if peer_id not in self.peers:
            raise PeerError(f"peer {peer_id[:8]} is not connected")
        source = self.sources[peer_id]
        grant = Grant("downloader", game_id, version, source.root, source.lists)
        token = source.server.issue(grant)
        return FileList(1, game_id, version, CHUNK, source.lists, token)


class Lan:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.peers = FakePeers()
        self.clock = Clock()
        self.progress: list[tuple[int, int]] = []
        self.progressed = asyncio.Event()
        self.dest = tmp / "dest" / GAME

    def source(self, name: str, serves: dict[str, bytes], lists: dict[str, bytes]) -> FakeSource:
        """A source whose disk holds `serves` and whose file list describes `lists`."""
        root = self.tmp / name / GAME
        write_tree(root, serves)
        described = self.tmp / name / "listed"
        write_tree(described, lists)
        return FakeSource(name, root, listed(described))

    def downloader(self) -> Downloader:
        def progress(done: int, total: int) -> None:
            self.progress.append((done, total))
            self.progressed.set()

        self.progress.clear()
        # File order: the tests count the bytes of the first chunks fetched.
        return Downloader(
            self.dest, GAME, VERSION, self.peers, progress, clock=self.clock, order=None
        )

    async def until_done(self, chunks: int) -> None:
        while not self.progress or self.progress[-1][0] < chunks * CHUNK:
            self.progressed.clear()
            await self.progressed.wait()

    @asynccontextmanager
    async def serving(self, *sources: FakeSource) -> AsyncIterator[None]:
        for source in sources:
            await source.start()
            self.peers.join(source)
        try:
            yield
        finally:
            for source in sources:
                await source.server.close()


class LogWatch(logging.Handler):
    """The download's log lines (downloader, agreement, recruiter), and a wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._news = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._news.set()

    async def until(self, words: str) -> None:
        while not any(words in line for line in self.lines):
            self._news.clear()
            await self._news.wait()


@pytest.fixture
def watch() -> Iterator[LogWatch]:
    logger = logging.getLogger("lanspreadd.app")  # the downloader, its agreement, recruiter
    handler, level = LogWatch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_the_file_list_most_sources_agree_on_is_downloaded(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    first = lan.source("first", HONEST, HONEST)
    second = lan.source("second", HONEST, HONEST)
    odd = lan.source("odd", altered(HONEST), altered(HONEST))  # consistent, but alone

    async def body() -> None:
        async with lan.serving(odd, first, second):
            downloader = lan.downloader()
            await downloader.run()
            assert tree(lan.dest) == HONEST
            assert set(lan.peers.asked) == {"first", "odd", "second"}
            assert set(downloader.sources) == {first.peer_id, second.peer_id}
            assert set(downloader.received) <= {first.peer_id, second.peer_id}
            assert sum(downloader.received.values()) == TOTAL
            assert odd.connections_seen == 0  # never asked for a byte
            assert lan.progress[-1] == (TOTAL, TOTAL)
            assert downloader.committed is not None
            assert downloader.committed.files == listed(lan.dest)

    run(body())


FORGED = HONEST | {"bin/sample-game": b"#!/bin/sh\nrm -rf ~\n"}  # a trojan beside the game


def test_a_tie_between_file_lists_is_no_majority_and_nothing_is_written(tmp_path: Path) -> None:
    """One forger against one honest peer used to win by padding its game until its
    fingerprint sorted first; a tie now downloads nothing."""
    lan = Lan(tmp_path)
    honest = lan.source("honest", HONEST, HONEST)
    forger = lan.source("forger", FORGED, FORGED)

    async def body() -> None:
        async with lan.serving(forger, honest):
            with pytest.raises(NoMajority, match="no list has a majority"):
                await lan.downloader().run()
            assert not lan.dest.exists() or "version.ini" not in tree(lan.dest)
            assert forger.connections_seen == honest.connections_seen == 0

    run(body())


def test_a_pinned_game_comes_from_the_peer_that_matches_the_pin_however_many_disagree(
    tmp_path: Path, watch: LogWatch
) -> None:
    """Two identities on one host outvote the honest peer; the pin needs no vote."""
    lan = Lan(tmp_path)
    honest = lan.source("honest", HONEST, HONEST)
    forgers = [lan.source(f"forger{i}", FORGED, FORGED) for i in range(2)]
    pin = manifest_root(CHUNK, honest.lists)

    async def body() -> None:
        async with lan.serving(*forgers, honest):
            downloader = lan.downloader()
            downloader.pin = pin
            await downloader.run()
            assert tree(lan.dest) == HONEST
            assert set(downloader.sources) == {honest.peer_id}
            assert all(f.connections_seen == 0 for f in forgers)
            dropped = [line for line in watch.lines if "not the organiser's pin" in line]
            assert sorted(line.split(":")[0] for line in dropped) == ["forger0", "forger1"]

    run(body())


def test_a_pinned_game_no_peer_matches_fails_by_name_and_writes_nothing(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    forgers = [lan.source(f"forger{i}", FORGED, FORGED) for i in range(2)]
    pin = manifest_root(CHUNK, listed_files(HONEST, tmp_path / "pinned"))

    async def body() -> None:
        async with lan.serving(*forgers):
            downloader = lan.downloader()
            downloader.pin = pin
            with pytest.raises(NoSources, match="has the content the organiser's catalog pins"):
                await downloader.run()
            assert not lan.dest.exists() or "bin/sample-game" not in tree(lan.dest)

    run(body())


def listed_files(files: dict[str, bytes], scratch: Path) -> tuple[FileEntry, ...]:
    write_tree(scratch, files)
    return listed(scratch)


def test_a_corrupt_source_is_dropped_and_its_chunks_come_from_another(
    tmp_path: Path, watch: LogWatch
) -> None:
    lan = Lan(tmp_path)
    liar = lan.source("liar", altered(HONEST), HONEST)  # lists true hashes, sends garbage
    honest = lan.source("honest", HONEST, HONEST)
    # The honest source sends a chunk every 100 ms until the liar's data connections
    # have ended, so the liar surely sends some; then it goes at full speed.
    honest.server.limiter.rate = 10 * CHUNK
    liar.on_idle = lambda: setattr(honest.server.limiter, "rate", 0)

    async def body() -> None:
        async with lan.serving(liar, honest):
            downloader = lan.downloader()
            await downloader.run()

            assert tree(lan.dest) == HONEST
            assert set(downloader.received) == {honest.peer_id}
            # At least TOTAL: a chunk the liar still held when it was dropped may be
            # fetched twice (its late corrupt report requeues it: DownloadPlan.corrupt).
            assert downloader.received[honest.peer_id] >= TOTAL
            assert liar.requests >= 2
            assert "dropping liar as a source: repeated corrupt data" in watch.lines
            corrupt = [line for line in watch.lines if line.startswith("corrupt chunk")]
            assert len(corrupt) >= 2
            assert all(line.endswith("from liar; fetching it elsewhere") for line in corrupt)

    run(body())


def test_a_chunk_corrupt_at_every_source_fails_as_corrupt_data(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    rotten = lan.source("rotten", bit_rot(HONEST), HONEST)  # its disk rotted under its list

    async def body() -> None:
        async with lan.serving(rotten):
            with pytest.raises(CorruptData) as caught:
                await lan.downloader().run()
            assert str(caught.value) == "chunk 0 of data.bin was corrupt from every source"
            # The bad chunk was never written: that part of the file is as prepared.
            assert (lan.dest / "data.bin").read_bytes()[:CHUNK] == bytes(CHUNK)
            assert not (lan.dest / "version.ini").exists()

    run(body())


def test_every_source_gone_is_peers_gone_after_the_grace_and_the_rest_resumes(
    tmp_path: Path, watch: LogWatch
) -> None:
    lan = Lan(tmp_path)
    only = lan.source("only", HONEST, HONEST)
    only.stall_after = 3

    async def body() -> None:
        async with lan.serving(only):
            downloader = lan.downloader()
            task = asyncio.create_task(downloader.run())
            await only.until_asked(3 + STREAMS_PER_SOURCE)  # three sent, every worker waiting
            await only.vanish()
            await watch.until(f"every source of {GAME} left; waiting")
            lan.clock.advance(SOURCES_GRACE - 1)
            # Within the grace it waits on: looked at the clock again (the recruiter and
            # the settling loop each look about once a second), and still running.
            looked = asyncio.ensure_future(lan.clock.until_read(3))
            await asyncio.wait([looked, task], return_when=asyncio.FIRST_COMPLETED)
            assert not task.done(), "gave up within the grace"
            await looked
            lan.clock.advance(2)  # past the grace: the next look at the clock gives up
            with pytest.raises(PeersGone) as caught:
                await task
            kept = 3 * CHUNK
            assert str(caught.value) == (
                f"every source of {GAME} left; {kept} of {TOTAL} bytes are kept for a resume"
            )
            assert not (lan.dest / "version.ini").exists()  # not a finished download

            # The peer is back: only what was not kept is fetched.
            only.resume_serving()
            only.reconnect()
            lan.peers.join(only)
            again = lan.downloader()
            await again.run()
            assert lan.progress[0] == (kept, TOTAL)
            assert sum(again.received.values()) == TOTAL - kept
            assert tree(lan.dest) == HONEST

    run(body())


def test_a_source_back_within_the_grace_finishes_the_download(
    tmp_path: Path, watch: LogWatch
) -> None:
    lan = Lan(tmp_path)
    flaky = lan.source("flaky", HONEST, HONEST)
    flaky.stall_after = 3

    async def body() -> None:
        async with lan.serving(flaky):
            downloader = lan.downloader()
            task = asyncio.create_task(downloader.run())
            await flaky.until_asked(3 + STREAMS_PER_SOURCE)
            await flaky.vanish()
            await watch.until(f"every source of {GAME} left; waiting")
            lan.clock.advance(SOURCES_GRACE - 1)
            flaky.resume_serving()
            flaky.reconnect()
            lan.peers.join(flaky)  # the recruiter takes it on its next round
            await task
            assert tree(lan.dest) == HONEST
            assert "flaky joins the download of quake as a source" in watch.lines
            assert dict(downloader.received) == {flaky.peer_id: TOTAL}  # each chunk once

    run(body())


def test_a_download_cancelled_mid_transfer_resumes_where_it_stopped(tmp_path: Path) -> None:
    lan = Lan(tmp_path)
    slow = lan.source("slow", HONEST, HONEST)
    slow.stall_after = 3  # three chunks, then every request is held

    async def body() -> None:
        async with lan.serving(slow):
            task = asyncio.create_task(lan.downloader().run())
            # Both workers wait on a chunk, their threads blocked in a receive.
            await slow.until_asked(3 + STREAMS_PER_SOURCE)
            assert lan.progress[-1] == (3 * CHUNK, TOTAL)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            # While we were away one kept chunk changed on disk: it is fetched again.
            with (lan.dest / "data.bin").open("r+b") as fh:
                fh.seek(CHUNK + 10)
                fh.write(b"\xff")
            slow.resume_serving()
            again = lan.downloader()
            await again.run()
            assert lan.progress[0] == (2 * CHUNK, TOTAL)  # the two still verified kept
            assert sum(again.received.values()) == TOTAL - 2 * CHUNK
            assert tree(lan.dest) == HONEST

    run(body())
