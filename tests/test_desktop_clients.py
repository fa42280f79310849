"""Clients that are not ours see the D-Bus contract: GLib, dbus-next, gdbus and busctl.

A desktop app watches lanspreadd through GLib's `GDBusObjectManagerClient` (Debian's
python3-gi, run by tests/clients/glib_client.py under /usr/bin/python3) or dbus-next;
scripts use busctl and gdbus; bindings come from gdbus-codegen. Each reads
dbus/org.lanspread.Lanspread1.xml its own way, so each is asked here what it sees of
games, peers and jobs on a real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import select
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus
from dbus_next.aio.message_bus import MessageBus as NextBus
from dbus_next.signature import Variant as NextVariant

from lanspreadd.archive.writer import Entry
from lanspreadd.core.catalog import CatalogGame, write_catalog
from tests.introspection import XML
from tests.support import (
    BUS_NAME,
    ERR,
    MANAGER,
    ROOT,
    Daemon,
    TimedOut,
    call,
    disconnect,
    error_name,
    make_game,
    tool,
    wait_for,
)
from tests.test_peers import GAME, MiB, connect, game_entries, seed_game, sources_of

Event = dict[str, Any]
MakePeer = Callable[..., Daemon]

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
GAME_IFACE = "org.lanspread.Lanspread1.Game"
PEER_IFACE = "org.lanspread.Lanspread1.Peer"
JOB_IFACE = "org.lanspread.Lanspread1.Job"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
GAME_PATH = f"{ROOT}/games/sample_2dgame"
CATALOG_IDS = {"openarena", "teeworlds", "supertuxkart", "xonotic", "wesnoth", GAME}
OTHER, OTHER_VERSION = "teeworlds", "0.7.5"  # a second catalog game
OTHER_PATH = f"{ROOT}/games/teeworlds"
JOB_PROPERTIES = {
    *("Operation", "GameId", "Game", "State", "Progress", "ProgressValid", "Bytes"),
    *("BytesDone", "Rate", "StartTime", "ExpectedEndTime", "Cancelable", "StartedByUID"),
    *("Sources", "ErrorName", "ErrorMessage"),
}
JOB_LINGER = 10.0  # an ended job's object stays this long
CHANGE_INTERVAL = 0.2  # at most one PropertiesChanged per job this often
SLOW = ("--upload-limit", str(4 * MiB))  # a 24 MiB game then takes about 6 s
SIZE = 24 * MiB
CLIENT = Path(__file__).parent / "clients" / "glib_client.py"
DEBIAN_PYTHON = "/usr/bin/python3"


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


# ---- what any client saw ------------------------------------------------------------------


def added(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "object-added" and e["path"] == path


def removed(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "object-removed" and e["path"] == path


def completed(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "signal" and e["path"] == path and e["member"] == "Completed"


def job_changes(events: list[Event], path: str) -> list[Event]:
    return [
        e
        for e in events
        if e["event"] == "properties-changed" and e["path"] == path and e["interface"] == JOB_IFACE
    ]


def follow_job(events: list[Event], path: str, known: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's properties after each PropertiesChanged the client got, from what it
    held before (`known`); each must carry changed values only."""
    props = dict(known)
    seen = []
    for event in job_changes(events, path):
        changed = event["changed"]
        assert changed, f"an empty PropertiesChanged on {path}"
        assert set(changed) <= JOB_PROPERTIES, set(changed) - JOB_PROPERTIES
        again = {k: v for k, v in changed.items() if k in props and props[k] == v}
        assert not again, f"PropertiesChanged on {path} told unchanged values: {again}"
        props.update(changed)
        seen.append(dict(props))
    return seen


def check_progress(seen: list[dict[str, Any]], first: float, last: float) -> None:
    """Bytes and progress grew in several steps, no faster than the interval allows
    (counted, not timed: a busy client may get several at once)."""
    done = [p["BytesDone"] for p in seen if "BytesDone" in p]
    assert done == sorted(done), done
    assert len(set(done)) >= 3, f"BytesDone grew in too few steps: {done}"
    progress = [p["Progress"] for p in seen if "Progress" in p]
    assert progress == sorted(progress), progress
    assert any(0 < p < 1 for p in progress), progress
    most = (last - first) / CHANGE_INTERVAL + 2
    assert len(seen) <= most, f"{len(seen)} PropertiesChanged in {last - first:.1f} s"


def on_disk(root: Path) -> int:
    """Bytes of the game's archives actually written (downloads open files sparse)."""
    return sum(p.stat().st_blocks * 512 for p in root.glob("*.rar"))


