"""lanspreadd on a real private dbus-daemon, driven by dbus-fast and lanspreadctl."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.archive.writer import Entry, write_rar5
from lanspreadd.core.catalog import CatalogGame, write_catalog
from tests.introspection import contract, describe, live_interfaces
from tests.support import (
    BUS_NAME,
    ERR,
    ROOT,
    Daemon,
    TimedOut,
    bus_driver_call,
    call,
    disconnect,
    error_name,
    make_game,
    run_ctl,
    tree,
    wait_for,
    wait_for_async,
)

T = TypeVar("T")
GAME = "sample-game"
GAME_PATH = "/org/lanspread/Lanspread1/games/sample_2dgame"
JOB_IFACE = "org.lanspread.Lanspread1.Job"
GAME_IFACE = "org.lanspread.Lanspread1.Game"


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(daemon: Daemon) -> MessageBus:
    return await MessageBus(bus_address=daemon.bus.address).connect()


async def props(bus: MessageBus, path: str, iface: str) -> dict[str, Any]:
    reply = await call(
        bus, "GetAll", "s", [iface], path=path, interface="org.freedesktop.DBus.Properties"
    )
    assert error_name(reply) is None, reply.body
    result: dict[str, Any] = unwrap(reply.body[0])
    return result


async def wait_job(bus: MessageBus, path: str, timeout: float = 60) -> dict[str, Any]:
    async def ended() -> bool:
        return bool((await props(bus, path, JOB_IFACE))["State"] != "running")

    await wait_for_async(ended, timeout, f"job {path} to end")
    return await props(bus, path, JOB_IFACE)


def big_game(game_dir: Path, size: int = 256 << 20) -> Path:
    return make_game(game_dir, GAME, "1.0", [Entry("big.bin", bytes(size)), Entry("x.txt", b"x")])


async def add_match(bus: MessageBus, rule: str) -> None:
    await bus_driver_call(bus, "AddMatch", rule)


class Signals(list[Message]):
    """The signals a bus received, in order; `until` waits for the one wanted."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def take(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            self.append(msg)
            self.arrived.set()

    async def until(
        self, wanted: Callable[[Message], bool], what: str, timeout: float = 10
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not any(wanted(m) for m in self):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}") from None


def collect_signals(bus: MessageBus) -> Signals:
    seen = Signals()
    bus.add_message_handler(seen.take)
    return seen


def test_introspection_matches_contract(make_peer: Callable[..., Daemon]) -> None:
    daemon = make_peer("alpha")
    other = make_peer("beta").start()
    make_game(daemon.game_dir, GAME)
    daemon.start()
    peer_id = daemon.ctl_json("connect", f"127.0.0.1:{other.port}")["peer_id"]
    job = daemon.ctl_json("install", "--no-wait", GAME)["job"]
    paths = [ROOT, GAME_PATH, job, f"{ROOT}/peers/{peer_id}"]
    live = run(live_interfaces(daemon.bus.address, paths))
    wanted = contract()
    assert sorted(live) == sorted(wanted)
    for name, iface in wanted.items():
        assert describe(live[name]) == describe(iface), name


def test_object_manager_and_state_through_an_install(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME)
    daemon.start()

    async def scenario() -> None:
        bus = await connect(daemon)
        reply = await call(
            bus, "GetManagedObjects", path=ROOT, interface="org.freedesktop.DBus.ObjectManager"
        )
        objects = unwrap(reply.body[0])
        assert objects[GAME_PATH][GAME_IFACE]["Availability"] == "Ready"
        assert objects[GAME_PATH][GAME_IFACE]["Installed"] is False
        assert sum(1 for p in objects if "/games/" in p) == 6

        await add_match(bus, f"type='signal',sender='{BUS_NAME}'")
        seen = collect_signals(bus)
        reply = await call(bus, "Install", "s", [GAME])
        job_path = reply.body[0]
        state = await wait_job(bus, job_path)
        assert state["State"] == "finished"
        assert state["BytesDone"] == state["Bytes"] > 0
        await seen.until(
            lambda m: m.member == "Completed" and m.path == job_path, "the job's Completed"
        )
        added = [m for m in seen if m.member == "InterfacesAdded"]
        assert any(m.body[0] == job_path for m in added)
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert game["Installed"] is True
        assert game["Operation"] == ""
        changes = [m for m in seen if m.member == "PropertiesChanged" and m.path == GAME_PATH]
        assert any(unwrap(m.body[1]).get("Installed") is True for m in changes)
        await disconnect(bus)

    run(scenario())
    assert (game_dir / GAME / "local" / "VERSION.txt").read_text() == "1.0"


