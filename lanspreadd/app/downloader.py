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
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lanspreadd.core.install import (
    RESUME_FILE,
    SPACE_MARGIN,
    VERSION_TMP,
    atomic_write,
    free_bytes,
)
from lanspreadd.core.library import LOCAL, VERSION_INI, parse_version_ini
from lanspreadd.errors import DiskFull, InvalidArgument, LanspreadError
from lanspreadd.net.dataclient import SourceError, in_thread, open_data_channel, recv_exactly
from lanspreadd.net.dataserver import check_relative_path
from lanspreadd.net.peers import Peer, PeerError, PeerManager
from lanspreadd.protocol.datachannel import (
    OK,
    REPLY,
    ChunkRequest,
    decode_reply_header,
    encode_request,
)
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import FileEntry, FileList

log = logging.getLogger(__name__)

STREAMS_PER_SOURCE = 2
MAX_CORRUPT = 2
SAVE_INTERVAL = 2.0
RECRUIT_INTERVAL = 1.0  # how often a running download looks for new sources
RECRUIT_RETRY = 30.0  # a peer whose file list did not fit is asked again after this
SOURCES_GRACE = 12.0  # with every source gone, how long to wait for one to return
MAX_VERSION_INI = 4096


class NoSources(LanspreadError):
    name = "NoSources"


class PeersGone(LanspreadError):
    """Every source left before the download completed: its own outcome, not a failure."""

    name = "PeersGone"


class CorruptEverywhere(LanspreadError):
    name = "CorruptData"


@dataclass(frozen=True)
class Chunk:
    file_index: int
    index: int
    offset: int
    length: int


