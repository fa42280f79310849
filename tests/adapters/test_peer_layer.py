"""The peer table over in-memory QUIC: handshake, announcements, requests, leaving, duplicates.

Two or three real PeerManagers with real aioquic connections and sessions; no socket.
The layer above (`PeerHost`) is a fake that records what the table tells it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from lanspreadd.errors import NotServable, PeerError
from lanspreadd.net.peers import Peer
from lanspreadd.net.transport import PeerConnection
from lanspreadd.protocol.messages import FileList, FileListRequest
from lanspreadd.protocol.session import DEAD_AFTER, PING_INTERVAL
from tests.adapters.memorylan import FILES, MemoryLan, listing, settled

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_handshake_fills_both_tables_with_who_and_what_they_serve(tmp_path: Path) -> None:
    lan = MemoryLan(tmp_path)
    a = lan.peer("alpha", {"quake": "1.0"})
    b = lan.peer("bravo", {"doom": "2.1", "hexen": "1.1"})

    async def body() -> None:
        async with lan.running():
            conn = lan.dial(a, b)
            assert await settled(conn) == b.id
            await a.owner.until(lambda: a.knows(b) and bool(a.entry(b).games))
            await b.owner.until(lambda: b.knows(a) and bool(b.entry(a).games))

            seen_by_a, seen_by_b = a.entry(b), b.entry(a)
            assert (seen_by_a.name, seen_by_a.host, seen_by_a.data_port) == ("bravo", b.host, 4433)
            assert (seen_by_b.name, seen_by_b.host) == ("alpha", a.host)
            assert seen_by_a.outgoing and not seen_by_b.outgoing
            assert seen_by_a.games == {"doom": "2.1", "hexen": "1.1"}
            assert seen_by_b.games == {"quake": "1.0"}
            assert a.owner.changes == [(b.id, True, "connected"), (b.id, True, "snapshot")]
            assert a.manager.holding("doom", "2.1") == [seen_by_a]
            assert a.manager.holding("doom", "2.0") == []

            # What b serves later reaches a as a delta.
            b.owner.games = {"doom": "2.2", "quake": "1.0"}
            b.manager.announce()
            await a.owner.until(lambda: a.entry(b).games.get("doom") == "2.2")
            assert a.entry(b).games == {"doom": "2.2", "quake": "1.0"}
            assert a.owner.changes[-1] == (b.id, True, "delta")

    run(body())


def test_a_dial_to_the_wrong_peer_is_refused_by_its_identity(tmp_path: Path) -> None:
    lan = MemoryLan(tmp_path)
    a, b, c = lan.peer("alpha"), lan.peer("bravo"), lan.peer("charlie")

    async def body() -> None:
        async with lan.running():
            conn = lan.dial(a, b, expected=c.id)  # an address that now belongs to b
            assert await settled(conn) is None
            assert conn.session.close_reason == f"expected peer {c.id}, found {b.id}"
            assert not a.knows(b) and not b.knows(a)
            assert a.owner.changes == []

    run(body())


def test_a_file_list_request_is_answered_by_the_peer_that_was_asked(tmp_path: Path) -> None:
    lan = MemoryLan(tmp_path)
    a, b = lan.peer("alpha"), lan.peer("bravo", {"doom": "2.1"})

    async def body() -> None:
        async with lan.running():
            await lan.connect(a, b)
            got = await a.manager.request_file_list(b.id, "doom", "2.1")
            assert isinstance(got, FileList)
            (asker, request), *_ = b.owner.asked
            assert asker == a.id  # the authenticated asker, as its grant needs
            assert (request.game_id, request.version) == ("doom", "2.1")
            assert got == listing(request)
            assert got.files == FILES and got.token == b"doom".ljust(32, b".")

            # Concurrent requests are matched to their own replies.
            answers = await asyncio.gather(
                *(a.manager.request_file_list(b.id, g, "1") for g in ("x", "y", "z"))
            )
            assert [r.game_id for r in answers] == ["x", "y", "z"]

    run(body())


def test_a_refused_or_failed_request_is_a_named_peer_error(tmp_path: Path) -> None:
    lan = MemoryLan(tmp_path)
    a, b = lan.peer("alpha"), lan.peer("bravo")

    async def refuse(peer: Peer, request: FileListRequest) -> FileList:
        raise NotServable(f"{request.game_id} {request.version} is not served here now")

    async def fail(peer: Peer, request: FileListRequest) -> FileList:
        raise OSError(24, "Too many open files")

    async def body() -> None:
        async with lan.running():
            await lan.connect(a, b)
            b.owner.answer = refuse
            with pytest.raises(PeerError) as caught:
                await a.manager.request_file_list(b.id, "doom", "2.1")
            assert str(caught.value) == "bravo: doom 2.1 is not served here now"

            b.owner.answer = fail
            with pytest.raises(PeerError) as caught:
                await a.manager.request_file_list(b.id, "doom", "2.1")
            assert str(caught.value) == "bravo: could not answer: [Errno 24] Too many open files"
            assert b.refusals.totals == {"request-failed-OSError": 1}

            # Both sides carry on: the next request is answered.
            b.owner.answer = b.owner.list_files
            assert (await a.manager.request_file_list(b.id, "doom", "2.1")).game_id == "doom"
            with pytest.raises(PeerError) as caught:
                await a.manager.request_file_list("f" * 64, "doom", "2.1")
            assert str(caught.value) == "peer ffffffff is not connected"

    run(body())


def test_a_peer_saying_goodbye_fails_what_it_still_owed_with_its_reason(
    tmp_path: Path,
) -> None:
    lan = MemoryLan(tmp_path)
    a, b, c = lan.peer("alpha"), lan.peer("bravo"), lan.peer("charlie")

    async def body() -> None:
        async with lan.running():
            await lan.connect(a, b)
            await lan.connect(a, c)
            b.owner.answer = b.owner.hold
            c.owner.answer = c.owner.hold
            to_b = asyncio.create_task(a.manager.request_file_list(b.id, "doom", "2.1"))
            to_c = asyncio.create_task(a.manager.request_file_list(c.id, "doom", "2.1"))
            await b.owner.until(lambda: bool(b.owner.asked))
            await c.owner.until(lambda: bool(c.owner.asked))

            await b.manager.say_goodbye("daemon shutting down")
            with pytest.raises(PeerError) as caught:
                await to_b
            assert str(caught.value) == "bravo left: peer said goodbye: daemon shutting down"
            assert not a.knows(b)
            assert a.owner.changes[-1] == (b.id, False, "peer said goodbye: daemon shutting down")

            # What another peer owes is untouched: its answer still arrives.
            assert not to_c.done()
            c.owner.release.set()
            assert (await to_c).game_id == "doom"

    run(body())


def tick(conn: PeerConnection, now: float) -> bool:
    """One run of the session timer at an explicit `now`, as run_timer does; True once
    the session closed."""
    events = conn.session.handle_timer(now)
    conn.flush()
    if events:
        conn.sink(conn, events)
    return conn.session.closed


def test_a_silent_peer_is_dropped_after_dead_after_and_its_requests_fail(
    tmp_path: Path,
) -> None:
    lan = MemoryLan(tmp_path)
    a, b = lan.peer("alpha"), lan.peer("bravo")

    async def body() -> None:
        async with lan.running():
            await lan.connect(a, b)
            b.owner.answer = b.owner.hold
            pending = asyncio.create_task(a.manager.request_file_list(b.id, "doom", "2.1"))
            await b.owner.until(lambda: bool(b.owner.asked))

            lan.net.cut(a.host, b.host)  # b's power cable
            conn = a.entry(b).connection
            start = time.monotonic()
            seconds = next(s for s in range(1, 60) if tick(conn, start + s))
            # Not for a missed ping or two; dead after DEAD_AFTER (its last ping came
            # within a ping interval before the cut).
            assert DEAD_AFTER - PING_INTERVAL <= seconds <= DEAD_AFTER + 1

            with pytest.raises(PeerError) as caught:
                await pending
            silent = f"peer silent for {DEAD_AFTER:.0f}s"
            assert str(caught.value) == f"bravo left: {silent}"
            assert a.owner.changes[-1] == (b.id, False, silent)
            assert not a.knows(b)

    run(body())


@pytest.mark.parametrize("first", ["smaller-id", "larger-id"])
def test_simultaneous_connections_settle_on_the_one_the_smaller_id_opened(
    tmp_path: Path, first: str
) -> None:
    lan = MemoryLan(tmp_path)
    one, two = sorted([lan.peer("alpha"), lan.peer("bravo")], key=lambda p: p.id)
    dialler, other = (one, two) if first == "smaller-id" else (two, one)

    async def body() -> None:
        async with lan.running():
            earlier = await lan.connect(dialler, other)
            later = lan.dial(other, dialler)
            await lan.until_open(2)  # one of the two connections is gone, both its ends
            kept, dropped = (earlier, later) if dialler is one else (later, earlier)

            # Each table holds one end of the same connection: the one `one` opened.
            assert set(lan.open_ends()) == {one.entry(two).connection, two.entry(one).connection}
            assert kept in lan.open_ends()
            assert one.entry(two).outgoing and not two.entry(one).outgoing
            assert "duplicate connection" in (dropped.session.close_reason or "")
            # Neither saw the other leave, and the kept connection carries requests.
            assert all(present for _, present, _ in one.owner.changes + two.owner.changes)
            assert (await one.manager.request_file_list(two.id, "g", "1")).game_id == "g"
            assert (await two.manager.request_file_list(one.id, "g", "1")).game_id == "g"

    run(body())


@pytest.mark.parametrize("dialler", ["smaller-id", "larger-id"])
def test_a_new_connection_in_the_same_direction_replaces_the_stale_one(
    tmp_path: Path, dialler: str
) -> None:
    lan = MemoryLan(tmp_path)
    one, two = sorted([lan.peer("alpha"), lan.peer("bravo")], key=lambda p: p.id)
    a, b = (one, two) if dialler == "smaller-id" else (two, one)

    async def body() -> None:
        async with lan.running():
            old = await lan.connect(a, b)
            new = lan.dial(a, b)  # as after a restart that b has not noticed yet
            assert await settled(new) == b.id
            await lan.until_open(2)
            assert a.entry(b).connection is new
            assert set(lan.open_ends()) == {new, b.entry(a).connection}
            assert old.session.close_reason == "duplicate connection"
            assert all(present for _, present, _ in a.owner.changes + b.owner.changes)
            assert (await a.manager.request_file_list(b.id, "g", "1")).game_id == "g"

    run(body())


def test_a_reply_counts_only_from_the_peer_that_was_asked(tmp_path: Path) -> None:
    lan = MemoryLan(tmp_path)
    a, b, c = lan.peer("alpha"), lan.peer("bravo"), lan.peer("charlie")

    async def body() -> None:
        async with lan.running():
            await lan.connect(a, b)
            await lan.connect(c, a)
            b.owner.answer = b.owner.hold
            pending = asyncio.create_task(a.manager.request_file_list(b.id, "doom", "2.1"))
            try:
                await b.owner.until(lambda: bool(b.owner.asked))
                (_, request), *_ = b.owner.asked

                # charlie answers the request alpha sent bravo, with a token of its own.
                forged = replace(listing(request), token=b"charlie".ljust(32, b"."))
                c.entry(a).connection.send_message(forged)
                b.owner.release.set()
                # bravo's answer leaves before the answer to a later request: once that
                # one is back, bravo's is in.
                b.owner.answer = b.owner.list_files
                await a.manager.request_file_list(b.id, "hexen", "1.1")
                assert pending.done()
                assert pending.result().token == b"doom".ljust(32, b".")
            finally:
                pending.cancel()

    run(body())