def slow_source_and_receiver(make_peer: MakePeer) -> tuple[Daemon, Daemon]:
    """A source serving two games slowly, and a receiver not yet connected to it."""
    source = make_peer("source", extra_args=SLOW)
    receiver = make_peer("receiver")
    seed_game(source, game_entries(SIZE))
    make_game(source.game_dir, OTHER, OTHER_VERSION, game_entries(SIZE, b"other"))
    source.start()
    receiver.start()
    return source, receiver


def wait_sources(receiver: Daemon, *games: str) -> None:
    def held() -> bool:
        return all(receiver.ctl_json("show", game)["sources"] == 1 for game in games)

    wait_for(held, 30, f"the source of {', '.join(games)}")


# ---- the GLib client ----------------------------------------------------------------------


@functools.cache
def glib_python() -> str | None:
    """Debian's python3 if it has PyGObject with Gio (a desktop's GLib), else None."""
    if not os.path.exists(DEBIAN_PYTHON):
        return None
    probe = "import gi; gi.require_version('Gio', '2.0'); from gi.repository import Gio"
    found = subprocess.run([DEBIAN_PYTHON, "-c", probe], capture_output=True, check=False)
    return DEBIAN_PYTHON if found.returncode == 0 else None


class GlibClient:
    """tests/clients/glib_client.py on a daemon's bus: its events as they came, each
    waited on as its line arrives."""

    def __init__(self, python: str, address: str, log: Path) -> None:
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [python, str(CLIENT), address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.events: list[Event] = []
        self._partial = b""

    def _read(self, deadline: float) -> bool:
        """Read until at least one more event came; False at the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        had = len(self.events)
        while len(self.events) == had:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False
            data = os.read(fd, 1 << 16)
            if not data:
                code = self.proc.wait(10)
                raise AssertionError(f"the GLib client exited ({code}):\n{self.log.read_text()}")
            *lines, self._partial = (self._partial + data).split(b"\n")
            self.events += [json.loads(line) for line in lines]
        return True

    def until(
        self, wanted: Callable[[Event], bool], what: str, timeout: float = 30, since: int = 0
    ) -> Event:
        """The first event from index `since` on that is `wanted`, read as it comes."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for event in self.events[checked:]:
                if wanted(event):
                    return event
            checked = max(checked, len(self.events))
            if not self._read(deadline):
                raise TimedOut(f"timed out after {timeout:g} s: the GLib client saw no {what}")

    def send(self, command: str) -> int:
        """Send a command; returns the index from which its answer can come."""
        assert self.proc.stdin is not None
        mark = len(self.events)
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return mark

    def ask(self, command: str, answer: str, what: str) -> Event:
        mark = self.send(command)
        return self.until(lambda e: e["event"] == answer, what, since=mark)

    def cancel(self, path: str) -> Event:
        mark = self.send(f"cancel {path}")
        return self.until(
            lambda e: e["event"] == "reply" and e["path"] == path, f"the reply to {path}", 60, mark
        )

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()  # the client ends at the end of its input
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def glib(tmp_path: Path) -> Iterator[Callable[[Daemon], GlibClient]]:
    """Start the GLib client on a daemon's bus; it is ready once it printed its objects."""
    python = glib_python()
    if python is None:
        pytest.skip(f"{DEBIAN_PYTHON} with python3-gi (Gio) is not installed")
    started: list[GlibClient] = []

    def start(daemon: Daemon) -> GlibClient:
        client = GlibClient(python, daemon.bus.address, tmp_path / f"glib{len(started)}.log")
        started.append(client)
        client.until(lambda e: e["event"] == "ready", "its start")
        return client

    yield start
    for client in started:
        client.close()


@pytest.mark.slow
def test_glib_object_manager_follows_downloads_and_cancels_one(
    make_peer: MakePeer, glib: Callable[[Daemon], GlibClient]
) -> None:
    """What a GTK app needs to show and stop downloads without polling (issue 13)."""
    source, receiver = slow_source_and_receiver(make_peer)
    client = glib(receiver)
    games = {
        e["path"]: e["interfaces"][GAME_IFACE]["Id"]
        for e in client.events
        if e["event"] == "object-added" and GAME_IFACE in e["interfaces"]
    }
    assert set(games.values()) == CATALOG_IDS
    assert games[GAME_PATH] == GAME

    source_id = connect(receiver, source)
    peer = client.until(added(f"{ROOT}/peers/{source_id}"), "the peer object")
    assert peer["interfaces"][PEER_IFACE]["Id"] == source_id
    assert peer["interfaces"][PEER_IFACE]["Name"] == "source"
    wait_sources(receiver, GAME, OTHER)

    # A download to its end: the job appears, grows, completes and goes.
    first_us, first = time.time_ns() // 1000, time.monotonic()
    job = receiver.ctl_json("download", "--no-wait", GAME)["job"]
    appeared = client.until(added(job), "the job object")
    props = appeared["interfaces"][JOB_IFACE]
    assert set(props) == JOB_PROPERTIES
    assert (props["Operation"], props["GameId"], props["Game"]) == ("download", GAME, GAME_PATH)
    assert (props["State"], props["Cancelable"]) == ("running", True)
    assert props["StartedByUID"] == os.getuid()
    assert first_us <= props["StartTime"] <= time.time_ns() // 1000
    end = client.until(completed(job), "the job's Completed", timeout=120)
    assert end["args"][0] is True
    assert end["args"][2:] == ["finished", ""]
    # What the client held when Completed came: the last change is told before it.
    seen = follow_job(client.events[: client.events.index(end)], job, props)
    check_progress(seen, first, end["t"])
    final = seen[-1]
    assert (final["State"], final["Progress"], final["ProgressValid"]) == ("finished", 1.0, True)
    assert final["BytesDone"] == final["Bytes"] >= SIZE
    assert final["Sources"] == {source_id: final["Bytes"]}, "bytes per peer id, as Peer.Id"
    assert (final["ErrorName"], final["ErrorMessage"]) == ("", "")
    assert any(p["Rate"] > 0 for p in seen)
    assert any(p["ExpectedEndTime"] > p["StartTime"] for p in seen if p["State"] == "running")

    # A second one, cancelled through the object GLib holds.
    second = receiver.ctl_json("download", "--no-wait", OTHER)["job"]
    mark = client.events.index(client.until(added(second), "the second job"))
    assert client.events[mark]["interfaces"][JOB_IFACE]["Game"] == OTHER_PATH
    client.until(
        lambda e: bool(job_changes([e], second)) and e["changed"].get("BytesDone", 0) > 0,
        "bytes of the second download",
        since=mark,
    )
    assert client.cancel(second)["error"] is None
    stopped = client.until(completed(second), "the cancelled job's Completed", since=mark)
    assert stopped["args"][0] is False
    assert stopped["args"][2:] == ["cancelled", ERR + "Cancelled"]
    told = client.events[: client.events.index(stopped)]
    last = follow_job(told, second, client.events[mark]["interfaces"][JOB_IFACE])[-1]
    assert (last["State"], last["Cancelable"]) == ("cancelled", False)
    assert 0 < last["BytesDone"] < last["Bytes"]
    wait_for(
        lambda: source.ctl_json("show", OTHER)["outbound_transfers"] == 0,
        30,
        "the source to stop sending",
    )
    received = on_disk(receiver.game_dir / OTHER)

    # Each job's object goes from the root's ObjectManager JOB_LINGER s after its end.
    gone = client.until(removed(job), "the first job's removal", timeout=JOB_LINGER + 30)
    assert gone["interfaces"] == [JOB_IFACE]
    assert gone["t"] - end["t"] >= JOB_LINGER - 2, "removed too early for a late client"
    client.until(removed(second), "the second job's removal", timeout=JOB_LINGER + 30)
    assert on_disk(receiver.game_dir / OTHER) == received, "bytes arrived after the cancel"
    held = client.ask("objects", "objects", "its objects")["objects"]
    assert job not in held and second not in held
    assert set(held) >= set(games)
    # A client that looks late learns the job ended from UnknownObject.
    assert client.cancel(job)["error"] == UNKNOWN_OBJECT

    source.stop()
    client.until(removed(f"{ROOT}/peers/{source_id}"), "the peer's removal")


def test_glib_cache_follows_free_space_and_status(
    daemon: Daemon, make_tmpfs: Callable[[int], Path], glib: Callable[[Daemon], GlibClient]
) -> None:
    """A GLib client's cached FreeSpace was 1.5 GB stale after an install (issue 13)."""
    daemon.game_dir = make_tmpfs(64)  # nothing else changes its free space
    make_game(daemon.game_dir, GAME, "1.0", [Entry("big.bin", os.urandom(4 * MiB))])
    daemon.start()
    client = glib(daemon)
    before = client.ask("manager", "manager", "the Manager's properties")["properties"]
    assert before["Status"].startswith("serving ")
    assert daemon.ctl_json("install", GAME)["state"] == "finished"
    free = os.statvfs(daemon.game_dir)
    now = free.f_bavail * free.f_frsize
    assert now < before["FreeSpace"] - 4 * MiB
    client.until(
        lambda e: e.get("path") == ROOT and e.get("changed", {}).get("FreeSpace") == now,
        "FreeSpace after the install",
    )
    assert client.ask("manager", "manager", "the Manager")["properties"]["FreeSpace"] == now

    daemon.stop()
    client.until(
        lambda e: e.get("path") == ROOT and e.get("changed", {}).get("Status") == "stopping",
        "Status stopping",
    )


# ---- dbus-next ----------------------------------------------------------------------------


class Seen(list[Event]):
    """What a dbus-next client's handlers got, in the GLib client's event shape."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def add(self, event: str, **fields: Any) -> None:
        self.append({"event": event, "t": time.monotonic(), **fields})
        self.arrived.set()

    async def until(self, wanted: Callable[[Event], bool], what: str, timeout: float = 30) -> Event:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = next((e for e in self if wanted(e)), None)
                    if found is not None:
                        return found
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise TimedOut(f"timed out after {timeout:g} s: dbus-next saw no {what}") from None


def plain(value: Any) -> Any:
    if isinstance(value, NextVariant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class NextClient:
    """A dbus-next app: the root's ObjectManager proxy, and a proxy per job it follows.

    dbus-next makes its proxies' methods at run time: they are typed `Any`."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.seen = Seen()
        self.objects: Any = None
        self.manager: Any = None

    @classmethod
    async def connect(cls, address: str) -> NextClient:
        client = cls(await NextBus(bus_address=address).connect())
        root = await client.proxy(ROOT)
        client.objects = root.get_interface(OBJECT_MANAGER)
        client.objects.on_interfaces_added(
            lambda path, ifaces: client.seen.add(
                "object-added", path=path, interfaces=plain(ifaces)
            )
        )
        client.objects.on_interfaces_removed(
            lambda path, names: client.seen.add("object-removed", path=path, interfaces=names)
        )
        client.manager = root.get_interface(MANAGER)
        return client

    async def proxy(self, path: str) -> Any:
        return self.bus.get_proxy_object(BUS_NAME, path, await self.bus.introspect(BUS_NAME, path))

    async def follow(self, path: str) -> Any:
        """Listen to a job's PropertiesChanged and Completed; returns its Job proxy."""
        job = await self.proxy(path)

        def changed(iface: str, values: dict[str, Any], invalidated: list[str]) -> None:
            self.seen.add(
                "properties-changed",
                path=path,
                interface=iface,
                changed=plain(values),
                invalidated=invalidated,
            )

        job.get_interface(PROPERTIES).on_properties_changed(changed)

        def ended(success: bool, message: str, state: str, error: str) -> None:
            args = [success, message, state, error]
            self.seen.add("signal", path=path, interface=JOB_IFACE, member="Completed", args=args)

        job_iface = job.get_interface(JOB_IFACE)
        job_iface.on_completed(ended)  # dbus-next wants one parameter per argument
        return job_iface

    async def close(self) -> None:
        self.bus.disconnect()
        await self.bus.wait_for_disconnect()
        # dbus-next 0.2.3 only shuts its socket down (python-dbus-next issue 137).
        self.bus._stream.close()
        self.bus._sock.close()


@contextlib.asynccontextmanager
async def next_client(address: str) -> AsyncIterator[NextClient]:
    client = await NextClient.connect(address)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.slow
def test_dbus_next_sees_a_download_come_progress_and_go(make_peer: MakePeer) -> None:
    source, receiver = slow_source_and_receiver(make_peer)
    source_id = connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 30, "the source")

    async def scenario() -> None:
        async with next_client(receiver.bus.address) as client:
            managed = plain(await client.objects.call_get_managed_objects())
            games = {
                ifaces[GAME_IFACE]["Id"] for ifaces in managed.values() if GAME_IFACE in ifaces
            }
            assert games == CATALOG_IDS
            assert managed[f"{ROOT}/peers/{source_id}"][PEER_IFACE]["Id"] == source_id
            first = time.monotonic()
            job = await client.manager.call_download(GAME, False)
            appeared = await client.seen.until(added(job), "the job's InterfacesAdded")
            props = appeared["interfaces"][JOB_IFACE]
            assert set(props) == JOB_PROPERTIES
            assert (props["Operation"], props["GameId"]) == ("download", GAME)
            assert props["State"] == "running"
            await client.follow(job)
            end = await client.seen.until(completed(job), "Completed", timeout=120)
            assert end["args"][0] is True
            assert end["args"][2:] == ["finished", ""]
            # Changes before the proxy listened were missed: only what it got is compared.
            seen = follow_job(client.seen[: client.seen.index(end)], job, {})
            check_progress(seen, first, end["t"])
            assert seen[-1]["State"] == "finished"
            assert seen[-1]["Sources"] == {source_id: seen[-1]["BytesDone"]}
            gone = await client.seen.until(removed(job), "InterfacesRemoved", JOB_LINGER + 30)
            assert gone["interfaces"] == [JOB_IFACE]
            assert gone["t"] - end["t"] >= JOB_LINGER - 2
            assert job not in plain(await client.objects.call_get_managed_objects())

    run(scenario(), 180)