class DownloadPlan:
    """Which chunks remain, which are in flight and from whom, and who misbehaved."""

    def __init__(
        self,
        files: tuple[FileEntry, ...],
        chunk_size: int,
        verified: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.files = files
        self.chunk_size = chunk_size
        self.verified: set[tuple[int, int]] = set(verified)
        self.pending: deque[Chunk] = deque()
        for fi, entry in enumerate(files):
            for ci in range(len(entry.hashes)):
                if (fi, ci) in self.verified:
                    continue
                offset = ci * chunk_size
                self.pending.append(Chunk(fi, ci, offset, min(chunk_size, entry.size - offset)))
        self.in_flight: dict[Chunk, str] = {}
        self.excluded: dict[Chunk, set[str]] = {}
        self.sources: set[str] = set()
        self.corrupt_count: Counter[str] = Counter()
        self.total_bytes = sum(f.size for f in files)
        self.bytes_done = sum(self._length(fi, ci) for fi, ci in self.verified)

    def _length(self, fi: int, ci: int) -> int:
        return max(0, min(self.chunk_size, self.files[fi].size - ci * self.chunk_size))

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight

    def add_source(self, source: str) -> None:
        self.sources.add(source)

    def next_for(self, source: str) -> Chunk | None:
        if source not in self.sources:
            return None
        for _ in range(len(self.pending)):
            chunk = self.pending.popleft()
            if source in self.excluded.get(chunk, ()):
                self.pending.append(chunk)
                continue
            self.in_flight[chunk] = source
            return chunk
        return None

    def completed(self, chunk: Chunk, source: str) -> None:
        if self.in_flight.pop(chunk, None) is None:
            return
        self.verified.add((chunk.file_index, chunk.index))
        self.bytes_done += chunk.length

    def corrupt(self, chunk: Chunk, source: str) -> bool:
        """Requeue a chunk that failed verification; True if the source is now dropped."""
        self.in_flight.pop(chunk, None)
        self.excluded.setdefault(chunk, set()).add(source)
        self.pending.appendleft(chunk)
        self.corrupt_count[source] += 1
        if self.corrupt_count[source] >= MAX_CORRUPT:
            self.source_lost(source)
            return True
        return False

    def source_lost(self, source: str) -> None:
        self.sources.discard(source)
        for chunk, owner in list(self.in_flight.items()):
            if owner == source:
                del self.in_flight[chunk]
                self.pending.appendleft(chunk)

    def unobtainable(self) -> Chunk | None:
        """A pending chunk that no remaining source may send us, if any."""
        for chunk in self.pending:
            if self.sources and self.sources <= self.excluded.get(chunk, set()):
                return chunk
        return None


def fingerprint(file_list: FileList) -> str:
    data = [file_list.chunk_size, [(f.path, f.size, f.hashes) for f in file_list.files]]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def majority(lists: dict[str, FileList]) -> tuple[str, list[str]]:
    """The fingerprint most sources agree on, and the sources that agree."""
    groups: dict[str, list[str]] = {}
    for peer_id, file_list in lists.items():
        groups.setdefault(fingerprint(file_list), []).append(peer_id)
    best = max(sorted(groups), key=lambda fp: len(groups[fp]))
    return best, sorted(groups[best])


def validate_file_list(file_list: FileList, version: str) -> None:
    paths = set()
    for entry in file_list.files:
        check_relative_path(entry.path)
        if entry.path in paths:
            raise InvalidArgument(f"file {entry.path!r} is listed twice")
        paths.add(entry.path)
    sentinel = [f for f in file_list.files if f.path == VERSION_INI]
    if not sentinel or sentinel[0].size > MAX_VERSION_INI:
        raise InvalidArgument(f"the file list has no usable {VERSION_INI}")


@dataclass
class Source:
    peer_id: str
    name: str
    host: str
    port: int
    token: bytes


@dataclass
class Downloader:
    root: Path
    game_id: str
    version: str
    peers: PeerManager
    progress: Callable[[int, int], None]
    sources: dict[str, Source] = field(default_factory=dict)
    sentinel: bytes | None = None
    _fds: dict[int, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _settled: asyncio.Event = field(default_factory=asyncio.Event)
    # The file list now on disk, every chunk verified: lets us serve without rehashing.
    committed: FileList | None = None
    _plan: DownloadPlan | None = None
    _fingerprint: str = ""
    received: Counter[str] = field(default_factory=Counter)

    def candidates(self) -> list[Peer]:
        return [p for p in self.peers.peers.values() if p.games.get(self.game_id) == self.version]

    async def run(self) -> None:
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
            if isinstance(result, FileList):
                try:
                    validate_file_list(result, self.version)
                except InvalidArgument as exc:
                    log.warning("ignoring %s as a source: %s", peer.name, exc)
                    continue
                lists[peer.peer_id] = result
            else:
                log.warning("%s cannot serve %s: %s", peer.name, self.game_id, result)
        if not lists:
            raise NoSources(f"no peer could serve {self.game_id} version {self.version}")
        self._fingerprint, agreeing = majority(lists)
        for peer_id in sorted(set(lists) - set(agreeing)):
            log.warning("%s disagrees with the majority file list; not used", peer_id[:8])
        reference = lists[agreeing[0]]
        for peer_id in agreeing:
            agreed = self.peers.peers.get(peer_id)
            if agreed is not None:
                self.sources[peer_id] = Source(
                    peer_id, agreed.name, agreed.host, agreed.data_port, lists[peer_id].token
                )
        await asyncio.to_thread(self._prepare, reference)
        plan = self._plan
        assert plan is not None
        for peer_id in self.sources:
            plan.add_source(peer_id)
        self.progress(plan.bytes_done, plan.total_bytes)
        try:
            async with asyncio.TaskGroup() as tg:
                for source in self.sources.values():
                    for _ in range(STREAMS_PER_SOURCE):
                        tg.create_task(self._worker(source, plan))
                tg.create_task(self._save_periodically())
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
        finally:
            await asyncio.to_thread(self._close_files)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._save_resume)
        await asyncio.to_thread(self._commit, reference)
        self.committed = reference
        log.info(
            "downloaded %s %s from %d source(s): %s",
            self.game_id,
            self.version,
            len(self.received),
            ", ".join(f"{name} {n >> 20} MiB" for name, n in sorted(self.received.items())),
        )

    async def _until_settled(self, plan: DownloadPlan) -> None:
        alone_since: float | None = None
        while not plan.finished:
            if plan.sources:
                alone_since = None
            elif alone_since is None:
                # A switch that reboots or a cable re-plugged drops every peer for a few
                # seconds; they are redialled and rejoin through the recruiter.
                alone_since = time.monotonic()
                log.info(
                    "every source of %s left; waiting %.0f s for one to come back",
                    self.game_id,
                    SOURCES_GRACE,
                )
            elif time.monotonic() - alone_since > SOURCES_GRACE:
                raise PeersGone(
                    f"every source of {self.game_id} left; "
                    f"{plan.bytes_done} of {plan.total_bytes} bytes are kept for a resume"
                )
            stuck = plan.unobtainable()
            if stuck is not None:
                raise CorruptEverywhere(
                    f"chunk {stuck.index} of {plan.files[stuck.file_index].path} "
                    "was corrupt from every source"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)

    async def _save_periodically(self) -> None:
        plan = self._plan
        assert plan is not None
        while not plan.finished:
            # Woken at once when the download settles: a sleeping saver held every
            # finished download back by up to SAVE_INTERVAL.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), SAVE_INTERVAL)
                return
            # in_thread joins the thread even when cancelled: no save outlives the job.
            await in_thread(None, self._save_resume)

    async def _recruit(self, plan: DownloadPlan, tg: asyncio.TaskGroup) -> None:
        """Take peers that come to serve the game mid-download as sources too.

        At a party most players download the same game at about the same time; each
        one that finishes serves it at once, and the downloads still running should
        pull from it rather than stay with the sources they started with.
        """
        asked: dict[tuple[str, float], float] = {}  # (peer, connected since) -> retry at
        async with asyncio.TaskGroup() as joining:  # a slow peer does not hold up others
            while not plan.finished:
                now = time.monotonic()
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), RECRUIT_INTERVAL)

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
            validate_file_list(listing, self.version)
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
            sock = await in_thread(None, open_data_channel, source.host, source.port, source.token)
        except OSError as exc:
            log.warning("cannot open a data channel to %s: %s", source.name, exc)
            plan.source_lost(source.peer_id)
            self._changed.set()
            return
        buffer = bytearray(plan.chunk_size)
        try:
            while True:
                chunk = plan.next_for(source.peer_id)
                if chunk is None:
                    if plan.finished or source.peer_id not in plan.sources:
                        return
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.5)
                    continue
                if await in_thread(sock, self._fetch, sock, buffer, chunk):
                    plan.completed(chunk, source.peer_id)
                    self.received[source.name] += chunk.length
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
        except (OSError, RemoteProtocolError, PeerError, SourceError) as exc:
            log.info("source %s stopped: %s", source.name, exc or type(exc).__name__)
            plan.source_lost(source.peer_id)
        finally:
            self._changed.set()
            sock.close()

    def _fetch(self, sock: socket.socket, buffer: bytearray, chunk: Chunk) -> bool:
        """Request one chunk, receive it into `buffer`, verify it and store it."""
        sock.sendall(encode_request(ChunkRequest(chunk.file_index, chunk.offset, chunk.length)))
        header = memoryview(bytearray(REPLY.size))
        recv_exactly(sock, header)
        status, length = decode_reply_header(bytes(header), chunk.length)
        view = memoryview(buffer)[:length]
        recv_exactly(sock, view)
        if status != OK:
            raise PeerError(bytes(view).decode("utf-8", "replace"))
        return self._store(chunk, view)

    # ---- files (worker threads) ---------------------------------------------------------
    def _prepare(self, reference: FileList) -> None:
        """Open every file at its size; keep chunks a previous run verified."""
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (root / VERSION_INI).unlink()  # the old sentinel goes first: we now change files
        needed = sum(f.size for f in reference.files)
        verified = self._load_resume(reference)
        kept = sum(
            min(reference.chunk_size, reference.files[fi].size - ci * reference.chunk_size)
            for fi, ci in verified
        )
        existing = sum(
            (root / f.path).stat().st_size
            for f in reference.files
            if (root / f.path).is_file() and not (root / f.path).is_symlink()
        )
        if free_bytes(root) + existing < needed - kept + SPACE_MARGIN:
            raise DiskFull(f"{self.game_id} needs {needed - kept} more bytes than are free")
        for fi, entry in enumerate(reference.files):
            if entry.path == VERSION_INI:
                continue
            path = root.joinpath(*check_relative_path(entry.path).parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.is_dir():
                raise InvalidArgument(f"{path} is in the way of the download")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(fd, entry.size)
            self._fds[fi] = fd
        self._plan = DownloadPlan(reference.files, reference.chunk_size, verified)

    def _store(self, chunk: Chunk, data: memoryview) -> bool:
        plan = self._plan
        assert plan is not None
        entry = plan.files[chunk.file_index]
        if hashlib.sha256(data).hexdigest() != entry.hashes[chunk.index]:
            return False
        if entry.path == VERSION_INI:
            self.sentinel = bytes(data)
            return True
        fd = self._fds[chunk.file_index]
        view = data
        offset = chunk.offset
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
        return True

    def _close_files(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)
        self._fds.clear()

    def _load_resume(self, reference: FileList) -> set[tuple[int, int]]:
        try:
            state = json.loads((self.root / RESUME_FILE).read_text())
        except (OSError, ValueError):
            return set()
        if not isinstance(state, dict) or state.get("fingerprint") != self._fingerprint:
            return set()
        claimed = {(int(fi), int(ci)) for fi, ci in state.get("verified", [])}
        verified = set()
        for fi, ci in claimed:
            if fi >= len(reference.files) or ci >= len(reference.files[fi].hashes):
                continue
            entry = reference.files[fi]
            if entry.path == VERSION_INI:
                continue
            path = self.root / entry.path
            try:
                with path.open("rb") as fh:
                    fh.seek(ci * reference.chunk_size)
                    data = fh.read(reference.chunk_size)
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == entry.hashes[ci]:
                verified.add((fi, ci))
        if verified:
            log.info("resuming %s: %d chunks already verified", self.game_id, len(verified))
        return verified

    def _save_resume(self) -> None:
        plan = self._plan
        if plan is None:
            return
        version_index = {i for i, f in enumerate(plan.files) if f.path == VERSION_INI}
        state = {
            "game_id": self.game_id,
            "version": self.version,
            "fingerprint": self._fingerprint,
            "verified": sorted(v for v in plan.verified if v[0] not in version_index),
        }
        atomic_write(self.root / RESUME_FILE, json.dumps(state).encode())

    def _commit(self, reference: FileList) -> None:
        """Remove files the new version no longer has, then write the sentinel last."""
        if self.sentinel is None:
            raise LanspreadError("the download finished without version.ini")
        announced = parse_version_ini(self.sentinel.decode("utf-8", "replace"))
        if announced != self.version:
            raise LanspreadError(
                f"peers sent version.ini for {announced!r}, expected {self.version!r}"
            )
        wanted = {f.path for f in reference.files}
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or entry.name == LOCAL or entry.name in wanted:
                continue
            if entry.is_file(follow_symlinks=False) and not any(
                w.startswith(entry.name + "/") for w in wanted
            ):
                os.unlink(entry.path)
        tmp = self.root / VERSION_TMP
        with tmp.open("wb") as fh:
            fh.write(self.sentinel)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / VERSION_INI)
        with contextlib.suppress(FileNotFoundError):
            (self.root / RESUME_FILE).unlink()
