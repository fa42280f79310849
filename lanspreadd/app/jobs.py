"""Running one job: what each kind does, its progress, and its one outcome.

Downloads and stream installs run in the job's own task, so Cancel interrupts
them at once; file operations run in a worker thread that watches the job's
cancel event. Whatever happens, the job ends finished, cancelled, peers-gone or
failed with a named error.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path

from lanspreadd.app.config import Config
from lanspreadd.app.downloader import Downloader
from lanspreadd.app.host import Host
from lanspreadd.app.logs import UnpackLogs
from lanspreadd.app.stream_install import StreamReceiver
from lanspreadd.app.views import Observers
from lanspreadd.core.gamedir import ACCESS_ERRNOS, claim_game_root, no_access, share_installed
from lanspreadd.core.hashes import CHUNK_SIZE
from lanspreadd.core.install import SPACE_MARGIN, GameFiles
from lanspreadd.core.library import Library
from lanspreadd.core.manifest import check_tree
from lanspreadd.core.operations import Job, JobState, OpKind
from lanspreadd.errors import (
    Cancelled,
    CorruptData,
    DiskFull,
    LanspreadError,
    NoSources,
    PeerError,
    PeersGone,
)
from lanspreadd.net.dataclient import in_thread, open_data_channel
from lanspreadd.net.peers import PeerManager
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol.paths import LOCAL

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2
INSTALLING = (OpKind.INSTALL, OpKind.UPDATE, OpKind.STREAM_INSTALL)

Progress = Callable[[int, int], None]


class JobRunner:
    def __init__(
        self,
        config: Config,
        library: Library,
        host: Host,
        peers: PeerManager,
        observers: Observers,
        unpack_logs: UnpackLogs,
        no_sources: Callable[[str, str], NoSources],
        free_space: Callable[[], int],
    ) -> None:
        self.config = config
        self.library = library
        self.host = host
        self.peers = peers
        self.observers = observers
        self.unpack_logs = unpack_logs
        self._no_sources = no_sources
        self._free_space = free_space
        self.download_limiter = RateLimiter(config.download_limit)  # shared by every job
        self._async_work: dict[int, asyncio.Task[None]] = {}
        self._last_progress: dict[int, float] = {}
        self._progress_due: dict[int, asyncio.TimerHandle] = {}

    def interrupt(self, job: Job) -> None:
        """Cancel a download or stream install where it waits; file work sees the event."""
        work = self._async_work.get(job.id)
        if work is not None:
            work.cancel()

    def _progress(self, job: Job, done: int, total: int) -> None:
        """Tell observers at most every PROGRESS_INTERVAL, and the last news always: an
        update inside the interval is told when it ends, not held until the next one."""
        now = time.monotonic()
        job.update(done, total, now)
        if job.id in self._progress_due:
            return
        wait = self._last_progress.get(job.id, 0.0) + PROGRESS_INTERVAL - now
        if wait <= 0:
            self._tell_progress(job)
        else:
            loop = asyncio.get_running_loop()
            self._progress_due[job.id] = loop.call_later(wait, self._tell_progress, job)

    def _tell_progress(self, job: Job) -> None:
        self._progress_due.pop(job.id, None)
        self._last_progress[job.id] = time.monotonic()
        if job.state is JobState.RUNNING:
            self.observers.job_progress(job)

    async def run(self, job: Job) -> None:
        """Do the job and settle its outcome; the caller ends it in the table."""
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(self._progress, job, done, total)

        files = GameFiles(self.library.game_root(job.game_id), job.cancel_event, progress)
        started = time.time()
        try:
            await self.host.transfers.cancel_and_drain(job.game_id)
            await asyncio.to_thread(claim_game_root, files.root, self.library.game_dir)
            await self._work(job, files, progress)
            if job.kind in INSTALLING or job.install_after:
                await asyncio.to_thread(share_installed, files.root / LOCAL)
            job.finish(JobState.FINISHED)
        except (Cancelled, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and job.cancel_event.is_set():
                task.uncancel()
            # Messages say why only: the log line and lanspreadctl name the job already.
            why = "cancel requested" if job.cancel_event.is_set() else "stopped with the daemon"
            job.finish(JobState.CANCELLED, Cancelled.name, why)
        except PeersGone as exc:
            job.finish(JobState.PEERS_GONE, exc.name, str(exc))
        except LanspreadError as exc:
            job.finish(JobState.FAILED, exc.name, str(exc))
        except OSError as exc:
            error = _os_error(exc, files.root, self.library.game_dir)
            job.finish(JobState.FAILED, error.name, str(error))
        except Exception as exc:
            log.exception("%s of %s crashed", job.kind, job.game_id)
            job.finish(JobState.FAILED, LanspreadError.name, f"internal error: {exc!r}")
        finally:
            if job.state is JobState.RUNNING:
                job.finish(JobState.CANCELLED, Cancelled.name, "stopped with the daemon")
            if job.kind in (OpKind.INSTALL, OpKind.UPDATE) or job.install_after:
                await self._record_unpack(job, files, started)
            self._last_progress.pop(job.id, None)
            due = self._progress_due.pop(job.id, None)
            if due is not None:
                due.cancel()

    async def _work(self, job: Job, files: GameFiles, progress: Progress) -> None:
        """What the job's kind does."""
        if job.kind is OpKind.DOWNLOAD and job.install_after and await self._low_on_disk(job):
            log.info("little free space: %s will be stream-installed instead", job.game_id)
            await self._stream_install(job, files, progress)
        elif job.kind is OpKind.DOWNLOAD:
            await self._download(job, progress)
            if job.install_after:
                await asyncio.to_thread(files.install)
        elif job.kind is OpKind.STREAM_INSTALL:
            await self._stream_install(job, files, progress)
        else:
            await asyncio.to_thread(_FILE_OPERATIONS[job.kind], files)

    async def _download(self, job: Job, progress: Progress) -> None:
        game = self.library.catalog.games[job.game_id]
        root = self.library.game_root(job.game_id)
        downloader = Downloader(root, job.game_id, game.version, self.peers, progress)
        downloader.pin = game.pin.manifest if game.pin is not None else ""
        downloader.limiter = self.download_limiter
        downloader.local_host = self.peers.local_host
        downloader.sharing = self.host.sharing
        job.sources = downloader.received  # live: the Job object shows who contributes
        # Cancel() cancels this job task itself while it downloads; the job catches that.
        task = asyncio.current_task()
        assert task is not None
        self._async_work[job.id] = task
        try:
            await downloader.run()
        finally:
            self._async_work.pop(job.id, None)
            # Peers were served chunks while it ran: none is read while the game installs.
            await self.host.transfers.cancel_and_drain(job.game_id)
        listed = downloader.committed
        if listed is not None and listed.chunk_size == CHUNK_SIZE:
            try:
                await in_thread(None, self.host.hashes.remember, job.game_id, root, listed.files)
            except OSError as exc:
                log.warning(
                    "cannot keep the hashes of %s; it is hashed again: %s", job.game_id, exc
                )

    async def _low_on_disk(self, job: Job) -> bool:
        """Too little room for the archives and the install side by side?"""
        if not self.config.stream_install_when_low_disk:
            return False
        version = self.library.catalog.games[job.game_id].version
        for peer in self.peers.holding(job.game_id, version):
            try:
                listing = await self.peers.request_file_list(peer.peer_id, job.game_id, version)
            except PeerError:
                continue
            archive_bytes = sum(f.size for f in listing.files)
            return self._free_space() < 2 * archive_bytes + SPACE_MARGIN
        return False

    async def _stream_install(self, job: Job, files: GameFiles, progress: Progress) -> None:
        game = self.library.catalog.games[job.game_id]
        version, pin = game.version, game.pin
        sources = self.peers.holding(job.game_id, version)
        if not sources:
            raise self._no_sources(job.game_id, version)
        errors = []
        for source in sources:
            try:
                grant = await self.peers.request_stream_install(
                    source.peer_id, job.game_id, version
                )
            except PeerError as exc:
                errors.append(str(exc))
                continue
            files.root.mkdir(parents=True, exist_ok=True)
            files.check_space(grant.total_bytes)
            task = asyncio.current_task()
            assert task is not None
            self._async_work[job.id] = task
            sock = await in_thread(
                None,
                open_data_channel,
                source.host,
                source.data_port,
                grant.token,
                self.peers.local_host,
            )
            receiver = StreamReceiver(sock, job.cancel_event, progress, grant.total_bytes)
            receiver.limiter = self.download_limiter

            def fill(
                staging: Path, receiver: StreamReceiver = receiver, name: str = source.name
            ) -> None:
                receiver.fill(staging)
                if pin is not None:  # no vote: the tree must be the one the organiser signed
                    check_tree(staging, pin.tree, name)

            try:
                await in_thread(sock, files.replace_local, fill, "stream-install", version)
            except CorruptData as exc:
                log.warning("%s; trying another peer", exc)
                errors.append(str(exc))
                continue
            finally:
                self._async_work.pop(job.id, None)
                sock.close()
            log.info(
                "stream-installed %s from %s: %d files, %d bytes",
                job.game_id,
                source.name,
                receiver.files,
                receiver.received,
            )
            return
        raise NoSources(f"no peer could stream {job.game_id}: {'; '.join(errors)}")

    async def _record_unpack(self, job: Job, files: GameFiles, started: float) -> None:
        """Persist the unpack run off the loop: its fsync can wait behind gigabytes."""
        try:
            await asyncio.to_thread(
                self.unpack_logs.add,
                job.game_id,
                str(job.kind),
                started,
                job.state is JobState.FINISHED,
                files.backends,
                job.error_message,
                "".join(files.output),
            )
        except OSError as exc:
            log.warning("cannot save unpack log: %s", exc)


_FILE_OPERATIONS: dict[OpKind, Callable[[GameFiles], object]] = {
    OpKind.INSTALL: GameFiles.install,
    OpKind.UPDATE: GameFiles.install,
    OpKind.UNINSTALL: GameFiles.uninstall,
    OpKind.REMOVE: GameFiles.remove_download,
}


def _os_error(exc: OSError, root: Path, game_dir: Path) -> LanspreadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left: {exc}")
    if exc.errno in ACCESS_ERRNOS:
        return no_access(exc.filename or root, game_dir, exc)
    return LanspreadError(str(exc))
