"""The D-Bus adapter: ObjectManager root, game and job objects, manager methods.

A thin layer over the daemon's roles: it maps arguments in, `LanspreadError`s out to
named D-Bus errors, checks polkit on every mutating call, and turns daemon
events into PropertiesChanged and signals.
"""

import asyncio
import contextlib
import contextvars
import logging
from dataclasses import asdict
from typing import Any, ClassVar

from dbus_fast import (
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    PropertyAccess,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus
from dbus_fast.service import dbus_property, method, signal

from lanspreadd import __version__
from lanspreadd.app.daemon import Daemon
from lanspreadd.app.logs import LogLine
from lanspreadd.app.views import GameView
from lanspreadd.core.catalog import Catalog
from lanspreadd.core.escape import escape_unsafe
from lanspreadd.core.operations import Job, JobState, OpKind
from lanspreadd.core.ratelimit import check_rate
from lanspreadd.core.signedcatalog import MAX_DOCUMENT, parse_key
from lanspreadd.dbus import args
from lanspreadd.dbus.busconnect import connect_bus
from lanspreadd.dbus.conventions import Exported, ObjectManagerBus
from lanspreadd.dbus.errors import dbus_errors
from lanspreadd.dbus.job import JobInterface
from lanspreadd.dbus.polkit import check_authorization
from lanspreadd.errors import (
    CatalogError,
    InvalidArgument,
    InvalidState,
    LanspreadError,
    NotAuthorized,
)
from lanspreadd.net.peers import Peer

log = logging.getLogger(__name__)

BUS_NAME = "org.lanspread.Lanspread1"
ROOT_PATH = "/org/lanspread/Lanspread1"
MANAGER_IFACE = "org.lanspread.Lanspread1.Manager"
GAME_IFACE = "org.lanspread.Lanspread1.Game"
PEER_IFACE = "org.lanspread.Lanspread1.Peer"
JOB_LINGER = 10.0  # seconds an ended job stays on the bus for clients that look late
FREE_SPACE_EVERY = 10.0  # how often free space is looked at while nothing else tells

ACTIONS = {
    OpKind.INSTALL: "org.lanspread.install-game",
    OpKind.UPDATE: "org.lanspread.install-game",
    OpKind.STREAM_INSTALL: "org.lanspread.install-game",
    OpKind.UNINSTALL: "org.lanspread.remove-game",
    OpKind.REMOVE: "org.lanspread.remove-game",
}
ACTION_DOWNLOAD = "org.lanspread.download-game"
ACTION_PEERS = "org.lanspread.manage-peers"
ACTION_CANCEL = "org.lanspread.cancel-operation"
ACTION_CONFIGURE = "org.lanspread.configure"
ACTION_CATALOG = "org.lanspread.manage-catalog"
LIMITS = {"UploadLimit": "upload_limit", "DownloadLimit": "download_limit"}  # to Limits' keys

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
# The caller set ALLOW_INTERACTIVE_AUTHORIZATION: someone can answer a polkit prompt.
_interactive: contextvars.ContextVar[bool] = contextvars.ContextVar("interactive", default=False)


def escape_path_element(text: str) -> str:
    """Escape like systemd's bus_label_escape: keep [A-Za-z0-9], hex-escape the rest."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in text) or "_"


def game_path(game_id: str) -> str:
    return f"{ROOT_PATH}/games/{escape_path_element(game_id)}"


def job_path(job_id: int) -> str:
    return f"{ROOT_PATH}/jobs/{job_id}"


def game_dict(game: GameView) -> dict[str, Variant]:
    return {
        "Id": Variant("s", game.id),
        "Name": Variant("s", game.name),
        "Description": Variant("s", game.description),
        "Size": Variant("t", game.size),
        "CatalogVersion": Variant("s", game.catalog_version),
        "LocalVersion": Variant("s", game.local_version),
        "InstalledVersion": Variant("s", game.installed_version),
        "UpdateReady": Variant("b", game.update_ready),
        "Downloaded": Variant("b", game.downloaded),
        "Installed": Variant("b", game.installed),
        "Availability": Variant("s", str(game.availability)),
        "Operation": Variant("s", game.operation),
        "Job": Variant("o", job_path(game.job_id) if game.job_id else "/"),
        "Sources": Variant("u", game.sources),
        "OutboundTransfers": Variant("u", game.outbound_transfers),
        "Served": Variant("b", game.served),
        "Pinned": Variant("b", game.pinned),
        "SharingChunks": Variant("u", game.sharing_chunks),
        "SharingTotal": Variant("u", game.sharing_total),
        "ObjectPath": Variant("o", game_path(game.id)),
    }


def peer_path(peer_id: str) -> str:
    return f"{ROOT_PATH}/peers/{escape_path_element(peer_id)}"


def peer_dict(peer: Peer) -> dict[str, Variant]:
    return {
        "Id": Variant("s", peer.peer_id),
        "Name": Variant("s", peer.name),
        "Address": Variant("s", peer.host),
        "DataPort": Variant("u", peer.data_port),
        "Direction": Variant("s", "outgoing" if peer.outgoing else "incoming"),
        "ConnectedSince": Variant("d", peer.since),
        "Games": Variant("a{ss}", dict(peer.games)),
        "ObjectPath": Variant("o", peer_path(peer.peer_id)),
    }


class LanspreadBus(ObjectManagerBus):
    manager_path = ROOT_PATH


class GameInterface(Exported):
    CONSTANT = frozenset({"Id"})

    def __init__(self, game: GameView) -> None:
        super().__init__(GAME_IFACE)
        self.game = game

    def update(self, game: GameView) -> None:
        old = game_dict(self.game)
        self.game = game
        changed = {k: v.value for k, v in game_dict(game).items() if old[k] != v}
        changed.pop("ObjectPath", None)
        if changed:
            self.emit_properties_changed(changed)

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return self.game.id

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.game.name

    @dbus_property(access=PropertyAccess.READ)
    def Description(self) -> "s":
        return self.game.description

    @dbus_property(access=PropertyAccess.READ)
    def Size(self) -> "t":
        return self.game.size

    @dbus_property(access=PropertyAccess.READ)
    def CatalogVersion(self) -> "s":
        return self.game.catalog_version

    @dbus_property(access=PropertyAccess.READ)
    def LocalVersion(self) -> "s":
        return self.game.local_version

    @dbus_property(access=PropertyAccess.READ)
    def Served(self) -> "b":
        return self.game.served

    @dbus_property(access=PropertyAccess.READ)
    def InstalledVersion(self) -> "s":
        return self.game.installed_version

    @dbus_property(access=PropertyAccess.READ)
    def UpdateReady(self) -> "b":
        return self.game.update_ready

    @dbus_property(access=PropertyAccess.READ)
    def Downloaded(self) -> "b":
        return self.game.downloaded

    @dbus_property(access=PropertyAccess.READ)
    def Installed(self) -> "b":
        return self.game.installed

    @dbus_property(access=PropertyAccess.READ)
    def Availability(self) -> "s":
        return str(self.game.availability)

    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> "s":
        return self.game.operation

    @dbus_property(access=PropertyAccess.READ)
    def Job(self) -> "o":
        return job_path(self.game.job_id) if self.game.job_id else "/"

    @dbus_property(access=PropertyAccess.READ)
    def Sources(self) -> "u":
        return self.game.sources

    @dbus_property(access=PropertyAccess.READ)
    def OutboundTransfers(self) -> "u":
        return self.game.outbound_transfers

    @dbus_property(access=PropertyAccess.READ)
    def Pinned(self) -> "b":
        return self.game.pinned

    @dbus_property(access=PropertyAccess.READ)
    def SharingChunks(self) -> "u":
        """Chunks of the download in progress that peers may take from us now."""
        return self.game.sharing_chunks

    @dbus_property(access=PropertyAccess.READ)
    def SharingTotal(self) -> "u":
        """The chunks of its file list it may serve (all but version.ini's); 0: not sharing."""
        return self.game.sharing_total


class PeerInterface(Exported):
    CONSTANT = frozenset({"Id", "Address", "Direction", "ConnectedSince"})

    def __init__(self, peer: Peer) -> None:
        super().__init__(PEER_IFACE)
        self.peer = peer
        self.last = peer_dict(peer)

    def update(self, peer: Peer) -> None:
        self.peer = peer
        new = peer_dict(peer)
        changed = {k: v.value for k, v in new.items() if self.last.get(k) != v}
        self.last = new
        changed.pop("ObjectPath", None)
        if changed:
            self.emit_properties_changed(changed)

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> "s":
        return self.peer.peer_id

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.peer.name

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> "s":
        return self.peer.host

    @dbus_property(access=PropertyAccess.READ)
    def DataPort(self) -> "u":
        return self.peer.data_port

    @dbus_property(access=PropertyAccess.READ)
    def Direction(self) -> "s":
        return "outgoing" if self.peer.outgoing else "incoming"

    @dbus_property(access=PropertyAccess.READ)
    def ConnectedSince(self) -> "d":
        return self.peer.since

    @dbus_property(access=PropertyAccess.READ)
    def Games(self) -> "a{ss}":
        return dict(self.peer.games)


class ManagerInterface(Exported):
    ARG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "Cancel": ("job",),
        "ConnectPeer": ("peer_id",),
        "Download": ("job",),
        "GetGame": ("game",),
        "GetLogs": ("last_sequence", "lines"),
        "GetUnpackLogs": ("runs",),
        "Install": ("job",),
        "ListGames": ("games",),
        "ListPeers": ("peers",),
        "ReloadCatalog": ("games",),
        "RemoveDownload": ("job",),
        "StreamInstall": ("job",),
        "Uninstall": ("job",),
        "Update": ("job",),
        "LogLine": ("sequence", "level", "text"),
        "RuntimeFailed": ("component", "error"),
        "OutboundTransfersChanged": ("game_id", "count"),
        "CatalogAdopted": ("revision", "signer"),
    }
    CONSTANT = frozenset({"Version", "Name", "PeerId", "Port", "ShareWhileDownloading"})
    UNTOLD = frozenset({"Refusals"})  # a flood must not become a signal storm: ask

    def __init__(self, api: "DBusApi") -> None:
        super().__init__(MANAGER_IFACE)
        self.api = api
        self.daemon = api.daemon

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self.daemon.config.name

    @dbus_property(access=PropertyAccess.READ)
    def GameDir(self) -> "s":
        return str(self.daemon.library.game_dir)

    @dbus_property(access=PropertyAccess.READ)
    def Catalog(self) -> "s":
        return str(self.daemon.catalog.source)

    @dbus_property(access=PropertyAccess.READ)
    def CatalogRevision(self) -> "u":
        """The organiser's revision of the catalog in use; 0 for an unsigned one."""
        return self.daemon.catalog.revision

    @dbus_property(access=PropertyAccess.READ)
    def CatalogSigner(self) -> "s":
        """Fingerprint of the key that signed the catalog in use; "" if none did."""
        return self.daemon.catalog.signer

    @dbus_property(access=PropertyAccess.READ)
    def TrustedKeys(self) -> "as":
        return self.daemon.catalogs.trust.texts()

    @dbus_property(access=PropertyAccess.READ)
    def Status(self) -> "s":
        return self.daemon.status

    @dbus_property(access=PropertyAccess.READ)
    def FreeSpace(self) -> "t":
        return self.daemon.games.free_space()

    @dbus_property(access=PropertyAccess.READ)
    def PeerId(self) -> "s":
        return self.daemon.identity.peer_id

    @dbus_property(access=PropertyAccess.READ)
    def Port(self) -> "u":
        return self.daemon.config.port

    @dbus_property()
    def UploadLimit(self) -> "t":
        """Bytes per second peers may pull from us in all; 0: unlimited."""
        return self.daemon.limits.rate(LIMITS["UploadLimit"])

    @UploadLimit.setter  # type: ignore[no-redef]  # dbus-fast's setters take the getter's name
    async def UploadLimit(self, rate: "t") -> None:
        await self.api.set_limit("UploadLimit", rate)

    @dbus_property()
    def DownloadLimit(self) -> "t":
        """Bytes per second all our downloads and stream installs may pull; 0: unlimited."""
        return self.daemon.limits.rate(LIMITS["DownloadLimit"])

    @DownloadLimit.setter  # type: ignore[no-redef]  # dbus-fast's setters take the getter's name
    async def DownloadLimit(self, rate: "t") -> None:
        await self.api.set_limit("DownloadLimit", rate)

    @dbus_property(access=PropertyAccess.READ)
    def ShareWhileDownloading(self) -> "b":
        """Downloads in progress serve their verified chunks to peers (the setting)."""
        return self.daemon.config.share_while_downloading

    @dbus_property(access=PropertyAccess.READ)
    def Refusals(self) -> "a{st}":
        """What was refused since start, by cause (hostile or overloaded peers)."""
        return dict(self.daemon.refusals.totals)

    @method()
    def ListPeers(self) -> "aa{sv}":
        peers = self.daemon.peers.peers.values()
        return [peer_dict(p) for p in sorted(peers, key=lambda p: p.name)]

    @method()
    async def ConnectPeer(self, address: "s") -> "s":
        with dbus_errors():
            host, port = args.address(address)
            await self.api.authorize(ACTION_PEERS)
            return await self.daemon.connect_peer(host, port)

    @method()
    async def Download(self, game_id: "s", install: "b") -> "o":
        with dbus_errors():
            gid = args.known_game(self.daemon.catalog, game_id)
            await self.api.authorize(ACTION_DOWNLOAD)
            uid = await self.api.caller_uid()
            job = self.daemon.games.start(OpKind.DOWNLOAD, gid, install, uid)
            return job_path(job.id)

    @method()
    def ListGames(self) -> "aa{sv}":
        return [game_dict(g) for g in self.daemon.games.all()]

    @method()
    def GetGame(self, game_id: "s") -> "a{sv}":
        with dbus_errors():
            return game_dict(self.daemon.games.view(args.known_game(self.daemon.catalog, game_id)))

    async def _start(self, kind: OpKind, game_id: str) -> str:
        with dbus_errors():
            gid = args.known_game(self.daemon.catalog, game_id)
            await self.api.authorize(ACTIONS[kind])
            uid = await self.api.caller_uid()
            return job_path(self.daemon.games.start(kind, gid, False, uid).id)

    @method()
    async def Install(self, game_id: "s") -> "o":
        return await self._start(OpKind.INSTALL, game_id)

    @method()
    async def Update(self, game_id: "s") -> "o":
        return await self._start(OpKind.UPDATE, game_id)

    @method()
    async def StreamInstall(self, game_id: "s") -> "o":
        return await self._start(OpKind.STREAM_INSTALL, game_id)

    @method()
    async def Uninstall(self, game_id: "s") -> "o":
        return await self._start(OpKind.UNINSTALL, game_id)

    @method()
    async def RemoveDownload(self, game_id: "s") -> "o":
        return await self._start(OpKind.REMOVE, game_id)

    @method()
    async def Cancel(self, game_id: "s") -> "o":
        with dbus_errors():
            gid = args.known_game(self.daemon.catalog, game_id)
            job = self.daemon.games.job(gid)
            await self.api.cancel(job)
            return job_path(job.id)

    @method()
    async def SetGameDir(self, path: "s") -> None:
        with dbus_errors():
            await self.api.authorize(ACTION_CONFIGURE)
            await self.daemon.set_game_dir(path)
            self.emit_properties_changed({"GameDir": str(self.daemon.library.game_dir)})
            self.api.look_at_free_space()

    @method()
    async def ReloadCatalog(self) -> "u":
        with dbus_errors():
            await self.api.authorize(ACTION_CONFIGURE)
            return self.daemon.reload_catalog()

    @method()
    async def PublishCatalog(self, document: "ay") -> None:
        with dbus_errors():
            if len(document) > MAX_DOCUMENT:
                raise CatalogError(f"the catalog is {len(document)} bytes; at most {MAX_DOCUMENT}")
            await self.api.authorize(ACTION_CATALOG)
            uid = await self.api.caller_uid()
            await self.daemon.catalogs.adopt(bytes(document), f"a publish by uid {uid}")

    @method()
    async def TrustKey(self, key: "s") -> None:
        with dbus_errors():
            parse_key(key)  # a named error before polkit asks anyone
            await self.api.authorize(ACTION_CATALOG)
            await self.daemon.catalogs.trust_key(key)
            self.api.tell_catalog()

    @method()
    async def UntrustKey(self, key: "s") -> None:
        with dbus_errors():
            parse_key(key)
            await self.api.authorize(ACTION_CATALOG)
            await self.daemon.catalogs.untrust_key(key)
            self.api.tell_catalog()

    @method()
    def GetLogs(self, max_lines: "u") -> "tas":
        with dbus_errors():
            seq, lines = self.daemon.logs(max_lines)
            return [seq, lines]

    @method()
    def GetUnpackLogs(self) -> "aa{sv}":
        result = []
        for run in self.daemon.unpack_runs():
            item = asdict(run)
            result.append(
                {
                    "GameId": Variant("s", item["game_id"]),
                    "Operation": Variant("s", item["operation"]),
                    "Started": Variant("d", item["started"]),
                    "Finished": Variant("d", item["finished"]),
                    "Success": Variant("b", item["success"]),
                    "Backends": Variant("as", item["backends"]),
                    "Error": Variant("s", escape_unsafe(item["error"])),
                    "Output": Variant("s", escape_unsafe(item["output"])),
                }
            )
        return result

    @signal()
    def LogLine(self, line: LogLine) -> "tss":
        return [line.seq, line.level, line.text]

    @signal()
    def RuntimeFailed(self, component: str, error: str) -> "ss":
        return [component, error]

    @signal()
    def OutboundTransfersChanged(self, game_id: str, count: int) -> "su":
        return [game_id, count]

    @signal()
    def CatalogAdopted(self, revision: int, signer: str) -> "us":
        return [revision, signer]


class DBusApi:
    """Owns the bus connection and the exported objects; observes the daemon."""

    def __init__(
        self, daemon: Daemon, bus_spec: str, use_polkit: bool, job_linger: float = JOB_LINGER
    ) -> None:
        self.daemon = daemon
        self.bus_spec = bus_spec
        self.use_polkit = use_polkit
        self.job_linger = job_linger
        self.bus: MessageBus | None = None
        self.manager = ManagerInterface(self)
        self.games: dict[str, GameInterface] = {}
        self.jobs: dict[int, JobInterface] = {}
        self.peer_objects: dict[str, PeerInterface] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Timers this adapter owns; close() cancels them (job removals, free-space looks).
        self._timers: dict[object, asyncio.TimerHandle] = {}
        self._told: dict[str, Any] = {}  # the manager's changing properties as last told
        self._space_looked = 0.0

    async def connect(self) -> None:
        bus = await connect_bus(self.bus_spec, LanspreadBus)
        bus.add_message_handler(self._remember_caller)
        bus.add_message_handler(bus.check_call)
        self.bus = bus
        self._loop = asyncio.get_running_loop()
        bus.export(ROOT_PATH, self.manager)
        self._told = {"Status": self.daemon.status, "FreeSpace": self.daemon.games.free_space()}
        self._told |= self._catalog_values()
        self._told |= {name: self.daemon.limits.rate(key) for name, key in LIMITS.items()}
        self.look_at_free_space()
        for game in self.daemon.games.all():
            self.game_changed(game)
        self.daemon.observers.append(self)
        self.daemon.sink.listeners.append(self._log_line)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise LanspreadError(f"{BUS_NAME} is already owned on this bus: is lanspreadd running?")

    async def wait_disconnected(self) -> None:
        assert self.bus is not None
        await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._log_line in self.daemon.sink.listeners:
            self.daemon.sink.listeners.remove(self._log_line)
        if self in self.daemon.observers:
            self.daemon.observers.remove(self)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for job in self.jobs.values():
            job.stop_telling()
        if self.bus is not None:
            self.bus.disconnect()

    @staticmethod
    def _remember_caller(msg: Message) -> None:
        # dbus-fast does not hand the sender to method handlers; the handler runs in
        # this context (async ones in a task copied from it), so a contextvar carries it.
        if msg.message_type is MessageType.METHOD_CALL:
            _caller.set(msg.sender or "")
            _interactive.set(bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))

    async def authorize(self, action: str) -> None:
        if not self.use_polkit:
            return
        sender = _caller.get()
        if not sender:
            raise NotAuthorized("cannot tell who is calling")
        assert self.bus is not None
        await check_authorization(self.bus, sender, action, interactive=_interactive.get())

    async def caller_uid(self) -> int:
        """The calling process's user, as the bus daemon vouches for it."""
        sender = _caller.get()
        assert self.bus is not None
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixUser",
                signature="s",
                body=[sender],
            )
        )
        if not sender or reply is None or reply.message_type is MessageType.ERROR:
            raise NotAuthorized("cannot tell who is calling")
        return int(reply.body[0])

    async def set_limit(self, name: str, rate: int) -> None:
        """A limit set with Properties.Set: checked, authorised, kept, told."""
        with dbus_errors():
            why = check_rate(rate)
            if why is not None:
                raise InvalidArgument(f"{name}: {why}")
            await self.authorize(ACTION_CONFIGURE)
            await self.daemon.limits.set(LIMITS[name], rate)
        self._tell_manager(name, rate)

    async def cancel(self, job: Job) -> None:
        """Cancel for whoever started the job; anybody else needs polkit's yes."""
        if job.state is not JobState.RUNNING:
            raise InvalidState(f"job {job.id} ({job.kind} of {job.game_id}) has ended")
        if await self.caller_uid() != job.started_by_uid:
            await self.authorize(ACTION_CANCEL)
        self.daemon.games.cancel_job(job)

    # ---- Observer -----------------------------------------------------------------------
    def game_changed(self, game: GameView) -> None:
        iface = self.games.get(game.id)
        if iface is None:
            iface = GameInterface(game)
            self.games[game.id] = iface
            if self.bus is not None:
                self.bus.export(game_path(game.id), iface)
        else:
            if iface.game.outbound_transfers != game.outbound_transfers:
                self.manager.OutboundTransfersChanged(game.id, game.outbound_transfers)
            iface.update(game)

    def peer_changed(self, peer_id: str, peer: Peer | None) -> None:
        iface = self.peer_objects.get(peer_id)
        if peer is None:
            if iface is not None:
                del self.peer_objects[peer_id]
                if self.bus is not None:
                    self.bus.unexport(peer_path(peer_id), iface)
        elif iface is None:
            iface = PeerInterface(peer)
            self.peer_objects[peer_id] = iface
            if self.bus is not None:
                self.bus.export(peer_path(peer_id), iface)
        else:
            iface.update(peer)

    def game_removed(self, game_id: str) -> None:
        iface = self.games.pop(game_id, None)
        if iface is not None and self.bus is not None:
            self.bus.unexport(game_path(game_id), iface)

    def job_started(self, job: Job) -> None:
        if self.bus is None or self._loop is None:
            return
        iface = JobInterface(job, game_path(job.game_id), self.cancel, self._loop)
        self.jobs[job.id] = iface
        self.bus.export(job_path(job.id), iface)

    def job_progress(self, job: Job) -> None:
        iface = self.jobs.get(job.id)
        if iface is not None:
            iface.progressed()
        if self._loop is not None and self._loop.time() - self._space_looked >= 1.0:
            self.look_at_free_space()

    def job_finished(self, job: Job) -> None:
        iface = self.jobs.get(job.id)
        if iface is None or self._loop is None:
            return
        iface.ended()
        self.look_at_free_space()
        self._timers[job.id] = self._loop.call_later(self.job_linger, self._remove_job, job)

    def status_changed(self, status: str) -> None:
        self._tell_manager("Status", status)
        self.tell_catalog()

    def catalog_adopted(self, catalog: Catalog) -> None:
        self.tell_catalog()
        self.manager.CatalogAdopted(catalog.revision, catalog.signer)

    def _catalog_values(self) -> dict[str, Any]:
        catalog = self.daemon.catalog
        return {
            "Catalog": str(catalog.source),
            "CatalogRevision": catalog.revision,
            "CatalogSigner": catalog.signer,
            "TrustedKeys": self.daemon.catalogs.trust.texts(),
        }

    def tell_catalog(self) -> None:
        """The catalog's properties, those that changed, in one PropertiesChanged."""
        self._tell(self._catalog_values())

    def runtime_failed(self, component: str, error: str) -> None:
        self.manager.RuntimeFailed(component, escape_unsafe(error))

    def _remove_job(self, job: Job) -> None:
        self._timers.pop(job.id, None)
        iface = self.jobs.pop(job.id, None)
        if iface is not None and self.bus is not None:
            self.bus.unexport(job_path(job.id), iface)

    def look_at_free_space(self) -> None:
        """Tell FreeSpace when it changed: after jobs, and every few seconds otherwise."""
        if self._loop is None:
            return
        self._space_looked = self._loop.time()
        self._tell_manager("FreeSpace", self.daemon.games.free_space())
        old = self._timers.pop("free-space", None)
        if old is not None:
            old.cancel()
        self._timers["free-space"] = self._loop.call_later(
            FREE_SPACE_EVERY, self.look_at_free_space
        )

    def _tell_manager(self, name: str, value: Any) -> None:
        self._tell({name: value})

    def _tell(self, values: dict[str, Any]) -> None:
        changed = {k: v for k, v in values.items() if self._told.get(k) != v}
        if changed:
            self._told |= changed
            self.manager.emit_properties_changed(changed)

    def _log_line(self, line: LogLine) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.manager.LogLine, line)


def parse_bus_spec(spec: str) -> str:
    if spec in ("system", "session") or "=" in spec:
        return spec
    raise InvalidArgument(f"--bus must be system, session or a D-Bus address, not {spec!r}")
