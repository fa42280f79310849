"""Multi-source downloads: plan chunks, pull them from every source, verify, commit.

`DownloadPlan` is pure bookkeeping (which chunk next, from whom, what failed);
`Downloader` drives it with one TaskGroup of data-channel workers. A chunk is
written only after its SHA-256 matches the agreed file list; a corrupt chunk goes
back to the queue for another source and its sender is demoted. The `version.ini`
sentinel is held in memory and committed last. While it runs, the download serves
the chunks it has verified to peers downloading the same files (`app.sharing`), and
takes theirs (`app.recruiter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lanspreadd.app.agreement import agree
from lanspreadd.app.recruiter import Recruiter
from lanspreadd.app.sharing import DELTA_INTERVAL, PartialShare, Sharing
from lanspreadd.app.sources import PeerSource, Source, name_of, woken
from lanspreadd.core.held import ChunkNumbers
from lanspreadd.core.partial import PartialDownload, chunk_buffer
from lanspreadd.core.plan import Chunk, DownloadPlan
from lanspreadd.errors import (
    ChunkNotHeld,
    CorruptData,
    LanspreadError,
    PeerError,
    PeersGone,
    SourceBusy,
)
from lanspreadd.net.dataclient import fetch_chunk, in_thread, open_data_channel
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol.datachannel import ChunkRequest
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import FileList

__all__ = ["Downloader", "PeerSource", "Source", "woken"]

log = logging.getLogger(__name__)

STREAMS_PER_SOURCE = 4  # one receives while another hashes and writes: 2 gave 620 MB/s, 4 800
STREAMS_PER_PARTIAL = 1  # a partial holder serves a few chunks; many of them serve together
MAX_STREAMS = 12  # chunks of one download fetched at once; more workers wait their turn
SAVE_INTERVAL = 2.0
SOURCES_GRACE = 12.0  # with every source gone, how long to wait for one to return
BUSY_BACKOFF = 0.25  # a busy source is asked again after 0.5, 1, then every 2 s (+-50%)


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
    sharing: Sharing = field(default_factory=lambda: Sharing(enabled=False))
    # Equally rare chunks are taken in a random order, so that peers starting together
    # ask for different ones; None keeps file order.
    order: random.Random | None = field(default_factory=random.Random)
    sources: dict[str, Source] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _wakes: dict[str, asyncio.Event] = field(default_factory=dict)  # idle workers, by source
    _refused: Counter[str] = field(default_factory=Counter)  # BUSY answers in a row, by source
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    # The file list now on disk, every chunk verified: lets us serve without rehashing.
    committed: FileList | None = None
    _files: PartialDownload | None = None
    _fingerprint: str = ""
    received: Counter[str] = field(default_factory=Counter)  # bytes per peer id
    _pool: ThreadPoolExecutor | None = None
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_STREAMS))

    async def run(self) -> None:
        reference, self._fingerprint, self.sources = await agree(
            self.peers, self.game_id, self.version, self.pin
        )
        files = PartialDownload(self.root, self.game_id, self.version, self._fingerprint)
        self._files = files
        plan = await asyncio.to_thread(files.prepare, reference, self.order)
        for peer_id in self.sources:
            plan.add_source(peer_id)
        self.progress(plan.bytes_done, plan.total_bytes)
        share = PartialShare(
            self.game_id,
            self.version,
            self._fingerprint,
            self.root,
            reference.chunk_size,
            reference.files,
            plan.verified,
            lambda: files.sentinel,
        )
        self.sharing.start(share)
        try:
            # Its own threads: asyncio's default pool has cpu_count + 4, which the streams
            # of three sources alone filled.
            with ThreadPoolExecutor(MAX_STREAMS, "download") as self._pool:
                await self._transfer(plan, share.numbers)
        finally:
            self.sharing.stop(self.game_id)  # before the commit: nothing half-done served
            await asyncio.to_thread(files.close)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(files.save_resume, plan)
        await asyncio.to_thread(files.commit, reference)
        self.committed = reference
        names = {p: name_of(p, self.peers, self.sources) for p in self.received}
        log.info("downloaded %s %s from %s", self.game_id, self.version, _who(self.received, names))

    async def _transfer(self, plan: DownloadPlan, numbers: ChunkNumbers) -> None:
        """Workers for every source, the saver, the teller and the recruiter, until the
        plan settles."""
        try:
            async with asyncio.TaskGroup() as tg:

                def start_workers(source: Source, partial: bool) -> None:
                    for _ in range(STREAMS_PER_PARTIAL if partial else STREAMS_PER_SOURCE):
                        tg.create_task(self._worker(source, plan))

                recruiter = Recruiter(
                    self.peers,
                    self.game_id,
                    self.version,
                    self._fingerprint,
                    numbers,
                    plan,
                    start_workers,
                    self.clock,
                    self._settled,
                    self.sources,
                )
                unwatch = self.sharing.watch(self.game_id, lambda: self._held(recruiter))
                for source in list(self.sources.values()):
                    start_workers(source, False)
                tg.create_task(self._save_periodically(plan))
                tg.create_task(self._tell_held())
                recruiting = tg.create_task(recruiter.run())
                try:
                    await self._until_settled(plan)
                finally:
                    unwatch()
                recruiting.cancel()  # it may be waiting on a slow peer's file list
                self._settled.set()
                self._wake()
        except BaseExceptionGroup as group:
            # Report the download's own outcome (PeersGone, CorruptData...), not the group.
            errors = [e for e in group.exceptions if isinstance(e, LanspreadError | OSError)]
            if errors:
                raise errors[0] from None
            raise

    def _held(self, recruiter: Recruiter) -> None:
        """A peer holds more of the game: its idle workers may have something to fetch."""
        self._wake(recruiter.sync_held())

    def _wake(self, peer_ids: Iterable[str] | None = None) -> None:
        """Wake the settle loop and the idle workers of these sources (None: all). Each
        delta from each of 31 peers woke every worker of a flash crowd's receivers."""
        self._changed.set()
        for peer_id in self._wakes if peer_ids is None else peer_ids:
            if (event := self._wakes.get(peer_id)) is not None:
                event.set()

    async def _until_settled(self, plan: DownloadPlan) -> None:
        alone_since: float | None = None
        while not plan.finished:
            missing = plan.missing()
            if plan.sources and missing is None:
                alone_since = None
            elif alone_since is None:
                # A switch that reboots or a cable re-plugged drops every peer for a few
                # seconds; they are redialled and rejoin through the recruiter.
                alone_since = self.clock()
                what = (
                    "every source of %s left"
                    if not plan.sources
                    else ("no source of %s holds all of it now")
                )
                log.info(
                    what + "; waiting %.0f s for one to come back", self.game_id, SOURCES_GRACE
                )
            elif self.clock() - alone_since > SOURCES_GRACE:
                what = "every source" if not plan.sources else "every source holding all"
                raise PeersGone(
                    f"{what} of {self.game_id} left; "
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
            # The verified set is copied here: workers add to it on this loop meanwhile.
            await in_thread(None, files.save_resume, plan, set(plan.verified))

    async def _tell_held(self) -> None:
        """Tell peers the chunks verified since the last time, once a second."""
        while not await woken(self._settled, DELTA_INTERVAL):
            self.sharing.tell(self.game_id)

    async def _worker(self, source: Source, plan: DownloadPlan) -> None:
        """One data connection to one source, taking chunks until none are left for it.

        The socket is blocking and used only from worker threads: receiving into a
        reused buffer, hashing and writing each chunk happen off the event loop
        without copies, and release the GIL, so several connections use every core.
        """
        try:
            sock = await in_thread(
                None, open_data_channel, source.host, source.port, source.token, self.local_host
            )
        except OSError as exc:
            log.warning("cannot open a data channel to %s: %s", source.name, exc)
            plan.source_lost(source.peer_id)
            self._wake()
            return
        buffer = chunk_buffer(plan.chunk_size)
        try:
            while await self._take_chunk(sock, buffer, source, plan):
                pass
        except (OSError, RemoteProtocolError, PeerError) as exc:
            log.info("source %s stopped: %s", source.name, exc or type(exc).__name__)
            plan.source_lost(source.peer_id)
        finally:
            self._wake()
            sock.close()

    async def _take_chunk(
        self, sock: socket.socket, buffer: mmap.mmap, source: Source, plan: DownloadPlan
    ) -> bool:
        """Fetch one chunk from `source`, or wait for one it can send; False when done."""
        stored: bool | None = False
        async with self._slots:  # a chunk is taken only when a thread is free to fetch it
            chunk = plan.next_for(source.peer_id)
            if chunk is not None:
                await self.limiter.take(chunk.length)
                try:
                    stored = await in_thread(
                        sock, self._fetch, sock, buffer, plan, chunk, pool=self._pool
                    )
                except (SourceBusy, ChunkNotHeld):
                    plan.released(chunk, source.peer_id)
                    self._wake()
                    stored = None
        if stored is None:  # asked again later (longer each time), maybe for another chunk
            self._refused[source.peer_id] += 1
            backoff = BUSY_BACKOFF * 2 ** min(self._refused[source.peer_id], 3)
            await woken(self._settled, backoff * random.uniform(0.5, 1.5))  # noqa: S311
            return True
        self._refused.pop(source.peer_id, None)
        if chunk is None:
            if plan.finished or source.peer_id not in plan.sources:
                return False
            wake = self._wakes.setdefault(source.peer_id, asyncio.Event())
            wake.clear()
            await woken(wake, 0.5)
            return True
        if stored:
            if plan.completed(chunk):  # the end game's second fetch counts for nobody
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
                return False
        self._wake(None if not stored or not plan.pending else ())  # the end game: all
        return True

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