def test_ctl_install_update_uninstall_remove(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME, "1.0")
    daemon.start()
    result = daemon.ctl_json("install", GAME)
    assert result["state"] == "finished"
    assert daemon.ctl("install", GAME).returncode == 1
    assert daemon.ctl_json("show", GAME)["installed_version"] == "1.0"
    make_game(game_dir, GAME, "1.1")
    shown = daemon.ctl_json("show", GAME)
    assert shown["availability"] == "Outdated"
    # New archives beside an older install: the player is told an update is waiting.
    assert (shown["installed_version"], shown["update_ready"]) == ("1.0", True)
    games = daemon.ctl("games").stdout
    assert f"{GAME}   Outdated (update ready)  1.0" in games, games
    assert daemon.ctl_json("update", GAME)["state"] == "finished"
    assert (game_dir / GAME / "local" / "VERSION.txt").read_text() == "1.1"
    shown = daemon.ctl_json("show", GAME)
    assert (shown["installed_version"], shown["update_ready"]) == ("1.1", False)
    assert daemon.ctl_json("remove", GAME)["state"] == "finished"
    shown = daemon.ctl_json("show", GAME)
    assert (shown["availability"], shown["installed_version"]) == ("LocalOnly", "1.1")
    assert "LocalOnly (not the catalog version)  1.1" in daemon.ctl("games").stdout
    assert daemon.ctl_json("uninstall", GAME)["state"] == "finished"
    assert daemon.ctl_json("show", GAME)["availability"] == "Absent"
    runs = daemon.ctl_json("unpack-logs")
    assert [r["operation"] for r in runs] == ["update", "install"]
    assert all(r["success"] for r in runs)
    status = daemon.ctl_json("status")
    assert status["games"] == 6
    assert status["busy"] == []


def test_busy_and_cancel(daemon: Daemon, game_dir: Path) -> None:
    big_game(game_dir)
    daemon.start()

    async def scenario() -> None:
        bus = await connect(daemon)
        first = await call(bus, "Install", "s", [GAME])
        assert error_name(first) is None
        second = await call(bus, "Uninstall", "s", [GAME])
        assert error_name(second) == ERR + "Busy"
        assert "busy" in second.body[0]
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert game["Operation"] == "install"
        assert game["Job"] == first.body[0]
        cancel = await call(bus, "Cancel", "s", [GAME])
        assert error_name(cancel) is None
        state = await wait_job(bus, first.body[0])
        assert state["State"] == "cancelled"
        assert state["ErrorName"] == ERR + "Cancelled"
        assert state["ErrorMessage"] == "cancel requested"  # the job names itself already
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert game["Installed"] is False
        assert game["Operation"] == ""
        nothing = await call(bus, "Cancel", "s", [GAME])
        assert error_name(nothing) == ERR + "NotFound"
        await disconnect(bus)

    run(scenario())
    root = game_dir / GAME
    assert sorted(p.name for p in root.iterdir()) == ["sample-game.rar", "version.ini"]


def test_hand_copied_and_deleted_games_show_up(daemon: Daemon, game_dir: Path) -> None:
    daemon.start()

    async def scenario() -> None:
        bus = await connect(daemon)
        await add_match(bus, f"type='signal',sender='{BUS_NAME}',path='{GAME_PATH}'")
        seen = collect_signals(bus)
        make_game(game_dir, GAME)

        def availability(wanted: str) -> Callable[[Message], bool]:
            return lambda m: (
                m.member == "PropertiesChanged" and unwrap(m.body[1]).get("Availability") == wanted
            )

        await seen.until(availability("Ready"), "the game to be Ready", timeout=5)
        seen.clear()
        (game_dir / GAME / "version.ini").unlink()
        await seen.until(availability("Absent"), "the game to be Absent", timeout=5)
        await disconnect(bus)

    run(scenario())


