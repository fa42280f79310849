"""The D-Bus API over a fake daemon, on a real private dbus-daemon.

`FakeDaemon` has only what `DBusApi` uses of `Daemon`; the games role is a fake that
records what it was asked. A second bus connection plays the client, as dbus-fast's own
service tests do, and asserts reply signatures, bodies, error names and signals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.app.catalogs import TrustedKeys
from lanspreadd.app.daemon import Daemon
from lanspreadd.app.logs import LogSink, UnpackRun
from lanspreadd.app.views import GameView, Observers
from lanspreadd.core.catalog import Catalog, CatalogGame
from lanspreadd.core.library import Availability
from lanspreadd.core.operations import Job, JobState, OperationTable, OpKind
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.dbus.api import DBusApi
from lanspreadd.errors import InvalidState, LanspreadError, NoAccess, NotFound
from lanspreadd.net.peers import Peer
from lanspreadd.net.transport import PeerConnection
from tests.support import ERR, MANAGER, ROOT, PrivateBus, bus_driver_call, call, disconnect

T = TypeVar("T")
GAME_IFACE = "org.lanspread.Lanspread1.Game"
JOB_IFACE = "org.lanspread.Lanspread1.Job"
PEER_IFACE = "org.lanspread.Lanspread1.Peer"
PROPS = "org.freedesktop.DBus.Properties"
QUAKE_PATH = f"{ROOT}/games/quake"
PEER_ID = "0123456789abcdef" * 2
CATALOG = Catalog(
    {
        "quake": CatalogGame("quake", "Quake", "Into the slipgate", 300 << 20, "1.06"),
        "doom-2": CatalogGame("doom-2", "Doom II", "Hell on Earth", 20 << 20, "1.9"),
    },
    Path("/srv/lan/game.db"),
)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def absent(game: CatalogGame) -> GameView:
    return GameView(
        id=game.id,
        name=game.name,
        description=game.description,
        size=game.size,
        catalog_version=game.version,
        local_version="",
        installed_version="",
        downloaded=False,
        installed=False,
        update_ready=False,
        availability=Availability.ABSENT,
        operation="",
        job_id=0,
        sources=0,
        outbound_transfers=0,
        served=False,
    )


class FakeGames:
    """The games role: views it is given, jobs it is asked for, one per game."""

    def __init__(self, observers: Observers) -> None:
        self.observers = observers
        self.views = {g.id: absent(g) for g in CATALOG.games.values()}
        self.ops = OperationTable()
        self.started: list[tuple[OpKind, str, bool]] = []
        self.refusal: LanspreadError | None = None  # what start() raises, if anything

    def all(self) -> list[GameView]:
        return [self.views[g] for g in sorted(self.views)]

    def view(self, game_id: str) -> GameView:
        if game_id not in self.views:
            raise NotFound(f"no game {game_id!r} in the catalog")
        return self.views[game_id]

    def start(
        self, kind: OpKind, game_id: str, install: bool = False, started_by_uid: int = 0
    ) -> Job:
        if self.refusal is not None:
            raise self.refusal
        job = self.ops.begin(game_id, kind)
        job.started_by_uid = started_by_uid
        self.started.append((kind, game_id, install))
        self.observers.job_started(job)
        return job

    def job(self, game_id: str) -> Job:
        job = self.ops.get(game_id)
        if job is None:
            raise NotFound(f"no operation is running for {game_id}")
        return job

    def cancel_job(self, job: Job) -> None:
        job.cancel_event.set()

    def free_space(self) -> int:
        return 7 << 30

    def finish(self, job: Job, state: JobState, error: str = "", message: str = "") -> None:
        job.finish(state, error, message)
        self.ops.end(job)
        self.observers.job_finished(job)


@dataclass
class FakeConfig:
    name: str = "lan-party-pc"
    port: int = 4433
    share_while_downloading: bool = False  # not the default: read through, not made up


@dataclass
class FakeIdentity:
    peer_id: str = "ab" * 16


@dataclass
class FakeLibrary:
    game_dir: Path = Path("/srv/games")


@dataclass
class FakeCatalogs:
    trust: TrustedKeys = field(
        default_factory=lambda: TrustedKeys((), Path("/nonexistent/trusted-keys"))
    )


@dataclass
class FakeLimits:
    rates: dict[str, int] = field(default_factory=lambda: {"upload_limit": 1 << 20})

    def rate(self, key: str) -> int:
        return self.rates.get(key, 0)

    async def set(self, key: str, rate: int) -> None:
        self.rates[key] = rate


@dataclass
class FakePeerTable:
    peers: dict[str, Peer] = field(default_factory=dict)


class FakeDaemon:
    """What the D-Bus API uses of `Daemon`, and a record of what it was asked."""

    def __init__(self) -> None:
        self.observers = Observers()
        self.games = FakeGames(self.observers)
        self.peers = FakePeerTable()
        self.library = FakeLibrary()
        self.catalog = CATALOG
        self.catalogs = FakeCatalogs()
        self.limits = FakeLimits()
        self.config = FakeConfig()
        self.identity = FakeIdentity()
        self.status = "serving 2 catalog games"
        self.refusals = RefusalTally()
        self.sink = LogSink(None)
        self.connected: list[tuple[str, int | None]] = []
        self.game_dirs: list[str] = []

    async def connect_peer(self, host: str, port: int | None) -> str:
        self.connected.append((host, port))
        return PEER_ID

    async def set_game_dir(self, path: str) -> None:
        if not path.startswith("/srv/"):
            raise NoAccess(f"lanspreadd cannot write to {path}: run lanspreadctl set-game-dir")
        self.game_dirs.append(path)
        self.library.game_dir = Path(path)

    def reload_catalog(self) -> int:
        return len(self.catalog.games)

    def logs(self, max_lines: int) -> tuple[int, list[str]]:
        lines = ["one", "two", "three"]
        return 41, lines[-max_lines:] if max_lines else []

    def unpack_runs(self) -> list[UnpackRun]:
        output = "unar: \x1b[31mCRC error\x1b[0m in maps/e1m1.bsp"
        return [UnpackRun("quake", "install", 1.0, 2.5, False, ["unar"], "CRC error", output)]


class Signals:
    """Every signal our service emits, in order, each waited for by what it is."""

    def __init__(self, bus: MessageBus) -> None:
        self.seen: list[Message] = []
        self._news = asyncio.Event()
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and (msg.path or "").startswith(ROOT):
            self.seen.append(msg)
            self._news.set()

    async def next(self, member: str, path: str | None = ROOT) -> Message:
        """The first signal not yet taken with this member on this path (None: any)."""
        while True:
            for msg in self.seen:
                if msg.member == member and path in (None, msg.path):
                    self.seen.remove(msg)
                    return msg
            self._news.clear()
            await self._news.wait()

    async def changed(self, path: str, iface: str) -> dict[str, Any]:
        msg = await self.next("PropertiesChanged", path)
        assert msg.body[0] == iface and msg.body[2] == []
        result: dict[str, Any] = unwrap(msg.body[1])
        return result


@dataclass
class Client:
    bus: MessageBus
    signals: Signals
    api: DBusApi

    async def ok(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        path: str = ROOT,
        interface: str = MANAGER,
    ) -> Message:
        reply = await call(self.bus, member, signature, body, path, interface)
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply

    async def error(self, member: str, signature: str = "", body: list[Any] | None = None) -> str:
        """`name: message` of the error a Manager call ends in."""
        reply = await call(self.bus, member, signature, body)
        assert reply.message_type is MessageType.ERROR, reply.body
        return f"{reply.error_name}: {reply.body[0]}"

    async def props(self, path: str, iface: str) -> dict[str, Any]:
        reply = await self.ok("GetAll", "s", [iface], path, PROPS)
        result: dict[str, Any] = unwrap(reply.body[0])
        return result


@asynccontextmanager
async def serving(
    bus: PrivateBus, daemon: FakeDaemon, use_polkit: bool = False, job_linger: float = 10.0
) -> AsyncIterator[Client]:
    api = DBusApi(cast(Daemon, daemon), bus.address, use_polkit, job_linger)
    await api.connect()
    client = await MessageBus(bus_address=bus.address).connect()
    signals = Signals(client)
    await bus_driver_call(client, "AddMatch", f"type='signal',path_namespace='{ROOT}'")
    try:
        yield Client(client, signals, api)
    finally:
        await disconnect(client)
        api.close()
        await api.wait_disconnected()
        daemon.sink.close()


def test_arguments_are_checked_before_any_role_is_asked(private_bus: PrivateBus) -> None:
    daemon = FakeDaemon()

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            assert await client.error("GetGame", "s", ["Quake 3!"]) == (
                f"{ERR}InvalidArgument: invalid game id 'Quake 3!': use a-z, 0-9, '.', '_' or '-'"
            )
            assert await client.error("GetGame", "s", ["quake-4"]) == (
                f"{ERR}NotFound: no game 'quake-4' in the catalog"
            )
            assert (await client.error("Download", "sb", ["../etc", True])).startswith(
                f"{ERR}InvalidArgument: invalid game id '../etc'"
            )
            for member in ("Install", "Update", "StreamInstall", "Uninstall", "RemoveDownload"):
                assert (await client.error(member, "s", ["hexen"])).startswith(f"{ERR}NotFound:")
            assert (await client.error("Cancel", "s", [""])).startswith(f"{ERR}InvalidArgument:")
            for address, why in [
                ("", "give an address as HOST or HOST:PORT"),
                ("gamer-pc:port", "invalid port in 'gamer-pc:port'"),
                ("gamer-pc:70000", "invalid address 'gamer-pc:70000'"),
                (":4433", "invalid address ':4433'"),
                ("x" * 256, "give an address as HOST or HOST:PORT"),
            ]:
                assert await client.error("ConnectPeer", "s", [address]) == (
                    f"{ERR}InvalidArgument: {why}"
                )
            assert daemon.games.started == [] and daemon.connected == []

            # Good arguments reach the daemon as domain values.
            reply = await client.ok("ConnectPeer", "s", ["[fe80::1]:4433"])
            assert (reply.signature, reply.body) == ("s", [PEER_ID])
            await client.ok("ConnectPeer", "s", ["gamer-pc"])
            assert daemon.connected == [("fe80::1", 4433), ("gamer-pc", None)]
            reply = await client.ok("GetGame", "s", ["quake"])
            assert reply.signature == "a{sv}"
            assert unwrap(reply.body[0])["ObjectPath"] == QUAKE_PATH

    run(body())


def test_errors_from_the_roles_keep_their_names_and_lose_unsafe_text(
    private_bus: PrivateBus,
) -> None:
    daemon = FakeDaemon()

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            assert await client.error("Cancel", "s", ["quake"]) == (
                f"{ERR}NotFound: no operation is running for quake"
            )
            daemon.games.refusal = InvalidState("quake is already installed; use update")
            assert await client.error("Install", "s", ["quake"]) == (
                f"{ERR}InvalidState: quake is already installed; use update"
            )
            # A message built from a file name or tool output: every character stays
            # visible, none reaches a terminal as a control sequence, NUL ends nothing.
            daemon.games.refusal = LanspreadError("cannot read game\x1b]0;owned\x07\x00.rar")
            assert await client.error("Install", "s", ["quake"]) == (
                f"{ERR}Failed: cannot read game\\x1b]0;owned\\x07\\x00.rar"
            )
            assert await client.error("SetGameDir", "s", ["/home/player/games"]) == (
                f"{ERR}NoAccess: lanspreadd cannot write to /home/player/games: "
                "run lanspreadctl set-game-dir"
            )
            # The service carries on.
            reply = await client.ok("ListGames")
            assert [g["Id"] for g in unwrap(reply.body[0])] == ["doom-2", "quake"]

    run(body())


def test_a_job_is_an_object_that_shows_its_progress_and_its_end(private_bus: PrivateBus) -> None:
    daemon = FakeDaemon()
    games = daemon.games

    async def body() -> None:
        async with serving(private_bus, daemon, job_linger=0.5) as client:
            before = time.time()
            reply = await client.ok("Download", "sb", ["quake", True])
            ((kind, game_id, install),) = games.started
            assert (kind, game_id, install) == (OpKind.DOWNLOAD, "quake", True)
            job = games.ops.jobs["quake"]
            path = f"{ROOT}/jobs/{job.id}"
            assert (reply.signature, reply.body) == ("o", [path])
            # The object manager at the root tells of it, with every property.
            added = await client.signals.next("InterfacesAdded", ROOT)
            assert added.body[0] == path
            shown = await client.props(path, JOB_IFACE)
            assert unwrap(added.body[1])[JOB_IFACE] == shown
            assert before * 1e6 <= shown.pop("StartTime") <= time.time() * 1e6
            assert shown == {
                "Operation": "download",
                "GameId": "quake",
                "Game": QUAKE_PATH,
                "State": "running",
                "Progress": 0.0,
                "ProgressValid": False,
                "Bytes": 0,
                "BytesDone": 0,
                "Rate": 0,
                "ExpectedEndTime": 0,
                "Cancelable": True,
                "StartedByUID": os.getuid(),
                "Sources": {},
                "ErrorName": "",
                "ErrorMessage": "",
            }
            managed = await client.ok(
                "GetManagedObjects", path=ROOT, interface="org.freedesktop.DBus.ObjectManager"
            )
            assert JOB_IFACE in managed.body[0][path]

            # Progress: only what changed, and not more often than every 0.2 s.
            job.sources[PEER_ID] = 1 << 20
            job.update(0, 300 << 20, time.monotonic() - 1)
            job.update(1 << 20, 300 << 20, time.monotonic())
            daemon.observers.job_progress(job)
            progress = await client.signals.changed(path, JOB_IFACE)
            told_at = time.monotonic()
            assert progress["BytesDone"] == 1 << 20 and progress["Bytes"] == 300 << 20
            assert progress["Sources"] == {PEER_ID: 1 << 20}
            assert progress["Progress"] == pytest.approx(1 / 300)
            assert progress["ProgressValid"] is True
            assert 0 < progress["Rate"] <= 1 << 20
            assert progress["ExpectedEndTime"] > time.time() * 1e6
            assert set(progress) == {
                "BytesDone", "Bytes", "Sources", "Progress", "ProgressValid", "Rate",
                "ExpectedEndTime",
            }  # fmt: skip
            job.update(2 << 20, 300 << 20, time.monotonic())
            daemon.observers.job_progress(job)
            job.update(3 << 20, 300 << 20, time.monotonic())
            daemon.observers.job_progress(job)  # within 0.2 s: folded into one
            later = await client.signals.changed(path, JOB_IFACE)
            assert time.monotonic() - told_at >= 0.2
            assert later["BytesDone"] == 3 << 20 and "Bytes" not in later

            # Cancel on the job object asks the job to stop; the role decides the end.
            await client.ok("Cancel", path=path, interface=JOB_IFACE)
            assert job.cancel_event.is_set()
            games.finish(job, JobState.PEERS_GONE, "PeersGone", "every source of quake left")
            ended = await client.signals.changed(path, JOB_IFACE)
            assert ended["State"] == "peers-gone" and ended["Cancelable"] is False
            assert ended["ErrorName"] == f"{ERR}PeersGone"
            completed = await client.signals.next("Completed", path)
            assert (completed.signature, completed.body) == (
                "bsss",
                [False, "every source of quake left", "peers-gone", f"{ERR}PeersGone"],
            )
            assert (await client.props(path, JOB_IFACE))["State"] == "peers-gone"
            # Cancelling what has ended is refused by name.
            reply = await call(client.bus, "Cancel", path=path, interface=JOB_IFACE)
            assert reply.error_name == f"{ERR}InvalidState"

            # A while after its end the object goes, told by the root; then it is unknown.
            removed = await client.signals.next("InterfacesRemoved", ROOT)
            assert removed.body == [path, [JOB_IFACE]]
            reply = await call(client.bus, "GetAll", "s", [JOB_IFACE], path, PROPS)
            assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"
            reply = await call(client.bus, "Cancel", path=path, interface=JOB_IFACE)
            assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"

    run(body())


def test_a_finished_job_completes_with_success_and_full_progress(
    private_bus: PrivateBus,
) -> None:
    daemon = FakeDaemon()
    games = daemon.games

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            path = (await client.ok("Uninstall", "s", ["doom-2"])).body[0]
            games.finish(games.ops.jobs["doom-2"], JobState.FINISHED)
            ended = await client.signals.changed(path, JOB_IFACE)
            assert ended["State"] == "finished"
            assert (ended["Progress"], ended["ProgressValid"]) == (1.0, True)
            completed = await client.signals.next("Completed", path)
            assert completed.body == [True, "", "finished", ""]

    run(body())


def test_observed_changes_become_properties_changed_and_objects(private_bus: PrivateBus) -> None:
    daemon = FakeDaemon()
    games = daemon.games

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            ready = replace(
                games.views["quake"],
                local_version="1.06",
                downloaded=True,
                availability=Availability.READY,
                served=True,
            )
            daemon.observers.game_changed(ready)
            assert await client.signals.changed(QUAKE_PATH, GAME_IFACE) == {
                "LocalVersion": "1.06",
                "Downloaded": True,
                "Availability": "Ready",
                "Served": True,
            }
            daemon.observers.game_changed(replace(ready, outbound_transfers=2))
            sent = await client.signals.next("OutboundTransfersChanged")
            assert (sent.signature, sent.body) == ("su", ["quake", 2])
            assert await client.signals.changed(QUAKE_PATH, GAME_IFACE) == {"OutboundTransfers": 2}
            # The same view again: nothing to say. The reply below comes after any
            # signal the service sent before it, so the list is complete by then.
            daemon.observers.game_changed(replace(ready, outbound_transfers=2))
            daemon.observers.game_removed("quake")
            reply = await call(client.bus, "GetAll", "s", [GAME_IFACE], QUAKE_PATH, PROPS)
            assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"
            gone = await client.signals.next("InterfacesRemoved", path=None)
            assert gone.body[0] == QUAKE_PATH and GAME_IFACE in gone.body[1]
            assert [m.member for m in client.signals.seen] == []

            # A peer is an object while it is connected.
            peer = Peer(PEER_ID, "bravo", "192.0.2.2", 4433, cast(PeerConnection, None), True)
            peer.games.update({"quake": "1.06"})
            daemon.peers.peers[PEER_ID] = peer
            daemon.observers.peer_changed(PEER_ID, peer)
            peer_path = f"{ROOT}/peers/{PEER_ID}"
            seen = await client.props(peer_path, PEER_IFACE)
            assert (seen["Name"], seen["Address"], seen["Direction"]) == (
                "bravo",
                "192.0.2.2",
                "outgoing",
            )
            assert seen["Games"] == {"quake": "1.06"}
            listed = unwrap((await client.ok("ListPeers")).body[0])
            assert [p["ObjectPath"] for p in listed] == [peer_path]
            peer.games.update({"doom-2": "1.9"})
            daemon.observers.peer_changed(PEER_ID, peer)
            assert await client.signals.changed(peer_path, PEER_IFACE) == {
                "Games": {"quake": "1.06", "doom-2": "1.9"}
            }
            del daemon.peers.peers[PEER_ID]
            daemon.observers.peer_changed(PEER_ID, None)
            reply = await call(client.bus, "GetAll", "s", [PEER_IFACE], peer_path, PROPS)
            assert reply.error_name == "org.freedesktop.DBus.Error.UnknownObject"

    run(body())


def test_the_manager_reads_through_to_the_daemon(private_bus: PrivateBus) -> None:
    daemon = FakeDaemon()
    daemon.refusals.note("peer-handshake", "192.0.2.9: bad proof")

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            props = await client.props(ROOT, MANAGER)
            assert {k: v for k, v in props.items() if k != "Version"} == {
                "Name": "lan-party-pc",
                "GameDir": "/srv/games",
                "Catalog": "/srv/lan/game.db",
                "CatalogRevision": 0,
                "CatalogSigner": "",
                "TrustedKeys": [],
                "Status": "serving 2 catalog games",
                "FreeSpace": 7 << 30,
                "PeerId": "ab" * 16,
                "Port": 4433,
                "Refusals": {"peer-handshake": 1},
                "UploadLimit": 1 << 20,
                "DownloadLimit": 0,
                "ShareWhileDownloading": False,
            }
            limit = ["DownloadLimit", Variant("t", 5 << 20)]
            await client.ok("Set", "ssv", [MANAGER, *limit], interface=PROPS)
            assert daemon.limits.rates["download_limit"] == 5 << 20
            assert await client.signals.changed(ROOT, MANAGER) == {"DownloadLimit": 5 << 20}
            await client.ok("SetGameDir", "s", ["/srv/lan-games"])
            assert daemon.game_dirs == ["/srv/lan-games"]
            assert await client.signals.changed(ROOT, MANAGER) == {"GameDir": "/srv/lan-games"}
            reply = await client.ok("ReloadCatalog")
            assert (reply.signature, reply.body) == ("u", [2])
            reply = await client.ok("GetLogs", "u", [2])
            assert (reply.signature, reply.body) == ("tas", [41, ["two", "three"]])
            reply = await client.ok("GetUnpackLogs")
            (run_,) = unwrap(reply.body[0])
            assert run_["Output"] == "unar: \\x1b[31mCRC error\\x1b[0m in maps/e1m1.bsp"
            assert (run_["GameId"], run_["Success"], run_["Backends"]) == ("quake", False, ["unar"])

    run(body())


def test_log_lines_and_failures_are_signals(private_bus: PrivateBus) -> None:
    daemon = FakeDaemon()

    async def body() -> None:
        async with serving(private_bus, daemon) as client:
            # Log records come from any thread (hashing, unpacking): the line still
            # goes out from the loop.
            record = logging.makeLogRecord(
                {
                    "name": "lanspreadd.app.jobs",
                    "levelno": 30,
                    "levelname": "WARNING",
                    "msg": "unpack of %s failed",
                    "args": ("quake",),
                }
            )
            worker = threading.Thread(target=daemon.sink.handle, args=(record,))
            worker.start()
            worker.join()
            line = await client.signals.next("LogLine")
            seq, level, text = line.body
            assert (line.signature, seq, level) == ("tss", 1, "WARNING")
            assert text.endswith("WARNING lanspreadd.app.jobs: unpack of quake failed")

            daemon.observers.runtime_failed("data-channel", "bind: \x1b[2Jaddress in use")
            failed = await client.signals.next("RuntimeFailed")
            assert failed.body == ["data-channel", "bind: \\x1b[2Jaddress in use"]

    run(body())


class PolkitMock:
    """python-dbusmock's polkitd template on our private bus: refuses every action
    until told which to allow."""

    def __init__(self, bus: PrivateBus) -> None:
        env = os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def on_the_bus(self, client: Client) -> None:
        """Wait for polkitd's name to be owned, woken by the bus's own signal."""
        await bus_driver_call(
            client.bus,
            "AddMatch",
            "type='signal',member='NameOwnerChanged',arg0='org.freedesktop.PolicyKit1'",
        )
        owned = asyncio.Event()

        def on_owner(msg: Message) -> None:
            if msg.member == "NameOwnerChanged" and msg.body[0] == "org.freedesktop.PolicyKit1":
                owned.set()

        client.bus.add_message_handler(on_owner)
        has = await bus_driver_call(client.bus, "NameHasOwner", "org.freedesktop.PolicyKit1")
        if not has.body[0]:
            await owned.wait()
        client.bus.remove_message_handler(on_owner)

    async def allow(self, client: Client, *actions: str) -> None:
        reply = await client.bus.call(
            Message(
                destination="org.freedesktop.PolicyKit1",
                path="/org/freedesktop/PolicyKit1/Authority",
                interface="org.freedesktop.DBus.Mock",
                member="SetAllowed",
                signature="as",
                body=[list(actions)],
            )
        )
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_polkit_decides_each_mutating_call_once_its_arguments_are_good(
    private_bus: PrivateBus,
) -> None:
    daemon = FakeDaemon()
    polkit = PolkitMock(private_bus)

    async def body() -> None:
        async with serving(private_bus, daemon, use_polkit=True) as client:
            # Nobody is asked about a game that does not exist.
            assert (await client.error("Install", "s", ["hexen"])).startswith(f"{ERR}NotFound:")
            await polkit.on_the_bus(client)
            assert await client.error("Install", "s", ["quake"]) == (
                f"{ERR}NotAuthorized: not authorised to perform org.lanspread.install-game"
            )
            assert await client.error("ConnectPeer", "s", ["gamer-pc"]) == (
                f"{ERR}NotAuthorized: not authorised to perform org.lanspread.manage-peers"
            )
            assert daemon.games.started == [] and daemon.connected == []
            # Reading needs no authorisation.
            await client.ok("ListGames")

            await polkit.allow(client, "org.lanspread.install-game")
            await client.ok("Install", "s", ["quake"])
            assert daemon.games.started == [(OpKind.INSTALL, "quake", False)]
            assert (await client.error("Download", "sb", ["doom-2", False])).startswith(
                f"{ERR}NotAuthorized: not authorised to perform org.lanspread.download-game"
            )

            # Whoever started a job may cancel it without asking polkit (cancel-operation
            # is not allowed); a job someone else started needs polkit's yes.
            job = daemon.games.ops.jobs["quake"]
            assert job.started_by_uid == os.getuid()
            path = f"{ROOT}/jobs/{job.id}"
            await client.ok("Cancel", path=path, interface=JOB_IFACE)
            assert job.cancel_event.is_set()
            other = daemon.games.start(OpKind.UNINSTALL, "doom-2", started_by_uid=os.getuid() + 1)
            reply = await call(
                client.bus, "Cancel", path=f"{ROOT}/jobs/{other.id}", interface=JOB_IFACE
            )
            assert reply.error_name == f"{ERR}NotAuthorized"
            assert not other.cancel_event.is_set()
            reply = await call(client.bus, "Cancel", "s", ["doom-2"])
            assert reply.error_name == f"{ERR}NotAuthorized"
            await polkit.allow(
                client, "org.lanspread.install-game", "org.lanspread.cancel-operation"
            )
            await client.ok("Cancel", "s", ["doom-2"])
            assert other.cancel_event.is_set()

    try:
        run(body())
    finally:
        polkit.stop()