def test_dbus_next_job_cancel_stops_an_install(daemon: Daemon, game_dir: Path) -> None:
    """Job.Cancel once only set a flag the job never read (issue 13); any kind stops."""
    root = make_game(game_dir, OTHER, OTHER_VERSION, [Entry("big.bin", bytes(384 * MiB))])
    archives = sorted(p.name for p in root.iterdir())
    daemon.start()

    async def scenario() -> None:
        async with next_client(daemon.bus.address) as client:
            path = await client.manager.call_install(OTHER)
            job = await client.follow(path)
            await job.call_cancel()
            end = await client.seen.until(completed(path), "Completed", timeout=60)
            assert end["args"][0] is False
            assert end["args"][2:] == ["cancelled", ERR + "Cancelled"]
            assert follow_job(client.seen, path, {})[-1]["State"] == "cancelled"

    run(scenario(), 120)
    assert sorted(p.name for p in root.iterdir()) == archives, "nothing installed, nothing lost"
    assert daemon.ctl_json("show", OTHER)["installed"] is False


def test_dbus_next_sees_games_come_and_go(daemon: Daemon, tmp_path: Path) -> None:
    """Game objects too come and go through the root's ObjectManager (catalog reload)."""
    catalog = tmp_path / "game.db"
    write_catalog(catalog, [CatalogGame("alpha", "Alpha", "", 1, "1.0")])
    daemon.extra_args = ("--catalog", str(catalog))
    daemon.start()

    async def scenario() -> None:
        async with next_client(daemon.bus.address) as client:
            managed = plain(await client.objects.call_get_managed_objects())
            assert list(managed) == [f"{ROOT}/games/alpha"]
            write_catalog(
                catalog,
                [CatalogGame("alpha", "Alpha", "", 1, "1.0"), CatalogGame("beta", "B", "", 1, "1")],
            )
            assert await client.manager.call_reload_catalog() == 2
            beta = await client.seen.until(added(f"{ROOT}/games/beta"), "beta's InterfacesAdded")
            assert beta["interfaces"][GAME_IFACE]["Id"] == "beta"
            write_catalog(catalog, [CatalogGame("beta", "B", "", 1, "1")])
            assert await client.manager.call_reload_catalog() == 1
            alpha = await client.seen.until(removed(f"{ROOT}/games/alpha"), "alpha's removal")
            assert alpha["interfaces"] == [GAME_IFACE]

    run(scenario())


