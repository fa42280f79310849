"""What a game serves while it downloads, as D-Bus and lanspreadctl show it (issue 16).

Real daemons on private buses: a source whose upload is capped, so the receiver's
download runs chunk by chunk. To look at a download in the middle without racing it,
the source's limit is lowered to 1 B/s (a new rate applies at once to what is owed)
and raised again when the looking is done.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.core.hashes import CHUNK_SIZE
from tests.support import (
    BUS_NAME,
    MANAGER,
    ROOT,
    Daemon,
    call,
    disconnect,
    error_name,
    wait_for,
)
from tests.test_dbus_api import (
    GAME_IFACE,
    GAME_PATH,
    JOB_IFACE,
    Signals,
    add_match,
    collect_signals,
    props,
    run,
)
from tests.test_peers import GAME, MiB, connect, downloads, game_entries, seed_game, sources_of

MakePeer = Callable[..., Daemon]
SIZE = 32 * MiB
RATE = 2 * MiB  # a 4 MiB chunk every 2 s: the first comes at once, the next ones slowly
SHOWN = re.compile(r"^Sharing: sharing (\d+) of (\d+) chunks while downloading$", re.MULTILINE)


def shared_chunks(root: Path) -> int:
    """The chunks of the game's file list, version.ini's included (served from memory)."""
    sizes = [len(data) for data in downloads(root).values() if data is not None]
    return sum(max(1, math.ceil(size / CHUNK_SIZE)) for size in sizes)


def game_change(message: Message) -> dict[str, Any]:
    """The Game properties a PropertiesChanged of our game carries; {} for other signals."""
    if message.member != "PropertiesChanged" or message.path != GAME_PATH:
        return {}
    if message.body[0] != GAME_IFACE:
        return {}
    changed: dict[str, Any] = unwrap(message.body[1])
    return changed


def sharing_seen(seen: Signals) -> list[int]:
    return [c["SharingChunks"] for m in seen if "SharingChunks" in (c := game_change(m))]


async def set_upload_limit(source: Daemon, rate: int) -> None:
    result = await asyncio.to_thread(source.ctl, "limit", "--upload", str(rate))
    assert result.returncode == 0, result.stderr


async def start_download(receiver: Daemon) -> tuple[MessageBus, Signals, str]:
    """Watch every signal of the receiver's daemon, then start the download."""
    bus = await MessageBus(bus_address=receiver.bus.address).connect()
    await add_match(bus, f"type='signal',sender='{BUS_NAME}'")
    seen = collect_signals(bus)
    reply = await call(bus, "Download", "sb", [GAME, False])
    assert error_name(reply) is None, reply.body
    return bus, seen, str(reply.body[0])


def source_and_receiver(make_peer: MakePeer, *receiver_args: str) -> tuple[Daemon, Daemon, Path]:
    source = make_peer("source", extra_args=("--upload-limit", str(RATE)))
    receiver = make_peer("receiver", extra_args=receiver_args)
    root = seed_game(source, game_entries(SIZE))
    source.start()
    receiver.start()
    connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 10, "the source")
    return source, receiver, root


