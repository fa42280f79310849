"""The games: their views, and the one job per game that changes them.

A job is started here, runs in the daemon's task group, and ends in exactly one
outcome. Starting a writer job hides the game from peers (the host stops serving
a game under an operation) and drains its outbound transfers before the
filesystem is touched.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lanspreadd.app.config import Config
from lanspreadd.app.downloader import Downloader
from lanspreadd.app.host import Host
from lanspreadd.app.logs import UnpackLogs
from lanspreadd.app.memory import release_freed_memory
from lanspreadd.app.stream_install import StreamReceiver
from lanspreadd.app.views import GameView, Observers
from lanspreadd.core.hashes import CHUNK_SIZE
from lanspreadd.core.install import SPACE_MARGIN, GameFiles, free_bytes
from lanspreadd.core.library import Availability, Library
from lanspreadd.core.operations import Job, JobState, OperationTable, OpKind
from lanspreadd.errors import (
    Busy,
    Cancelled,
    DiskFull,
    InvalidState,
    LanspreadError,
    NoSources,
    NotFound,
    PeerError,
    PeersGone,
)
from lanspreadd.net.dataclient import in_thread, open_data_channel
from lanspreadd.net.peers import PeerManager

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2
SHUTDOWN_GRACE = 30.0

Progress = Callable[[int, int], None]
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Games:
    def __init__(
        self,
        config: Config,
        library: Library,
        ops: OperationTable,
        host: Host,
        peers: PeerManager,
        observers: Observers,
        unpack_logs: UnpackLogs,
    ) -> None:
        self.config = config
        self.library = library
        self.ops = ops
        self.host = host
        self.peers = peers
        self.observers = observers
        self.unpack_logs = unpack_logs
        self._spawn: Spawn | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._async_work: dict[int, asyncio.Task[None]] = {}
        self._last_progress: dict[int, float] = {}

    # ---- views --------------------------------------------------------------------------
    def view(self, game_id: str) -> GameView:
        entry = self.library.catalog.get(game_id)
        if entry is None:
            raise NotFound(f"no game {game_id!r} in the catalog")
        state = self.library.states.get(game_id)
        if state is None:
            state, _ = self.library.rescan(game_id)
            assert state is not None
        job = self.ops.get(game_id)
        return GameView(
            id=game_id,
            name=entry.name,
            description=entry.description,
            size=entry.size,
            catalog_version=entry.version,
            local_version=state.local_version,
            installed_version=state.installed_version,
            downloaded=state.downloaded,
            installed=state.installed,
            update_ready=state.update_ready,
            availability=state.availability,
            operation=str(job.kind) if job else "",
            job_id=job.id if job else 0,
            sources=len(self.peers.holding(game_id, entry.version)),
            outbound_transfers=self.host.transfers.count(game_id),
            served=self.host.serves(game_id, state),
        )

    def all(self) -> list[GameView]:
        return [self.view(game_id) for game_id in sorted(self.library.catalog.games)]

    def notify(self, game_id: str, removed: bool = False) -> None:
        """Tell observers a game changed (or left the catalog)."""
        if removed:
            self.observers.game_removed(game_id)
        elif game_id in self.library.catalog.games:
            self.observers.game_changed(self.view(game_id))

    def notify_all(self) -> None:
        for game_id in sorted(self.library.catalog.games):
            self.notify(game_id)

    def rescan(self, game_ids: set[str] | None) -> None:
        """Rescan games (all when None); games under an operation keep their state."""
        ids = set(self.library.catalog.games) if game_ids is None else game_ids
        for game_id in sorted(ids):
            if game_id in self.ops.jobs:
                continue
            state, changed = self.library.rescan(game_id)
            if changed:
                self.notify(game_id, removed=state is None)
        self.host.prepare_wake.set()
        self.peers.announce()

    # ---- jobs ---------------------------------------------------------------------------
    def accept_jobs(self, spawn: Spawn | None) -> None:
        """Jobs run as tasks of the daemon's group; None while it is not running."""
        self._spawn = spawn

    def start(self, kind: OpKind, game_id: str, install: bool = False) -> Job:
        game = self.view(game_id)
        if (running := self.ops.get(game.id)) is not None:
            raise Busy(f"{game.id} is busy: {running.kind} is running (job {running.id})")
        _check_precondition(kind, game)
        if self._spawn is None:
            raise InvalidState("the daemon is shutting down")
        if kind in (OpKind.DOWNLOAD, OpKind.STREAM_INSTALL) and game.sources == 0:
            raise self._no_sources(game.id, game.catalog_version)
        job = self.ops.begin(game.id, kind)
        job.install_after = install
        log.info("%s of %s started (job %d)", kind, game.id, job.id)
        self.observers.job_started(job)
        self.notify(game.id)
        self.peers.announce()  # the game is hidden from peers while the job runs
        task = self._spawn(self._run_job(job))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        return job

    def cancel(self, game_id: str) -> Job:
        job = self.ops.get(game_id)
        if job is None:
            raise NotFound(f"no operation is running for {game_id}")
        job.cancel_event.set()
        work = self._async_work.get(job.id)
        if work is not None:
            work.cancel()
        log.info("cancel requested for %s of %s (job %d)", job.kind, game_id, job.id)
        return job

    async def stop_jobs(self) -> None:
        """Cancel every job and wait for them to end, up to a grace period."""
        self._spawn = None
        for job in list(self.ops.jobs.values()):
            job.cancel_event.set()
        for task in list(self._async_work.values()):
            task.cancel()
        if self._job_tasks:
            await asyncio.wait(list(self._job_tasks), timeout=SHUTDOWN_GRACE)

    def _no_sources(self, game_id: str, version: str) -> NoSources:
        """Say why nobody can send the game, so the player knows what to do about it."""
        peers = list(self.peers.peers.values())
        if not peers:
            why = "no peer is connected (see lanspreadctl peers, or connect HOST)"
        else:
            served = sorted({p.games[game_id] for p in peers if game_id in p.games})
            why = f"{len(peers)} peer(s) connected"
            if served:
                why += f", serving only version {', '.join(served)} (catalogs differ?)"
            else:
                why += ", none serves it yet (a peer that has it may still be hashing it)"
        return NoSources(f"no connected peer has {game_id} version {version}: {why}")

    def _progress(self, job: Job, done: int, total: int) -> None:
        now = time.monotonic()
        job.update(done, total, now)
        if now - self._last_progress.get(job.id, 0.0) >= PROGRESS_INTERVAL:
            self._last_progress[job.id] = now
            self.observers.job_progress(job)

    async def _run_job(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(self._progress, job, done, total)

        files = GameFiles(self.library.game_root(job.game_id), job.cancel_event, progress)
        started = time.time()
        try:
            await self.host.transfers.cancel_and_drain(job.game_id)
            await self._work(job, files, progress)
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
            error = _os_error(exc)
            job.finish(JobState.FAILED, error.name, str(error))
        except Exception as exc:
            log.exception("%s of %s crashed", job.kind, job.game_id)
            job.finish(JobState.FAILED, LanspreadError.name, f"internal error: {exc!r}")
        finally:
            if job.state is JobState.RUNNING:
                job.finish(JobState.CANCELLED, Cancelled.name, "stopped with the daemon")
            if job.kind in (OpKind.INSTALL, OpKind.UPDATE) or job.install_after:
                await self._record_unpack(job, files, started)
            self._finish_job(job)

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
        version = self.library.catalog.games[job.game_id].version
        root = self.library.game_root(job.game_id)
        downloader = Downloader(root, job.game_id, version, self.peers, progress)
        job.sources = downloader.received  # live: the Job object shows who contributes
        # Cancel() cancels this job task itself while it downloads; the job catches that.
        task = asyncio.current_task()
        assert task is not None
        self._async_work[job.id] = task
        try:
            await downloader.run()
        finally:
            self._async_work.pop(job.id, None)
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
            return self.free_space() < 2 * archive_bytes + SPACE_MARGIN
        return False

    async def _stream_install(self, job: Job, files: GameFiles, progress: Progress) -> None:
        version = self.library.catalog.games[job.game_id].version
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
                None, open_data_channel, source.host, source.data_port, grant.token
            )
            try:
                receiver = StreamReceiver(sock, job.cancel_event, progress, grant.total_bytes)
                await in_thread(sock, files.replace_local, receiver.fill, "stream-install", version)
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

    def _finish_job(self, job: Job) -> None:
        if job.state is JobState.FINISHED:
            job.update(job.bytes_total, job.bytes_total, time.monotonic())
            log.info("%s of %s finished (job %d)", job.kind, job.game_id, job.id)
        else:
            log.warning("%s of %s %s: %s", job.kind, job.game_id, job.state, job.error_message)
        self.ops.end(job)
        self._last_progress.pop(job.id, None)
        release_freed_memory()
        self.host.prepare_wake.set()
        state, _ = self.library.rescan(job.game_id)
        self.observers.job_finished(job)
        self.notify(job.game_id, removed=state is None)
        self.peers.announce()

    def free_space(self) -> int:
        try:
            return free_bytes(self.library.game_dir)
        except OSError:
            return 0


