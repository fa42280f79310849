"""The games: their views, and the one job per game that changes them.

A job is started here, runs in the daemon's task group, and ends in exactly one
outcome. Starting a writer job hides the game from peers (the host stops serving
a game under an operation) and drains its outbound transfers before the
filesystem is touched.

Changes to views and to what we serve are marked in `PendingChanges` and told to
observers and peers a few times a second at most (`tell_changes`); a job's own
start and end are told at once, in order with the job's signals. A peer's
announcement recounts the sources of the games it touched, and no others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from lanspreadd.app.changes import Batch, PendingChanges
from lanspreadd.app.config import Config
from lanspreadd.app.host import Host
from lanspreadd.app.jobs import JobRunner
from lanspreadd.app.logs import UnpackLogs
from lanspreadd.app.memory import release_freed_memory
from lanspreadd.app.views import GameView, Observers
from lanspreadd.archive.extract import free_bytes
from lanspreadd.core.announced import SourceIndex
from lanspreadd.core.library import Availability, Library
from lanspreadd.core.operations import Job, JobState, OperationTable, OpKind
from lanspreadd.errors import (
    Busy,
    InvalidState,
    NoSources,
    NotFound,
)
from lanspreadd.net.peers import Peer, PeerManager

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
        self._changes_wake = asyncio.Event()
        self.changes = PendingChanges(on_pending=self._changes_wake.set)
        self.sources = SourceIndex()
        self._spawn: Spawn | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        # A holder we are not connected to, named by a neighbour (app.mesh): a download
        # may start, and the mesh dials it.
        self.holders_known: Callable[[str], bool] = lambda _game_id: False
        host.sharing.attach(peers)  # downloads tell and hear held chunks through the peers
        self.runner = JobRunner(
            config, library, host, peers, observers, unpack_logs, self._no_sources, self.free_space
        )

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
        share = self.host.sharing.shares.get(game_id)
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
            sources=self.sources.count(game_id),
            outbound_transfers=self.host.transfers.count(game_id),
            served=self.host.serves(game_id, state),
            pinned=entry.pin is not None,
            sharing_chunks=share.held_count if share is not None else 0,
            sharing_total=share.chunk_count if share is not None else 0,
        )

    def all(self) -> list[GameView]:
        return [self.view(game_id) for game_id in sorted(self.library.catalog.games)]

    def notify(self, game_id: str) -> None:
        """A game changed (or left the catalog): told with the next batch."""
        self.changes.game(game_id)

    def notify_all(self) -> None:
        self.changes.games(set(self.library.catalog.games))

    async def tell_changes(self) -> None:
        """The daemon's one teller of changes; asleep while none wait."""
        while True:
            due = self.changes.due()
            if due is None:
                self._changes_wake.clear()
                await self._changes_wake.wait()
                continue
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.tell(self.changes.take())

    def tell(self, batch: Batch) -> None:
        """Tell observers and peers what changed, each game and peer once."""
        for peer_id in sorted(batch.peers):
            self.observers.peer_changed(peer_id, self.peers.peers.get(peer_id))
        for game_id in sorted(batch.games):
            self._tell(game_id)
        if batch.served:
            self.peers.announce()

    def _tell(self, game_id: str) -> None:
        if game_id in self.library.catalog.games:
            self.observers.game_changed(self.view(game_id))
        else:
            self.observers.game_removed(game_id)

    def _tell_now(self, game_id: str) -> None:
        self.changes.told_game(game_id)
        self._tell(game_id)

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        """Recount only the sources of the games the peer's change touched.

        A peer that comes or goes is told at once (its object is there when a
        connect returns); what it announces is told with the next batch."""
        moved: set[str] = set()
        if peer is None or reason == "connected":
            # A new connection starts empty: whatever an old one held is gone.
            moved = self.sources.drop(peer_id)
            self.changes.told_peer(peer_id)
            self.observers.peer_changed(peer_id, peer)
        if peer is not None:
            touched = peer.announced.take_changed()
            if reason == "connected":
                touched.update(peer.games)
            elif touched:
                self.changes.peer(peer_id)
            moved |= self.sources.update(peer_id, peer.games, touched, self.library.catalog)
        self.changes.games(moved)

    def catalog_changed(self) -> None:
        """Our catalog changed: each peer's games are sorted again, every source recounted.

        Told at once, so the games' objects come and go before the reload returns."""
        catalog = self.library.catalog
        self.sources = SourceIndex()
        for peer in self.peers.peers.values():
            peer.announced.reclassify(catalog.games.__contains__)
            peer.announced.take_changed()
            self.sources.update(peer.peer_id, peer.games, peer.games, catalog)
            self.changes.peer(peer.peer_id)
        self.notify_all()
        self.tell(self.changes.take())

    def rescan(self, game_ids: set[str] | None) -> None:
        """Rescan games (all when None); games under an operation keep their state."""
        ids = set(self.library.catalog.games) if game_ids is None else game_ids
        for game_id in sorted(ids):
            if game_id in self.ops.jobs:
                continue
            _, changed = self.library.rescan(game_id)
            if changed:
                self.notify(game_id)
        self.host.prepare_wake.set()
        self.changes.served()

    # ---- jobs ---------------------------------------------------------------------------
    def accept_jobs(self, spawn: Spawn | None) -> None:
        """Jobs run as tasks of the daemon's group; None while it is not running."""
        self._spawn = spawn

    def start(
        self, kind: OpKind, game_id: str, install: bool = False, started_by_uid: int = 0
    ) -> Job:
        game = self.view(game_id)
        if (running := self.ops.get(game.id)) is not None:
            raise Busy(f"{game.id} is busy: {running.kind} is running (job {running.id})")
        _check_precondition(kind, game)
        if self._spawn is None:
            raise InvalidState("the daemon is shutting down")
        # A download may wait for a holder the mesh dials; a stream install may not.
        waits = kind is OpKind.DOWNLOAD and self.holders_known(game.id)
        if kind in (OpKind.DOWNLOAD, OpKind.STREAM_INSTALL) and game.sources == 0 and not waits:
            raise self._no_sources(game.id, game.catalog_version)
        job = self.ops.begin(game.id, kind)
        job.install_after = install
        job.started_by_uid = started_by_uid
        log.info("%s of %s started (job %d)", kind, game.id, job.id)
        self.observers.job_started(job)
        self._tell_now(game.id)
        self.changes.served()  # the game is hidden from peers while the job runs
        task = self._spawn(self._run(job))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        return job

    def job(self, game_id: str) -> Job:
        """The game's running job."""
        job = self.ops.get(game_id)
        if job is None:
            raise NotFound(f"no operation is running for {game_id}")
        return job

    def cancel_job(self, job: Job) -> None:
        """Ask a running job to stop: where it waits on peers at once, file work soon."""
        if job.state is not JobState.RUNNING or job.cancel_event.is_set():
            return
        job.cancel_event.set()
        self.runner.interrupt(job)
        log.info("cancel requested for %s of %s (job %d)", job.kind, job.game_id, job.id)

    async def stop_jobs(self) -> None:
        """Cancel every job and wait for them to end, up to a grace period."""
        self._spawn = None
        for job in list(self.ops.jobs.values()):
            job.cancel_event.set()
            self.runner.interrupt(job)
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

    async def _run(self, job: Job) -> None:
        try:
            await self.runner.run(job)
        finally:
            self._finish_job(job)

    def _finish_job(self, job: Job) -> None:
        if job.state is JobState.FINISHED:
            job.update(job.bytes_total, job.bytes_total, time.monotonic())
            log.info("%s of %s finished (job %d)", job.kind, job.game_id, job.id)
        else:
            log.warning("%s of %s %s: %s", job.kind, job.game_id, job.state, job.error_message)
        self.ops.end(job)
        release_freed_memory()
        self.host.prepare_wake.set()
        self.library.rescan(job.game_id)
        self.observers.job_finished(job)
        self._tell_now(job.game_id)
        self.changes.served()

    def needed(self) -> set[str]:
        """Games whose running download or stream install takes from peers."""
        taking = (OpKind.DOWNLOAD, OpKind.STREAM_INSTALL)
        return {job.game_id for job in self.ops.jobs.values() if job.kind in taking}

    def free_space(self) -> int:
        try:
            return free_bytes(self.library.game_dir)
        except OSError:
            return 0


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