def test_bad_input_gets_named_errors_and_daemon_keeps_serving(
    daemon: Daemon, game_dir: Path
) -> None:
    make_game(game_dir, GAME)
    daemon.start()

    async def scenario() -> None:
        bus = await connect(daemon)
        cases: list[tuple[str, str, list[Any], str]] = [
            ("GetGame", "s", ["no-such-game"], ERR + "NotFound"),
            ("Install", "s", ["no-such-game"], ERR + "NotFound"),
            ("GetGame", "s", ["../../etc"], ERR + "InvalidArgument"),
            ("Install", "s", ["x" * 1_000_000], ERR + "InvalidArgument"),
            ("Uninstall", "s", [GAME], ERR + "InvalidState"),
            ("SetGameDir", "s", ["relative/dir"], ERR + "InvalidArgument"),
            ("SetGameDir", "s", ["/no/such/dir"], ERR + "InvalidArgument"),
            ("SetGameDir", "s", [""], ERR + "InvalidArgument"),
            ("ConnectPeer", "s", ["h" * 100_000], ERR + "InvalidArgument"),
            ("GetGame", "u", [7], "org.freedesktop.DBus.Error.InvalidArgs"),
            ("Install", "", [], "org.freedesktop.DBus.Error.InvalidArgs"),
            ("NoSuchMethod", "", [], "org.freedesktop.DBus.Error.UnknownMethod"),
        ]
        for member, sig, body, expected in cases:
            reply = await call(bus, member, sig, body)
            assert error_name(reply) == expected, (member, body[:1], reply.body)
            assert reply.body and reply.body[0], "every error has a message"
            # What the caller sent comes back cut to 80 characters, not whole.
            assert len(reply.body[0]) < 200, (member, reply.body[0][:300])
        bogus = await call(bus, "GetAll", "s", ["x"], path="/org/lanspread/Lanspread1/games/zz")
        assert error_name(bogus) == "org.freedesktop.DBus.Error.UnknownObject"
        gone = await call(bus, "Cancel", path=f"{ROOT}/jobs/99999", interface=JOB_IFACE)
        assert error_name(gone) == "org.freedesktop.DBus.Error.UnknownObject"
        # The object manager lives at the root only.
        here = await call(
            bus, "GetManagedObjects", path=GAME_PATH, interface="org.freedesktop.DBus.ObjectManager"
        )
        assert error_name(here) == "org.freedesktop.DBus.Error.UnknownInterface"
        games = await call(bus, "ListGames")
        assert len(games.body[0]) == 6
        await disconnect(bus)

    run(scenario())
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    assert daemon.ctl("status").returncode == 0
    assert daemon.ctl("show", "Bad..Id").returncode == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [("corrupt", "ArchiveError"), ("unsafe", "UnsafeArchive"), ("truncated", "ArchiveError")],
)
def test_broken_archives_fail_the_job_and_lose_nothing(
    daemon: Daemon, game_dir: Path, kind: str, error: str
) -> None:
    root = make_game(game_dir, GAME, "1.0")
    daemon.start()
    assert daemon.ctl_json("install", GAME)["state"] == "finished"
    installed = tree(root / "local")
    make_game(game_dir, GAME, "2.0")
    archive = root / f"{GAME}.rar"
    if kind == "corrupt":
        raw = bytearray(archive.read_bytes())
        raw[-2000] ^= 0xFF
        archive.write_bytes(bytes(raw))
    elif kind == "unsafe":
        write_rar5(archive, [Entry("ok.txt", b"x"), Entry("../escape.txt", b"x")])
    else:
        archive.write_bytes(archive.read_bytes()[:-5000])
    before = tree(root)
    result = daemon.ctl("--json", "update", GAME)
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert outcome["state"] == "failed"
    assert outcome["error_name"] == ERR + error
    assert GAME in outcome["error_message"] or ".rar" in outcome["error_message"]
    assert tree(root) == before, "archives, sentinel and the old install are untouched"
    assert tree(root / "local") == installed
    assert not (game_dir / "escape.txt").exists()
    runs = daemon.ctl_json("unpack-logs")
    assert runs[0]["success"] is False
    assert runs[0]["error"]
    assert daemon.ctl_json("show", GAME)["installed"] is True


def test_full_disk_is_a_named_failure(daemon: Daemon, small_tmpfs: Path) -> None:
    daemon.game_dir = small_tmpfs
    root = small_tmpfs / GAME
    root.mkdir()
    write_rar5(root / "g.rar", [Entry("big.bin", os.urandom(1 << 20))])
    (root / "version.ini").write_text("1.0")
    daemon.start()
    result = daemon.ctl("--json", "install", GAME)
    assert result.returncode == 1
    assert json.loads(result.stdout)["error_name"] == ERR + "DiskFull"
    assert sorted(p.name for p in root.iterdir()) == ["g.rar", "version.ini"]
    assert daemon.ctl("status").returncode == 0