_FILE_OPERATIONS: dict[OpKind, Callable[[GameFiles], object]] = {
    OpKind.INSTALL: GameFiles.install,
    OpKind.UPDATE: GameFiles.install,
    OpKind.UNINSTALL: GameFiles.uninstall,
    OpKind.REMOVE: GameFiles.remove_download,
}


def _check_precondition(kind: OpKind, game: GameView) -> None:
    if kind in (OpKind.INSTALL, OpKind.UPDATE) and not game.downloaded:
        raise InvalidState(f"{game.id} is not downloaded (no version.ini in its directory)")
    if kind is OpKind.INSTALL and game.installed:
        raise InvalidState(f"{game.id} is already installed; use update to reinstall it")
    if kind is OpKind.UPDATE and not game.installed:
        raise InvalidState(f"{game.id} is not installed; use install")
    if kind is OpKind.UNINSTALL and not game.installed:
        raise InvalidState(f"{game.id} is not installed")
    if kind in (OpKind.DOWNLOAD, OpKind.STREAM_INSTALL) and (
        game.availability is Availability.READY
    ):
        raise InvalidState(f"{game.id} {game.catalog_version} is already downloaded")


def _os_error(exc: OSError) -> LanspreadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left: {exc}")
    return LanspreadError(str(exc))
