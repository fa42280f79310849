"""Multi-source downloads: plan chunks, pull them from every source, verify, commit.

`DownloadPlan` is pure bookkeeping (which chunk next, from whom, what failed);
`Downloader` drives it with one TaskGroup of data-channel workers. A chunk is
written only after its SHA-256 matches the majority file list; a corrupt chunk
goes back to the queue for another source and its sender is demoted. The
`version.ini` sentinel is held in memory and committed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lanspreadd.core.partial import PartialDownload, chunk_buffer
from lanspreadd.core.plan import (
    MAX_CORRUPT,
    Chunk,
    DownloadPlan,
    agreed,
    fingerprint,
    validate_file_list,
)
from lanspreadd.errors import (
    CorruptData,
    InvalidArgument,
    LanspreadError,
    NoSources,
    PeerError,
    PeersGone,
)
from lanspreadd.net.dataclient import fetch_chunk, in_thread, open_data_channel
from lanspreadd.net.peers import Peer
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol.datachannel import (
    ChunkRequest,
)
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import FileList

log = logging.getLogger(__name__)

STREAMS_PER_SOURCE = 4  # one receives while another hashes and writes: 2 gave 620 MB/s, 4 800
MAX_STREAMS = 12  # threads of one download; more streams wait their turn
SAVE_INTERVAL = 2.0
RECRUIT_INTERVAL = 1.0  # how often a running download looks for new sources
RECRUIT_RETRY = 30.0  # a peer whose file list did not fit is asked again after this
SOURCES_GRACE = 12.0  # with every source gone, how long to wait for one to return


class PeerSource(Protocol):
    """What a download needs of the peer layer (`PeerManager`): who holds the game now,
    the connected peers, and their file lists. Small, so a test can stand in for it."""

    @property
    def peers(self) -> Mapping[str, Peer]: ...
    def holding(self, game_id: str, version: str) -> list[Peer]: ...
    async def request_file_list(self, peer_id: str, game_id: str, version: str) -> FileList: ...


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; True if it was set. asyncio.timeout, not
    wait_for: on 3.11 wait_for swallows a cancel (a job's Cancel) that arrives in the
    step the event fires."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
            return True
    return False


@dataclass
class Source:
    peer_id: str
    name: str
    host: str
    port: int
    token: bytes

    def connect(self, local_host: str) -> socket.socket:
        """A data channel to this source, from `local_host` ("" any)."""
        return open_data_channel(self.host, self.port, self.token, local_host)


@dataclass
class Downloader:
    root: Path
    game_id: str
    version: str
    peers: PeerSource
    progress: Callable[[int, int], None]
    # Injected so tests can run the grace periods without waiting them out.
    clock: Callable[[], float] = time.monotonic
    pin: str = ""  # the organiser's manifest root for this version: no vote then
    limiter: RateLimiter = field(default_factory=RateLimiter)  # the download limit
    local_host: str = ""  # where data channels leave from: the listen address if specific
    sources: dict[str, Source] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    # The file list now on disk, every chunk verified: lets us serve without rehashing.
    committed: FileList | None = None
    _files: PartialDownload | None = None
    _fingerprint: str = ""
    received: Counter[str] = field(default_factory=Counter)  # bytes per peer id
    _pool: ThreadPoolExecutor | None = None

    def candidates(self) -> list[Peer]:
        return self.peers.holding(self.game_id, self.version)

    async def run(self) -> None:
        reference = self._agree(await self._file_lists())
        files = PartialDownload(self.root, self.game_id, self.version, self._fingerprint)
        self._files = files
        plan = await asyncio.to_thread(files.prepare, reference)
        for peer_id in self.sources:
            plan.add_source(peer_id)
        self.progress(plan.bytes_done, plan.total_bytes)
        try:
            # Its own threads: asyncio's default pool has cpu_count + 4, which the streams
            # of three sources alone filled.
            with ThreadPoolExecutor(MAX_STREAMS, "download") as self._pool:
                await self._transfer(plan)
        finally:
            await asyncio.to_thread(files.close)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(files.save_resume, plan)
        await asyncio.to_thread(files.commit, reference)
        self.committed = reference
        names = {p: self._name(p) for p in self.received}
        log.info("downloaded %s %s from %s", self.game_id, self.version, _who(self.received, names))

    def _name(self, peer_id: str) -> str:
        known = self.sources.get(peer_id) or self.peers.peers.get(peer_id)
        return known.name if known is not None else peer_id[:8]

    async def _file_lists(self) -> dict[str, FileList]:
        """Every candidate's file list that passes the checks, asked all at once."""
        candidates = self.candidates()
        if not candidates:
            raise NoSources(f"no connected peer has {self.game_id} version {self.version}")
        results = await asyncio.gather(
            *(
                self.peers.request_file_list(p.peer_id, self.game_id, self.version)
                for p in candidates
            ),
            return_exceptions=True,
        )
        lists: dict[str, FileList] = {}
        for peer, result in zip(candidates, results, strict=True):
            if not isinstance(result, FileList):
                log.warning("%s cannot serve %s: %s", peer.name, self.game_id, result)
                continue
            try:
                validate_file_list(result)
            except InvalidArgument as exc:
                log.warning("ignoring %s as a source: %s", peer.name, exc)
                continue
            lists[peer.peer_id] = result
        if not lists:
            raise NoSources(f"no peer could serve {self.game_id} version {self.version}")
        return lists

    def _agree(self, lists: dict[str, FileList]) -> FileList:
        """The pinned file list, or else the majority's; who sent it become the sources."""
        self._fingerprint, agreeing = agreed(lists, self.pin, f"{self.game_id} {self.version}")
        why = "is not the organiser's pin" if self.pin else "disagrees with the majority"
        for peer_id in sorted(set(lists) - set(agreeing)):
            log.warning("%s: its file list for %s %s", self._name(peer_id), self.game_id, why)
        for peer_id in agreeing:
            peer = self.peers.peers.get(peer_id)
            if peer is not None:
                self.sources[peer_id] = Source(
                    peer_id, peer.name, peer.host, peer.data_port, lists[peer_id].token
                )
        return lists[agreeing[0]]

    async def _transfer(self, plan: DownloadPlan) -> None:
        """Workers for every source, the saver and the recruiter, until the plan settles."""
        try:
            async with asyncio.TaskGroup() as tg:
                for source in self.sources.values():
                    for _ in range(STREAMS_PER_SOURCE):
                        tg.create_task(self._worker(source, plan))
                tg.create_task(self._save_periodically(plan))
                recruiter = tg.create_task(self._recruit(plan, tg))
                await self._until_settled(plan)
                recruiter.cancel()  # it may be waiting on a slow peer's file list
                self._settled.set()
                self._changed.set()
        except BaseExceptionGroup as group:
            # Report the download's own outcome (PeersGone, CorruptData...), not the group.
            errors = [e for e in group.exceptions if isinstance(e, LanspreadError | OSError)]
            if errors:
                raise errors[0] from None
            raise

    async def _until_settled(self, plan: DownloadPlan) -> None:
        alone_since: float | None = None
        while not plan.finished:
            if plan.sources:
                alone_since = None
            elif alone_since is None:
                # A switch that reboots or a cable re-plugged drops every peer for a few
                # seconds; they are redialled and rejoin through the recruiter.
                alone_since = self.clock()
                log.info(
                    "every source of %s left; waiting %.0f s for one to come back",
                    self.game_id,
                    SOURCES_GRACE,
                )
            elif self.clock() - alone_since > SOURCES_GRACE:
                raise PeersGone(
                    f"every source of {self.game_id} left; "
                    f"{plan.bytes_done} of {plan.total_bytes} bytes are kept for a resume"
                )
            stuck = plan.unobtainable()
            if stuck is not None:
                raise CorruptData(
                    f"chunk {stuck.index} of {plan.files[stuck.file_index].path} "
                    "was corrupt from every source"
                )
            self._changed.clear()
            await woken(self._changed, 1.0)

    async def _save_periodically(self, plan: DownloadPlan) -> None:
        files = self._files
        assert files is not None
        while not plan.finished:
            # Woken at once when the download settles: a sleeping saver held every
            # finished download back by up to SAVE_INTERVAL.
            if await woken(self._settled, SAVE_INTERVAL):
                return
            # in_thread joins the thread even when cancelled: no save outlives the job.
            await in_thread(None, files.save_resume, plan)

    async def _recruit(self, plan: DownloadPlan, tg: asyncio.TaskGroup) -> None:
        """Take peers that come to serve the game mid-download as sources too.

        At a party most players download the same game at about the same time; each
        one that finishes serves it at once, and the downloads still running should
        pull from it rather than stay with the sources they started with.
        """
        asked: dict[tuple[str, float], float] = {}  # (peer, connected since) -> retry at
        async with asyncio.TaskGroup() as joining:  # a slow peer does not hold up others
            while not plan.finished:
                now = self.clock()
                for peer in self.candidates():
                    key = (peer.peer_id, peer.since)
                    if (
                        peer.peer_id in plan.sources
                        or plan.corrupt_count[peer.peer_id] >= MAX_CORRUPT
                        or asked.get(key, 0.0) > now
                    ):
                        continue
                    asked[key] = now + RECRUIT_RETRY
                    joining.create_task(self._join(peer, plan, tg))
                await woken(self._settled, RECRUIT_INTERVAL)

    async def _join(self, peer: Peer, plan: DownloadPlan, tg: asyncio.TaskGroup) -> None:
        source = await self._enlist(peer)
        if source is None or plan.finished or peer.peer_id in plan.sources:
            return
        self.sources[peer.peer_id] = source
        plan.add_source(peer.peer_id)
        log.info("%s joins the download of %s as a source", peer.name, self.game_id)
        for _ in range(STREAMS_PER_SOURCE):
            tg.create_task(self._worker(source, plan))

    async def _enlist(self, peer: Peer) -> Source | None:
        try:
            listing = await self.peers.request_file_list(peer.peer_id, self.game_id, self.version)
            validate_file_list(listing)
        except (PeerError, InvalidArgument) as exc:
            log.info("%s cannot join the download of %s: %s", peer.name, self.game_id, exc)
            return None
        if fingerprint(listing) != self._fingerprint:
            log.warning("%s lists other files for %s; not used", peer.name, self.game_id)
            return None
        return Source(peer.peer_id, peer.name, peer.host, peer.data_port, listing.token)

    async def _worker(self, source: Source, plan: DownloadPlan) -> None:
        """One data connection to one source, taking chunks until none are left for it.

        The socket is blocking and used only from worker threads: receiving into a
        reused buffer, hashing and writing each chunk happen off the event loop
        without copies, and release the GIL, so several connections use every core.
        """
        try:
            sock = await in_thread(None, source.connect, self.local_host)
        except OSError as exc:
            log.warning("cannot open a data channel to %s: %s", source.name, exc)
            plan.source_lost(source.peer_id)
            self._changed.set()
            return
        buffer = chunk_buffer(plan.chunk_size)
        try:
            while True:
                chunk = plan.next_for(source.peer_id)
                if chunk is None:
                    if plan.finished or source.peer_id not in plan.sources:
                        return
                    self._changed.clear()
                    await woken(self._changed, 0.5)
                    continue
                await self.limiter.take(chunk.length)
                if await in_thread(sock, self._fetch, sock, buffer, plan, chunk, pool=self._pool):
                    plan.completed(chunk)
                    self.received[source.peer_id] += chunk.length
                    self.progress(plan.bytes_done, plan.total_bytes)
                else:
                    log.warning(
                        "corrupt chunk %d of %s from %s; fetching it elsewhere",
                        chunk.index,
                        plan.files[chunk.file_index].path,
                        source.name,
                    )
                    if plan.corrupt(chunk, source.peer_id):
                        log.warning("dropping %s as a source: repeated corrupt data", source.name)
                        return
                self._changed.set()
        except (OSError, RemoteProtocolError, PeerError) as exc:
            log.info("source %s stopped: %s", source.name, exc or type(exc).__name__)
            plan.source_lost(source.peer_id)
        finally:
            self._changed.set()
            sock.close()

    def _fetch(
        self, sock: socket.socket, buffer: mmap.mmap, plan: DownloadPlan, chunk: Chunk
    ) -> bool:
        """Fetch one chunk, verify it and store it (worker thread)."""
        request = ChunkRequest(chunk.file_index, chunk.offset, chunk.length)
        files = self._files
        assert files is not None
        return files.store(plan, chunk, fetch_chunk(sock, buffer, request))


def _who(received: Mapping[str, int], names: Mapping[str, str]) -> str:
    """`3 source(s): alpha 512 MiB, ...` for the log line that ends a download."""
    parts = ", ".join(f"{names[p]} {n >> 20} MiB" for p, n in sorted(received.items()))
    return f"{len(received)} source(s): {parts}"