@pytest.mark.slow
def test_a_download_shows_what_it_shares_and_nothing_once_done(make_peer: MakePeer) -> None:
    source, receiver, root = source_and_receiver(make_peer)
    total = shared_chunks(root)

    async def scenario() -> None:
        bus, seen, job = await start_download(receiver)
        # Told as it grows, not only when the download starts and ends.
        await seen.until(
            lambda _m: len(set(sharing_seen(seen))) >= 2, "a second count of shared chunks", 30
        )
        await set_upload_limit(source, 1)  # the download holds still while we look
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert game["Operation"] == "download"
        assert 2 <= game["SharingChunks"] < total
        assert game["SharingTotal"] == total
        manager = await props(bus, ROOT, MANAGER)
        assert manager["ShareWhileDownloading"] is True

        shown = await asyncio.to_thread(receiver.ctl, "show", GAME)
        found = SHOWN.search(shown.stdout)
        assert found is not None, shown.stdout
        assert game["SharingChunks"] <= int(found[1]) < total
        assert int(found[2]) == total
        table = await asyncio.to_thread(receiver.ctl, "games")
        assert re.search(rf"Absent \(download; sharing \d+ of {total} chunks\)", table.stdout), (
            table.stdout
        )
        exact = await asyncio.to_thread(receiver.ctl_json, "show", GAME)
        assert exact["sharing_chunks"] >= 1
        assert exact["sharing_total"] == total
        status = await asyncio.to_thread(receiver.ctl, "status")
        assert "sharing:    games whole and downloads in progress" in status.stdout

        await set_upload_limit(source, 0)
        await seen.until(
            lambda m: m.member == "Completed" and m.path == job, "the download's end", 60
        )
        assert (await props(bus, job, JOB_IFACE))["State"] == "finished"
        after = await props(bus, GAME_PATH, GAME_IFACE)
        assert (after["SharingChunks"], after["SharingTotal"]) == (0, 0)
        assert after["Availability"] == "Ready"
        # It grew while the download ran and went to 0 when it ended.
        counts = sharing_seen(seen)
        growing = counts[:-1]
        assert counts[-1] == 0, counts
        assert growing == sorted(growing) and growing[-1] > 0, counts
        await disconnect(bus)

    run(scenario(), timeout=120)
    assert receiver.ctl_json("show", GAME)["sharing_chunks"] == 0
    assert "Sharing:" not in receiver.ctl("show", GAME).stdout


@pytest.mark.slow
def test_no_share_while_downloading_shares_nothing(make_peer: MakePeer) -> None:
    source, receiver, _root = source_and_receiver(make_peer, "--no-share-while-downloading")

    async def scenario() -> None:
        bus, seen, job = await start_download(receiver)

        def chunk_received(m: Message) -> bool:
            if m.member != "PropertiesChanged" or m.path != job or m.body[0] != JOB_IFACE:
                return False
            return bool(unwrap(m.body[1]).get("BytesDone", 0) > 0)

        await seen.until(chunk_received, "a verified chunk", 30)
        await set_upload_limit(source, 1)
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert game["Operation"] == "download"
        assert (game["SharingChunks"], game["SharingTotal"]) == (0, 0)
        manager = await props(bus, ROOT, MANAGER)
        assert manager["ShareWhileDownloading"] is False
        shown = await asyncio.to_thread(receiver.ctl, "show", GAME)
        assert (
            "Sharing: sharing nothing while downloading (share_while_downloading is off)"
            in shown.stdout.splitlines()
        ), shown.stdout
        status = await asyncio.to_thread(receiver.ctl, "status")
        assert "sharing:    whole games only (share_while_downloading is off)" in status.stdout

        await set_upload_limit(source, 0)
        await seen.until(
            lambda m: m.member == "Completed" and m.path == job, "the download's end", 60
        )
        assert (await props(bus, job, JOB_IFACE))["State"] == "finished"
        assert not any(sharing_seen(seen)), sharing_seen(seen)
        await disconnect(bus)

    run(scenario(), timeout=120)


@pytest.mark.slow
def test_a_cancelled_download_shares_nothing_any_more(make_peer: MakePeer) -> None:
    source, receiver, _root = source_and_receiver(make_peer)

    async def scenario() -> None:
        bus, seen, job = await start_download(receiver)
        await seen.until(
            lambda m: game_change(m).get("SharingChunks", 0) > 0, "a verified chunk shared", 30
        )
        await set_upload_limit(source, 1)  # cancelled mid-chunk, with chunks still to come
        reply = await call(bus, "Cancel", "s", [GAME])
        assert error_name(reply) is None, reply.body
        await seen.until(
            lambda m: m.member == "Completed" and m.path == job, "the cancel's end", 60
        )
        assert (await props(bus, job, JOB_IFACE))["State"] == "cancelled"
        game = await props(bus, GAME_PATH, GAME_IFACE)
        assert (game["SharingChunks"], game["SharingTotal"]) == (0, 0)
        assert sharing_seen(seen)[-1] == 0
        await disconnect(bus)

    run(scenario(), timeout=120)