# ---- the contract as tools read it --------------------------------------------------------


def test_gdbus_codegen_finds_every_argument_named(tmp_path: Path) -> None:
    """Unnamed arguments became `arg_unnamed_arg0` in generated bindings (issue 13)."""
    result = subprocess.run(
        [
            tool("gdbus-codegen"),
            *("--interface-prefix", "org.lanspread.Lanspread1."),
            *("--c-namespace", "Lanspread", "--generate-c-code", "lanspread"),
            str(XML),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    generated = {p.name: p.read_text() for p in tmp_path.glob("lanspread.[ch]")}
    assert sorted(generated) == ["lanspread.c", "lanspread.h"]
    assert "lanspread_job_call_cancel" in generated["lanspread.h"]
    unnamed = {
        name: sorted(set(re.findall(r"\w*unnamed\w*", text))) for name, text in generated.items()
    }
    assert unnamed == {"lanspread.c": [], "lanspread.h": []}


def test_object_manager_only_at_the_root(daemon: Daemon, game_dir: Path) -> None:
    """`GetManagedObjects` on a game returned nothing: only the root manages objects."""
    make_game(game_dir, GAME, "1.0", [Entry("big.bin", bytes(64 * MiB))])
    daemon.start()
    job = daemon.ctl_json("install", "--no-wait", GAME)["job"]  # it stays a while after

    def interfaces(path: str) -> set[str]:
        shown = subprocess.run(
            [
                tool("gdbus"),
                *("introspect", "--address", daemon.bus.address),
                *("--dest", BUS_NAME, "--object-path", path),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return set(re.findall(r"^\s*interface (\S+) \{", shown, re.MULTILINE))

    assert {OBJECT_MANAGER, MANAGER} <= interfaces(ROOT)
    assert GAME_IFACE in interfaces(GAME_PATH)
    assert OBJECT_MANAGER not in interfaces(GAME_PATH)
    assert JOB_IFACE in interfaces(job)
    assert OBJECT_MANAGER not in interfaces(job)


def test_wrong_signature_answers_invalid_args(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME)
    daemon.start()
    job = daemon.ctl_json("install", GAME)["job"]  # ended, still there a while

    async def scenario() -> None:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        cases: list[tuple[str, str, str, str, list[Any]]] = [
            (ROOT, MANAGER, "GetGame", "u", [7]),
            (ROOT, MANAGER, "Install", "", []),
            (ROOT, MANAGER, "Download", "s", [GAME]),
            (ROOT, MANAGER, "Download", "bs", [True, GAME]),
            (ROOT, PROPERTIES, "Get", "s", [MANAGER]),
            (job, JOB_IFACE, "Cancel", "s", ["now"]),
            (GAME_PATH, PROPERTIES, "GetAll", "u", [1]),
        ]
        for path, iface, member, signature, body in cases:
            reply = await call(bus, member, signature, body, path=path, interface=iface)
            assert error_name(reply) == INVALID_ARGS, (member, signature, reply.body)
            assert reply.body and reply.body[0], "every error has a message"
        assert error_name(await call(bus, "ListGames")) is None
        await disconnect(bus)

    run(scenario())
    # busctl sends whatever it is told: it gets the refusal, not a crash or silence.
    busctl = subprocess.run(
        [
            tool("busctl"),
            *(f"--address={daemon.bus.address}", "call", BUS_NAME, ROOT, MANAGER),
            *("GetGame", "u", "7"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert busctl.returncode != 0
    assert "Call failed" in busctl.stderr
    assert daemon.ctl("status").returncode == 0


def test_missing_object_answers_unknown_object(daemon: Daemon) -> None:
    daemon.start()

    async def scenario() -> None:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        cases: list[tuple[str, str, str, str, list[Any]]] = [
            (f"{ROOT}/jobs/999999", JOB_IFACE, "Cancel", "", []),
            (f"{ROOT}/jobs/999999", PROPERTIES, "GetAll", "s", [JOB_IFACE]),
            (f"{ROOT}/games/nosuchgame", PROPERTIES, "Get", "ss", [GAME_IFACE, "Id"]),
            (f"{ROOT}/peers/00", PEER_IFACE, "Nothing", "", []),
        ]
        for path, iface, member, signature, body in cases:
            reply = await call(bus, member, signature, body, path=path, interface=iface)
            assert error_name(reply) == UNKNOWN_OBJECT, (path, member, reply.body)
            assert reply.body and reply.body[0], "every error has a message"
        await disconnect(bus)

    run(scenario())
    assert daemon.ctl("status").returncode == 0


def test_long_input_is_cut_in_errors(daemon: Daemon) -> None:
    """A 100,000-character id came back whole in the error text (issue 13)."""
    daemon.start()
    sent = "x" * 100_000

    async def scenario() -> None:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        cases: list[tuple[str, str, list[Any]]] = [
            ("GetGame", "s", [sent]),
            ("Install", "s", [sent]),
            ("Download", "sb", [sent, False]),
            ("Cancel", "s", [sent]),
            ("ConnectPeer", "s", [sent]),
            ("SetGameDir", "s", ["/" + sent]),
        ]
        for member, signature, body in cases:
            reply = await call(bus, member, signature, body)
            assert (error_name(reply) or "").startswith(ERR), (member, reply.body[0][:200])
            message = reply.body[0]
            echoed = max((len(cut) for cut in re.findall("x+", message)), default=0)
            assert echoed <= 80, (member, message[:200])
            assert len(message) < 300, (member, message[:400])
            if member == "GetGame":
                assert echoed >= 40, f"the refused id is still named: {message}"
        await disconnect(bus)

    run(scenario())
    assert daemon.ctl("status").returncode == 0