def test_daemon_killed_mid_install_recovers_on_restart(daemon: Daemon, game_dir: Path) -> None:
    root = big_game(game_dir, 768 << 20)
    archives = {p.name: p.stat().st_size for p in root.iterdir()}
    daemon.start()
    assert daemon.ctl("install", "--no-wait", GAME).returncode == 0
    staged = root / ".local.installing" / "big.bin"
    wait_for(
        lambda: staged.exists() and staged.stat().st_size > 0, 30, "unpacking to start", every=0.01
    )
    daemon.stop(signal.SIGKILL)
    assert (root / ".lanspread.json").exists(), "killed mid-operation"
    daemon.start()
    shown = daemon.ctl_json("show", GAME)
    assert shown["installed"] is False
    assert shown["availability"] == "Ready"
    assert {p.name: p.stat().st_size for p in root.iterdir()} == archives
    assert "recovered sample-game: rolled back the interrupted install" in daemon.stderr()


def test_logs_history_and_live_lines(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME)
    daemon.start()

    async def scenario() -> None:
        bus = await connect(daemon)
        await add_match(bus, f"type='signal',sender='{BUS_NAME}',member='LogLine'")
        seen = collect_signals(bus)
        history = await call(bus, "GetLogs", "u", [100])
        watermark, lines = history.body
        assert any("lanspreadd ready" in line for line in lines)
        await call(bus, "Install", "s", [GAME])

        await seen.until(
            lambda m: m.member == "LogLine" and "finished" in m.body[2], "the finished line"
        )
        seqs = [m.body[0] for m in seen if m.member == "LogLine"]
        assert seqs == sorted(seqs)
        assert seqs[0] == watermark + 1
        await disconnect(bus)

    run(scenario())
    out = daemon.ctl("logs", "-n", "3")
    assert out.returncode == 0
    assert len(out.stdout.splitlines()) == 3


def test_set_game_dir_switches_watch_and_persists(
    daemon: Daemon, game_dir: Path, tmp_path: Path
) -> None:
    daemon.start()
    other = tmp_path / "other-games"
    other.mkdir()
    assert daemon.ctl("set-game-dir", str(other)).returncode == 0
    assert daemon.ctl_json("status")["game_dir"] == str(other)
    make_game(other, GAME)

    wait_for(
        lambda: daemon.ctl_json("show", GAME)["availability"] == "Ready",
        5,
        "a game copied into the new directory to be seen",
    )
    assert daemon.stop() == 0
    daemon.extra_args = ()
    daemon.game_dir = game_dir
    # An explicit --game-dir flag still wins over the persisted choice.
    daemon.start()
    assert daemon.ctl_json("status")["game_dir"] == str(game_dir)


def test_reload_catalog(daemon: Daemon, tmp_path: Path) -> None:
    db = tmp_path / "game.db"
    write_catalog(db, [CatalogGame("alpha", "Alpha", "", 1, "1.0")])
    daemon.extra_args = ("--catalog", str(db))
    daemon.start()
    assert [g["id"] for g in daemon.ctl_json("games")] == ["alpha"]
    write_catalog(
        db, [CatalogGame("alpha", "Alpha", "", 1, "2.0"), CatalogGame("beta", "B", "", 1, "1")]
    )
    assert daemon.ctl_json("reload-catalog")["games"] == 2
    games = {g["id"]: g for g in daemon.ctl_json("games")}
    assert games["alpha"]["catalog_version"] == "2.0"
    assert "beta" in games
    db.write_bytes(b"garbage" * 1000)
    result = daemon.ctl("reload-catalog")
    assert result.returncode == 1
    assert "not a lanspread game.db" in result.stderr
    assert len(daemon.ctl_json("games")) == 2, "the old catalog stays in force"


def test_ctl_reports_an_unreachable_daemon(private_bus: Any, tmp_path: Path) -> None:
    result = run_ctl("--address", private_bus.address, "status")
    assert result.returncode == 3
    assert "lanspreadd is not running" in result.stderr
    result = run_ctl("--address", f"unix:path={tmp_path}/nothing", "games")
    assert result.returncode == 3
    assert "cannot connect" in result.stderr
    assert run_ctl("--address", private_bus.address, "no-such-command").returncode == 2
