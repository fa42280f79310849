"""The composition root: builds every role, runs the services, stops cleanly.

The roles are `Games` (views and jobs), `Host` (what we serve and the data
server), `Catalogs` (the catalog in use, trusted keys, adoption) and the peer
layer; the daemon owns the task group they all run in, the services around them
(discovery, redial, the game-directory monitor, scans, the catalog's spread) and
what an administrator changes at run time (game directory, catalog, `Limits`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

from lanspreadd.app.catalogs import Catalogs, TrustedKeys, choose_catalog
from lanspreadd.app.config import Config
from lanspreadd.app.floods import release_after_floods
from lanspreadd.app.games import Games
from lanspreadd.app.host import Host
from lanspreadd.app.limits import Limits
from lanspreadd.app.logs import LogSink, UnpackLogs, UnpackRun
from lanspreadd.app.mesh import Mesh
from lanspreadd.app.settings import Settings
from lanspreadd.app.supervisor import Policy, Service, Supervisor
from lanspreadd.app.views import Observers
from lanspreadd.core.catalog import Catalog
from lanspreadd.core.gamedir import check_game_dir
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.install import recover_all
from lanspreadd.core.library import Library
from lanspreadd.core.operations import OperationTable
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import Busy, LanspreadError
from lanspreadd.net.discovery import Discovery
from lanspreadd.net.linkspeed import link_speed
from lanspreadd.net.monitor import GameDirMonitor, RescanQueue
from lanspreadd.net.peers import Peer, PeerManager

log = logging.getLogger(__name__)

MAX_LOG_LINES = 100_000


class Daemon:
    def __init__(self, config: Config, sink: LogSink) -> None:
        self.config = config
        self.sink = sink
        self.observers = Observers()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(config.state_dir)
        trust = TrustedKeys.of(config)
        first = choose_catalog(config, trust.keys())
        self.library = Library(self._initial_game_dir(), first.catalog)
        self.library.game_dir.mkdir(parents=True, exist_ok=True)
        self.ops = OperationTable()
        self.unpack_logs = UnpackLogs(config.state_dir / "unpack-logs.json")
        self.identity = load_or_create(config.state_dir / "identity", config.name)
        self._phase = "starting"  # then serving, then stopping
        self.failure: str | None = None
        self.supervisor = Supervisor(self._required_failed)
        self._stopping = asyncio.Event()
        self._monitor_changed = asyncio.Event()
        self._refusals_pending = asyncio.Event()
        self.refusals = RefusalTally(on_pending=self._refusals_pending.set)
        self.host = Host(
            config,
            self.library,
            self.ops,
            self.refusals,
            game_changed=lambda game_id: self.games.notify(game_id),
            served_changed=lambda: self.games.changes.served(),
            peer_changed=self._peer_changed,
        )
        self.peers = PeerManager(
            self.identity,
            config.name,
            config.listen,
            config.port,
            self.host,
            self.refusals,
            known=self._is_game,
        )
        self.games = Games(
            config, self.library, self.ops, self.host, self.peers, self.observers, self.unpack_logs
        )
        self.catalogs = Catalogs(
            config, trust, first, self.games, self.peers, self.refusals, lambda: self.status
        )
        self.peers.catalogs = self.catalogs
        self.mesh = Mesh(
            self.peers,
            self.refusals,
            config.max_peers,
            needed=self.games.needed,
            offered=self.host.offered,
            stopping=self._stopping,
            downloaded=lambda: self.games.runner.download_limiter.moved,
            link=link_speed(config.listen),
        )
        self.games.holders_known = self.mesh.policy.knows_holder
        self.limits = Limits(
            config, self.settings, self.host.data_server.limiter, self.games.runner.download_limiter
        )

    @property
    def catalog(self) -> Catalog:
        return self.library.catalog

    def _initial_game_dir(self) -> Path:
        """The configured directory, else the one last set. A set directory that is gone
        (a disk not mounted, the unit's access withdrawn) leaves the default in use until
        it is back, rather than a daemon that cannot start."""
        config = self.config
        if "game_dir" in config.explicit:
            return config.game_dir
        chosen = self.settings.game_dir(config.game_dir)
        if chosen == config.game_dir:
            return chosen
        try:
            return check_game_dir(str(chosen), config.state_dir)
        except LanspreadError as exc:
            log.warning("using %s for now: %s", config.game_dir, exc)
            return config.game_dir

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self, on_ready: asyncio.Event | None = None) -> None:
        recovered = await asyncio.to_thread(
            recover_all, self.library.game_dir, sorted(self.catalog.games)
        )
        for game_id, action in recovered.items():
            log.warning("recovered %s: %s", game_id, action)
        self.library.scan_all()
        self._queue = RescanQueue(self.games.rescan)
        async with asyncio.TaskGroup() as tg:
            self.games.accept_jobs(tg.create_task)
            service_tasks = [tg.create_task(self.supervisor.supervise(s)) for s in self._services()]
            ready = tg.create_task(self.peers.ready.wait())
            stopping = tg.create_task(self._stopping.wait())
            await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if not self._stopping.is_set():
                self._enter("serving")
                log.info("lanspreadd ready: game dir %s, %s", self.library.game_dir, self.status)
                if on_ready is not None:
                    on_ready.set()
            await stopping
            self._enter("stopping")
            await self.games.stop_jobs()
            await self.peers.say_goodbye("daemon shutting down")
            self.supervisor.stopping.set()
            for task in service_tasks:
                task.cancel()

    def _services(self) -> list[Service]:
        services = [
            Service("quic-server", self.peers.run, Policy.REQUIRED),
            Service("data-channel", self.host.data_channel, Policy.REQUIRED),
            Service("monitor", self._monitor_service, Policy.BEST_EFFORT),
            Service("rescan", self._queue.run, Policy.REQUIRED),
            Service("fallback-scan", self._fallback_scan, Policy.RESTART),
            Service("dial", self.mesh.dial, Policy.RESTART),
            Service("mesh", self.mesh.tend, Policy.RESTART),
            Service("preparer", self.host.preparer, Policy.RESTART),
            Service("refusal-report", self._report_refusals, Policy.RESTART),
            Service("after-floods", lambda: release_after_floods(self.refusals), Policy.RESTART),
            Service("changes", self.games.tell_changes, Policy.RESTART),
            Service("catalog-spread", self.catalogs.spread, Policy.RESTART),
        ]
        if self.config.mdns:
            services.append(Service("discovery", self._discovery, Policy.RESTART))
        return services

    def stop(self) -> None:
        self._stopping.set()

    def _required_failed(self, component: str, error: str) -> None:
        log.error("required service %s failed: %s; stopping", component, error)
        self.failure = f"{component}: {error}"
        self.observers.runtime_failed(component, error)
        self.stop()

    # ---- services -----------------------------------------------------------------------
    async def _monitor_service(self) -> None:
        while True:
            self._monitor_changed.clear()
            monitor = GameDirMonitor(self.library.game_dir, self._is_game, self._queue.mark)
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(monitor.run())
                await self._monitor_changed.wait()
                task.cancel()

    def _is_game(self, name: str) -> bool:
        return name in self.catalog.games

    async def _fallback_scan(self) -> None:
        while True:
            await asyncio.sleep(self.config.fallback_scan_interval)
            self.games.rescan(None)

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

    async def _discovery(self) -> None:
        await Discovery(
            self.identity.peer_id,
            self.config.name,
            self.config.port,
            list(self.config.mdns_interfaces),
            self.mesh.found,
            self.mesh.gone,
        ).run()

    def _peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        if peer is not None:
            self.mesh.changed(peer, reason)
        else:
            self.mesh.left(peer_id)
        self.games.peer_changed(peer_id, peer, reason)

    # ---- management ---------------------------------------------------------------------
    async def connect_peer(self, host: str, port: int | None) -> str:
        return await self.peers.connect(host, port or self.config.port)

    async def set_game_dir(self, path: str) -> None:
        try:
            new = await asyncio.to_thread(check_game_dir, path, self.config.state_dir)
        except LanspreadError as exc:
            log.warning("refused game directory %r: %s", path, exc)
            raise
        if self.ops.jobs:
            raise Busy("operations are running; wait or cancel them first")
        recovered = await asyncio.to_thread(recover_all, new, sorted(self.catalog.games))
        for game_id, action in recovered.items():
            log.warning("recovered %s: %s", game_id, action)
        self.library.move_to(new)
        await asyncio.to_thread(self.settings.save_game_dir, new)
        self.config = replace(self.config, game_dir=new)
        self._monitor_changed.set()
        log.info("game directory is now %s", new)
        self.games.notify_all()

    @property
    def status(self) -> str:
        """One line on what the daemon is doing, for `lanspreadctl status` and D-Bus."""
        if self._phase != "serving":
            return self._phase
        return (
            f"serving {len(self.catalog.games)} catalog games as "
            f"{self.identity.peer_id[:8]} on port {self.config.port}"
        )

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self.observers.status_changed(self.status)

    def reload_catalog(self) -> int:
        return self.catalogs.reload()

    def logs(self, max_lines: int) -> tuple[int, list[str]]:
        return self.sink.history(min(max_lines, MAX_LOG_LINES))

    def unpack_runs(self) -> list[UnpackRun]:
        return self.unpack_logs.newest_first()
