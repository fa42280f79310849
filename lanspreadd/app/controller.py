"""The domain controller: catalog, library, operations and their lifecycle.

It knows nothing of D-Bus; adapters observe it through `Observer` and call its
methods. It owns every task it starts (services and jobs) in one TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from lanspreadd.app.config import Config
from lanspreadd.app.downloader import Downloader
from lanspreadd.app.logs import LogSink, UnpackLogs, UnpackRun
from lanspreadd.app.memory import release_freed_memory
from lanspreadd.app.stream_install import StreamReceiver
from lanspreadd.app.supervisor import Policy, Service, Supervisor
from lanspreadd.archive.provider import RarStreamProvider
from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.catalog import Catalog, check_game_id
from lanspreadd.core.hashes import CHUNK_SIZE, HashCache
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.install import (
    SPACE_MARGIN,
    GameFiles,
    atomic_write,
    recover_all,
    root_archives,
)
from lanspreadd.core.library import Availability, GameState, Library
from lanspreadd.core.operations import Job, JobState, OperationTable, OpKind
from lanspreadd.core.redial import Dial, Redial
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import (
    ArchiveError,
    Busy,
    Cancelled,
    DiskFull,
    InvalidArgument,
    InvalidState,
    LanspreadError,
    NoSources,
    NotFound,
    NotServable,
    PeerError,
    PeersGone,
)
from lanspreadd.net.dataclient import in_thread, open_data_channel
from lanspreadd.net.dataserver import DataServer, Grant, OutboundTransfers
from lanspreadd.net.discovery import Discovery
from lanspreadd.net.monitor import GameDirMonitor, RescanQueue
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import (
    FileList,
    FileListRequest,
    StreamInstallGrant,
    StreamInstallRequest,
)

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.2
SHUTDOWN_GRACE = 30.0


@dataclass(frozen=True)
class GameView:
    id: str
    name: str
    description: str
    size: int
    catalog_version: str
    local_version: str
    installed_version: str
    downloaded: bool
    installed: bool
    update_ready: bool
    availability: Availability
    operation: str
    job_id: int
    sources: int
    outbound_transfers: int
    served: bool  # announced to peers right now


class Observer(Protocol):
    def game_changed(self, game: GameView) -> None: ...
    def game_removed(self, game_id: str) -> None: ...
    def job_started(self, job: Job) -> None: ...
    def job_progress(self, job: Job) -> None: ...
    def job_finished(self, job: Job) -> None: ...
    def runtime_failed(self, component: str, error: str) -> None: ...
    def peer_changed(self, peer_id: str, peer: Peer | None) -> None: ...


class Controller:
    def __init__(self, config: Config, sink: LogSink) -> None:
        self.config = config
        self.sink = sink
        self.observers: list[Observer] = []
        self.catalog = Catalog.load(config.catalog)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.library = Library(self._initial_game_dir(), self.catalog)
        self.library.game_dir.mkdir(parents=True, exist_ok=True)
        self.ops = OperationTable()
        self.unpack_logs = UnpackLogs(config.state_dir / "unpack-logs.json")
        self.started = time.time()
        self.status = "starting"
        self._tg: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._monitor_changed = asyncio.Event()
        self._last_progress: dict[int, float] = {}
        self.supervisor = Supervisor(self._required_failed)
        self.failure: str | None = None
        self.identity = load_or_create(config.state_dir / "identity", config.name)
        self.transfers = OutboundTransfers(self._transfers_changed)
        self._refusals_pending = asyncio.Event()
        self.refusals = RefusalTally(on_pending=self._refusals_pending.set)
        self.data_server = DataServer(
            self.is_servable,
            self.transfers,
            self.refusals,
            ConnectionCaps(config.data_connections_per_address, config.data_connections),
            config.upload_limit,
        )
        self.hashes = HashCache(config.state_dir / "hashes")
        self.peers = PeerManager(
            self.identity, config.name, config.listen, config.port, self, self.refusals
        )
        self.redial = Redial()
        self._redial_wake = asyncio.Event()
        # Games whose chunk hashes are cached for the state and root they were checked
        # at: only these are announced, so a peer's file list never waits on hashing.
        self._prepared: dict[str, tuple[Path, GameState]] = {}
        self._prepare_wake = asyncio.Event()
        self._async_work: dict[int, asyncio.Task[None]] = {}

    # ---- settings persisted across restarts -------------------------------------------
    @property
    def _settings_path(self) -> Path:
        return self.config.state_dir / "settings.json"

    def _initial_game_dir(self) -> Path:
        if "game_dir" in self.config.explicit:
            return self.config.game_dir
        try:
            saved = json.loads(self._settings_path.read_text("utf-8"))
            return Path(saved["game_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.config.game_dir

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self, on_ready: asyncio.Event | None = None) -> None:
        recovered = await asyncio.to_thread(
            recover_all, self.library.game_dir, sorted(self.catalog.games)
        )
        for game_id, action in recovered.items():
            log.warning("recovered %s: %s", game_id, action)
        self.library.scan_all()
        queue = RescanQueue(self.rescan)
        self._queue = queue
        services = [
            Service("quic-server", self.peers.run, Policy.REQUIRED),
            Service("data-channel", self._data_channel, Policy.REQUIRED),
            Service("monitor", self._monitor_service, Policy.BEST_EFFORT),
            Service("rescan", queue.run, Policy.REQUIRED),
            Service("fallback-scan", self._fallback_scan, Policy.RESTART),
            Service("redial", self._redial, Policy.RESTART),
            Service("preparer", self._preparer, Policy.RESTART),
            Service("refusal-report", self._report_refusals, Policy.RESTART),
        ]
        if self.config.mdns:
            services.append(Service("discovery", self._discovery, Policy.RESTART))
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            service_tasks = [tg.create_task(self.supervisor.supervise(s)) for s in services]
            ready = tg.create_task(self.peers.ready.wait())
            stopping = tg.create_task(self._stopping.wait())
            await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not self._stopping.is_set():
                self.status = (
                    f"serving {len(self.catalog.games)} catalog games as "
                    f"{self.identity.peer_id[:8]} on port {self.config.port}"
                )
                log.info("lanspreadd ready: game dir %s, %s", self.library.game_dir, self.status)
                if on_ready is not None:
                    on_ready.set()
            await stopping
            self.status = "stopping"
            for job in list(self.ops.jobs.values()):
                job.cancel_event.set()
            for task in list(self._async_work.values()):
                task.cancel()
            if self._job_tasks:
                await asyncio.wait(list(self._job_tasks), timeout=SHUTDOWN_GRACE)
            await self.peers.say_goodbye("daemon shutting down")
            self.supervisor.stopping.set()
            for task in service_tasks:
                task.cancel()
        self._tg = None

    def stop(self) -> None:
        self._stopping.set()

    def _required_failed(self, component: str, error: str) -> None:
        log.error("required service %s failed: %s; stopping", component, error)
        self.failure = f"{component}: {error}"
        for obs in self.observers:
            obs.runtime_failed(component, error)
        self.stop()

    async def _monitor_service(self) -> None:
        while True:
            self._monitor_changed.clear()
            monitor = GameDirMonitor(self.library.game_dir, self._is_game, self._queue.mark)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(monitor.run())
                await self._monitor_changed.wait()
                task.cancel()

    async def _fallback_scan(self) -> None:
        while True:
            await asyncio.sleep(self.config.fallback_scan_interval)
            self.rescan(None)

    async def _report_refusals(self) -> None:
        """Log the tally's summary lines when due; asleep while nothing is refused."""
        while True:
            due = self.refusals.report_due()
            if due is None:
                self._refusals_pending.clear()
                await self._refusals_pending.wait()
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.refusals.flush()

    async def _data_channel(self) -> None:
        await self.data_server.start(self.config.listen, self.config.port)
        try:
            await asyncio.Event().wait()
        finally:
            await self.data_server.close()

    async def _discovery(self) -> None:
        def found(peer_id: str, host: str, port: int) -> None:
            self.redial.seen(peer_id, host, port, time.monotonic())
            self._redial_wake.set()

        await Discovery(
            self.identity.peer_id,
            self.config.name,
            self.config.port,
            list(self.config.mdns_interfaces),
            found,
            self.redial.gone,
        ).run()

    async def _redial(self) -> None:
        """Dial every known peer that is not connected; the dials are owned here."""
        async with asyncio.TaskGroup() as tg:
            while True:
                now = time.monotonic()
                for dial in self.redial.due(now, self.peers.peers.keys()):
                    busy = self.peers.is_connected_or_connecting
                    # A daemon saying goodbye must not dial the peers it just left.
                    if not self._stopping.is_set() and not busy(dial.peer_id, dial.host, dial.port):
                        tg.create_task(self._connect_quietly(dial))
                self._redial_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._redial_wake.wait(), self.redial.next_wake(now))

    async def _connect_quietly(self, dial: Dial) -> None:
        try:
            await self.peers.connect(dial.host, dial.port, dial.peer_id)
        except PeerError as exc:
            # Said once per outage; the retries that follow are only worth a debug line.
            level = logging.INFO if dial.attempt == 0 else logging.DEBUG
            log.log(level, "peer %s not reachable, will retry: %s", dial.peer_id[:8], exc)

    def _is_game(self, name: str) -> bool:
        return name in self.catalog.games

    # ---- library views ------------------------------------------------------------------
    def rescan(self, game_ids: set[str] | None) -> None:
        """Rescan games (all when None); games under an operation keep their state."""
        ids = set(self.catalog.games) if game_ids is None else game_ids
        for game_id in sorted(ids):
            if game_id in self.ops.jobs:
                continue
            state, changed = self.library.rescan(game_id)
            if changed:
                self._notify_game(game_id, state)
        self._prepare_wake.set()
        self.peers.announce()

    def _notify_game(self, game_id: str, state: GameState | None) -> None:
        for obs in self.observers:
            if state is None:
                obs.game_removed(game_id)
            else:
                obs.game_changed(self.view(game_id))

    def view(self, game_id: str) -> GameView:
        entry = self.catalog.get(game_id)
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
            outbound_transfers=self.transfers.count(game_id),
            served=self._serves(game_id, state),
        )

    def game(self, game_id: object) -> GameView:
        return self.view(check_game_id(game_id))

    def games(self) -> list[GameView]:
        return [self.view(game_id) for game_id in sorted(self.catalog.games)]

    # ---- operations ---------------------------------------------------------------------
    def start(self, kind: OpKind, game_id: object, install: bool = False) -> Job:
        game = self.game(game_id)
        if (running := self.ops.get(game.id)) is not None:
            raise Busy(f"{game.id} is busy: {running.kind} is running (job {running.id})")
        self._check_precondition(kind, game)
        if self._tg is None or self._stopping.is_set():
            raise InvalidState("the daemon is shutting down")
        if kind in (OpKind.DOWNLOAD, OpKind.STREAM_INSTALL) and game.sources == 0:
            raise self._no_sources(game.id, game.catalog_version)
        job = self.ops.begin(game.id, kind)
        job.install_after = install
        log.info("%s of %s started (job %d)", kind, game.id, job.id)
        for obs in self.observers:
            obs.job_started(job)
            obs.game_changed(self.view(game.id))
        self.peers.announce()  # the game is hidden from peers while the job runs
        task = self._tg.create_task(self._run_job(job))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        return job

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

    @staticmethod
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

    def cancel(self, game_id: object) -> Job:
        gid = check_game_id(game_id)
        job = self.ops.get(gid)
        if job is None:
            raise NotFound(f"no operation is running for {gid}")
        job.cancel_event.set()
        work = self._async_work.get(job.id)
        if work is not None:
            work.cancel()
        log.info("cancel requested for %s of %s (job %d)", job.kind, gid, job.id)
        return job

    def _progress(self, job: Job, done: int, total: int) -> None:
        now = time.monotonic()
        job.update(done, total, now)
        if now - self._last_progress.get(job.id, 0.0) >= PROGRESS_INTERVAL:
            self._last_progress[job.id] = now
            for obs in self.observers:
                obs.job_progress(job)

    async def _run_job(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(self._progress, job, done, total)

        files = GameFiles(self.library.game_root(job.game_id), job.cancel_event, progress)
        started = time.time()
        try:
            await self.transfers.cancel_and_drain(job.game_id)
            if job.kind is OpKind.DOWNLOAD and job.install_after and await self._low_on_disk(job):
                log.info("little free space: %s will be stream-installed instead", job.game_id)
                await self._stream_install(job, files, progress)
            elif job.kind is OpKind.DOWNLOAD:
                await self._download(job, progress)
                if job.install_after:
                    await asyncio.to_thread(files.install)
            elif job.kind is OpKind.STREAM_INSTALL:
                await self._stream_install(job, files, progress)
            elif job.kind in (OpKind.INSTALL, OpKind.UPDATE):
                await asyncio.to_thread(files.install)
            elif job.kind is OpKind.UNINSTALL:
                await asyncio.to_thread(files.uninstall)
            elif job.kind is OpKind.REMOVE:
                await asyncio.to_thread(files.remove_download)
            else:
                raise InvalidState(f"{job.kind} is not supported")
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
            error: LanspreadError = (
                DiskFull(f"no space left: {exc}")
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else LanspreadError(str(exc))
            )
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

    async def _download(self, job: Job, progress: Callable[[int, int], None]) -> None:
        entry = self.catalog.games[job.game_id]
        downloader = Downloader(
            self.library.game_root(job.game_id), job.game_id, entry.version, self.peers, progress
        )
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
            root = self.library.game_root(job.game_id)
            try:
                await in_thread(None, self.hashes.remember, job.game_id, root, listed.files)
            except OSError as exc:
                log.warning(
                    "cannot keep the hashes of %s; it is hashed again: %s", job.game_id, exc
                )

    async def _low_on_disk(self, job: Job) -> bool:
        """Too little room for the archives and the install side by side?"""
        if not self.config.stream_install_when_low_disk:
            return False
        version = self.catalog.games[job.game_id].version
        for peer in self.peers.holding(job.game_id, version):
            try:
                listing = await self.peers.request_file_list(peer.peer_id, job.game_id, version)
            except PeerError:
                continue
            archive_bytes = sum(f.size for f in listing.files)
            return self.free_space() < 2 * archive_bytes + SPACE_MARGIN
        return False

    async def _stream_install(
        self, job: Job, files: GameFiles, progress: Callable[[int, int], None]
    ) -> None:
        version = self.catalog.games[job.game_id].version
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
        self._prepare_wake.set()
        state, _ = self.library.rescan(job.game_id)
        for obs in self.observers:
            obs.job_finished(job)
        self._notify_game(job.game_id, state)
        self.peers.announce()

    # ---- management ---------------------------------------------------------------------
    async def set_game_dir(self, path: object) -> None:
        if not isinstance(path, str) or not path or "\x00" in path:
            raise InvalidArgument("the game directory must be a non-empty path")
        new = Path(path)
        if not new.is_absolute():
            raise InvalidArgument(f"the game directory must be absolute: {path!r}")
        if not await asyncio.to_thread(new.is_dir):
            raise InvalidArgument(f"{path} is not an existing directory")
        if self.ops.jobs:
            raise InvalidState("operations are running; wait or cancel them first")
        recovered = await asyncio.to_thread(recover_all, new, sorted(self.catalog.games))
        for game_id, action in recovered.items():
            log.warning("recovered %s: %s", game_id, action)
        self.library = Library(new, self.catalog)
        self.library.scan_all()
        await asyncio.to_thread(
            atomic_write, self._settings_path, json.dumps({"game_dir": str(new)}).encode()
        )
        self.config = replace(self.config, game_dir=new)
        self._monitor_changed.set()
        log.info("game directory is now %s", new)
        for game_id in sorted(self.catalog.games):
            self._notify_game(game_id, self.library.states.get(game_id))

    def reload_catalog(self) -> int:
        catalog = Catalog.load(self.catalog.source)
        old = set(self.catalog.games)
        self.catalog = catalog
        self.library.catalog = catalog
        for game_id in old - set(catalog.games):
            self.library.states.pop(game_id, None)
            self._notify_game(game_id, None)
        self.rescan(None)
        for game_id in sorted(set(catalog.games) - old):
            self._notify_game(game_id, self.library.states.get(game_id))
        log.info("catalog reloaded from %s: %d games", catalog.source, len(catalog.games))
        return len(catalog.games)

    def logs(self, max_lines: object) -> tuple[int, list[str]]:
        if not isinstance(max_lines, int) or max_lines < 0:
            raise InvalidArgument("max_lines must be a non-negative integer")
        return self.sink.history(min(max_lines, 100_000))

    def unpack_runs(self) -> list[UnpackRun]:
        return self.unpack_logs.newest_first()

    # ---- the peer-facing side (PeerHost) ------------------------------------------------
    def snapshot(self) -> dict[str, str]:
        """Games we serve now: Ready at the catalog version, hashed, with no operation running."""
        return {
            game_id: state.local_version
            for game_id, state in self.library.states.items()
            if self._serves(game_id, state)
        }

    def _may_serve(self, game_id: str, state: GameState) -> bool:
        """Ready at the catalog version with no operation on it: only hashing is missing."""
        return state.availability is Availability.READY and game_id not in self.ops.jobs

    def _hashed(self, game_id: str, state: GameState) -> bool:
        return self._prepared.get(game_id) == (self.library.game_root(game_id), state)

    def _serves(self, game_id: str, state: GameState) -> bool:
        return self._may_serve(game_id, state) and self._hashed(game_id, state)

    def _unprepared(self) -> list[tuple[str, GameState]]:
        return [
            (game_id, state)
            for game_id, state in sorted(self.library.states.items())
            if self._may_serve(game_id, state) and not self._hashed(game_id, state)
        ]

    async def _preparer(self) -> None:
        """Hash Ready games before announcing them, one at a time.

        A first file-list request used to hash the whole game while the peer waited:
        tens of GB take longer than the peer's request timeout, and every peer asking
        at once hashed the same files in parallel.
        """
        while True:
            self._prepare_wake.clear()
            for game_id, state in self._unprepared():
                root = self.library.game_root(game_id)
                if await self._prepare(game_id, root):
                    self._prepared[game_id] = (root, state)
                    self.peers.announce()
                    self._notify_game(game_id, state)
            await self._prepare_wake.wait()

    async def _prepare(self, game_id: str, root: Path) -> bool:
        cancel = threading.Event()
        try:
            stale = await in_thread(None, self.hashes.stale_bytes, game_id, root)
            if not stale:
                return True
            log.info("hashing %s before serving it: %d bytes", game_id, stale)
            started = time.monotonic()
            await in_thread(cancel, self.hashes.file_entries, game_id, root, cancel)
        except (OSError, Cancelled) as exc:
            log.info("cannot hash %s for serving yet: %s", game_id, exc)
            return False
        log.info("%s is ready to serve (hashed in %.1f s)", game_id, time.monotonic() - started)
        return True

    def is_servable(self, game_id: str, version: str) -> bool:
        return self.snapshot().get(game_id) == version

    async def file_list(self, peer_id: str, request: FileListRequest) -> FileList:
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} {request.version} is not served here now")
        root = self.library.game_root(request.game_id)
        log.info("peer %s asked for the file list of %s", peer_id[:8], request.game_id)
        entries = await asyncio.to_thread(self.hashes.file_entries, request.game_id, root)
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} changed while it was being listed")
        token = self.data_server.issue(
            Grant(peer_id, request.game_id, request.version, root, entries)
        )
        return FileList(
            request.request_id, request.game_id, request.version, CHUNK_SIZE, entries, token
        )

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        if peer is None:
            self.data_server.revoke_peer(peer_id)
        elif reason == "connected":
            # Incoming and manual peers are redialled too once the connection drops.
            self.redial.seen(peer_id, peer.host, peer.data_port, time.monotonic(), connected=True)
        for obs in self.observers:
            obs.peer_changed(peer_id, peer)
        for game_id in self.catalog.games:
            for obs in self.observers:
                obs.game_changed(self.view(game_id))

    def _transfers_changed(self, game_id: str, count: int) -> None:
        if game_id in self.catalog.games:
            for obs in self.observers:
                obs.game_changed(self.view(game_id))

    async def stream_grant(self, peer_id: str, request: StreamInstallRequest) -> StreamInstallGrant:
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} {request.version} is not served here now")
        root = self.library.game_root(request.game_id)
        try:
            provider = await asyncio.to_thread(RarStreamProvider, root_archives(root))
        except ArchiveError as exc:
            raise NotServable(f"cannot stream {request.game_id}: {exc}") from exc
        log.info("peer %s asked to stream-install %s", peer_id[:8], request.game_id)
        token = self.data_server.issue(
            Grant(peer_id, request.game_id, request.version, root, provider=provider)
        )
        return StreamInstallGrant(request.request_id, provider.total_bytes(), token)

    async def connect_peer(self, address: object) -> str:
        if not isinstance(address, str) or not address or len(address) > 255:
            raise InvalidArgument("give an address as HOST or HOST:PORT")
        host, sep, port_text = address.rpartition(":")
        if not sep or "]" in port_text:
            host, port_text = address, str(self.config.port)
        host = host.strip("[]")
        try:
            port = int(port_text)
        except ValueError:
            raise InvalidArgument(f"invalid port in {address!r}") from None
        if not host or not 0 < port < 65536:
            raise InvalidArgument(f"invalid address {address!r}")
        return await self.peers.connect(host, port)

    def free_space(self) -> int:
        with contextlib.suppress(OSError):
            st = os.statvfs(self.library.game_dir)
            return st.f_bavail * st.f_frsize
        return 0
