"""A peer flooding announcements costs a real daemon a few D-Bus signals a second.

The flooder is a real PeerManager in this process, over real QUIC on loopback: a
snapshot of 10,000 games outside the catalog, then 20,000 deltas flipping one catalog
game on and off, each naming one more unknown game. A D-Bus client on the daemon's
private bus counts what it is told. Before game-table changes were coalesced, the
daemon fell silent for seconds and the flooder's connection died of it.

A few hundred unknown games are kept per peer all the same: a catalog reload finds
the peers that already hold a newly listed game.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.app.changes import FLUSH_INTERVAL
from lanspreadd.core.catalog import Catalog, CatalogGame, write_catalog
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.net.peers import PeerManager
from lanspreadd.protocol.messages import Delta
from tests.scenarios.hostile_announce import (
    DELTAS,
    TOGGLED,
    UNKNOWN,
    SilentHost,
    flood_frames,
    flood_manager,
    send,
    taken_in,
)
from tests.support import BUS_NAME, ROOT, Daemon, bus_driver_call, call, disconnect, free_port

MARKER = "teeworlds"  # announced last: its source appearing means the flood was read
GAMES = f"{ROOT}/games/"
PEERS = f"{ROOT}/peers/"
PROPERTIES = "org.freedesktop.DBus.Properties"
GAME_IFACE = "org.lanspread.Lanspread1.Game"


def game_path(game_id: str) -> str:
    return GAMES + game_id.replace("-", "_2d")


class Signals:
    """The daemon's signals as they arrive, and a wait for one of them."""

    def __init__(self, bus: MessageBus) -> None:
        self.seen: list[Message] = []
        self._arrived = asyncio.Event()
        bus.add_message_handler(self._take)

    def _take(self, message: Message) -> None:
        if message.message_type is MessageType.SIGNAL:
            self.seen.append(message)
            self._arrived.set()

    async def until(self, found: Callable[[Message], bool], what: str) -> None:
        try:
            async with asyncio.timeout(60):
                while not any(found(m) for m in self.seen):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"no signal said {what}") from None

    def changed(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """(path, changed properties) of each PropertiesChanged under `prefix`."""
        return [
            (m.path, unwrap(m.body[1]))
            for m in self.seen
            if m.member == "PropertiesChanged" and m.path and m.path.startswith(prefix)
        ]


def test_an_announcement_flood_is_told_a_few_times_a_second(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    catalog = Catalog.load()
    marker_version = catalog.games[MARKER].version

    def marker_counted(m: Message) -> bool:
        return (
            m.member == "PropertiesChanged"
            and m.path == game_path(MARKER)
            and unwrap(m.body[1]).get("Sources") == 1
        )

    async def scenario() -> None:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        await bus_driver_call(bus, "AddMatch", f"type='signal',sender='{BUS_NAME}'")
        signals = Signals(bus)
        flooder = flood_manager(tmp_path / "flooder")
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(flooder.run())
            await flooder.ready.wait()
            victim = await flooder.connect("127.0.0.1", daemon.port)
            await signals.until(
                lambda m: m.member == "InterfacesAdded" and PEERS in m.body[0], "the flooder came"
            )
            signals.seen.clear()
            started = loop.time()
            frames = flood_frames(UNKNOWN, DELTAS)
            await send(flooder, victim, (next(frames) for _ in range(1 + DELTAS // 2)))
            # Halfway through, a player lists the games.
            before, asked = len(signals.seen), loop.time()
            listed = await call(bus, "ListGames")
            signals_while_listing = len(signals.seen) - before
            listing = loop.time() - asked
            await send(flooder, victim, frames)
            await send(flooder, victim, iter([Delta({MARKER: marker_version}, ())]))
            await taken_in(flooder, victim)
            await signals.until(marker_counted, f"{MARKER} has a source")
            elapsed = loop.time() - started
            peer = await call(
                bus,
                "GetAll",
                "s",
                ["org.lanspread.Lanspread1.Peer"],
                path=PEERS + flooder.identity.peer_id,
                interface=PROPERTIES,
            )
            refusals = await call(
                bus,
                "Get",
                "ss",
                ["org.lanspread.Lanspread1.Manager", "Refusals"],
                interface=PROPERTIES,
            )
            running.cancel()
        await disconnect(bus)

        assert listed.message_type is MessageType.METHOD_RETURN
        assert len(listed.body[0]) == len(catalog.games)
        # No backlog of signals stood between the call and its answer.
        assert signals_while_listing <= 2 * (listing / FLUSH_INTERVAL + 2), signals_while_listing
        flushes = elapsed / FLUSH_INTERVAL + 2
        games = signals.changed(GAMES)
        # Only the two games the flood touched were told, each at most once a batch.
        assert {path for path, _ in games} == {game_path(TOGGLED), game_path(MARKER)}
        toggled = [props for path, props in games if path == game_path(TOGGLED)]
        assert 1 <= len(toggled) <= flushes, (len(toggled), elapsed)
        assert all(set(props) == {"Sources"} for props in toggled)  # only what changed
        peers = signals.changed(PEERS)
        assert len(peers) <= flushes, (len(peers), elapsed)
        # The peer's games as D-Bus shows them: catalog games only, never the flood.
        assert all(set(props.get("Games", {})) <= set(catalog.games) for _, props in peers)
        assert unwrap(peer.body[0])["Games"] == {MARKER: marker_version}
        # Each frame naming a game beyond the cap is one refusal: the snapshot, each delta.
        assert unwrap(refusals.body[0])["peer-unknown-games"] == 1 + DELTAS

    asyncio.run(asyncio.wait_for(scenario(), 300))


class Holder(SilentHost):
    """A peer holding a game our catalog does not list yet."""

    def snapshot(self) -> dict[str, str]:
        return {"newgame": "1"}


def test_a_game_announced_before_the_catalog_listed_it_is_found_after_a_reload(
    daemon: Daemon, tmp_path: Path
) -> None:
    db = tmp_path / "game.db"
    write_catalog(db, [CatalogGame("alpha", "Alpha", "", 1, "1.0")])
    daemon.extra_args = ("--catalog", str(db))
    daemon.start()
    holder = PeerManager(
        load_or_create(tmp_path / "holder", "holder"),
        "holder",
        "127.0.0.1",
        free_port(),
        Holder(),
        RefusalTally(),
    )

    async def ctl(*args: str) -> Any:
        """lanspreadctl, run while the holder's loop goes on answering."""
        return await asyncio.to_thread(daemon.ctl_json, *args)

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(holder.run())
            await holder.ready.wait()
            victim = await holder.connect("127.0.0.1", daemon.port)
            await taken_in(holder, victim)  # our snapshot was read: newgame is unknown there
            assert (await ctl("peers"))[0]["games"] == {}
            listed = [
                CatalogGame("alpha", "Alpha", "", 1, "1.0"),
                CatalogGame("newgame", "N", "", 1, "1"),
            ]
            write_catalog(db, listed)
            bus = await MessageBus(bus_address=daemon.bus.address).connect()
            assert (await ctl("reload-catalog"))["games"] == 2
            # The new game's object is there when the reload returns, its source counted.
            game = await call(
                bus, "GetAll", "s", [GAME_IFACE], path=game_path("newgame"), interface=PROPERTIES
            )
            await disconnect(bus)
            assert unwrap(game.body[0])["Sources"] == 1
            assert (await ctl("peers"))[0]["games"] == {"newgame": "1"}
            running.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 120))
