"""No exception from one peer's request can stop the peer service.

Two real PeerManagers talk over real QUIC on loopback. The serving side's host
(the layer above the peer manager, faked here: this is an adapter test of the
peer layer) fails each handler with OSError, as running out of descriptors or a
vanished file would. The manager must answer each request with a named error,
drop at most the connection involved, and keep serving everyone else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import PeerError
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import (
    FileList,
    FileListRequest,
    StreamInstallGrant,
    StreamInstallRequest,
)
from tests.support import free_port

GAME = "sample-game"


class FaultyHost:
    """Raises OSError from the handlers named in `failing`; otherwise answers."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.changes: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        if what in self.failing:
            raise OSError(24, "Too many open files")

    def snapshot(self) -> dict[str, str]:
        self._maybe_fail("snapshot")
        return {GAME: "1.0"}

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        self.changes.append(reason)
        self._maybe_fail("peer_changed")

    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList:
        self._maybe_fail("file_list")
        return FileList(request.request_id, GAME, request.version, 1 << 20, (), b"t" * 32)

    async def stream_grant(self, peer: Peer, request: StreamInstallRequest) -> StreamInstallGrant:
        self._maybe_fail("stream_grant")
        return StreamInstallGrant(request.request_id, 0, b"t" * 32)


def manager(tmp_path: Path, name: str, host: FaultyHost, tally: RefusalTally) -> PeerManager:
    identity = load_or_create(tmp_path / name, name)
    return PeerManager(identity, name, "127.0.0.1", free_port(), host, tally)


async def connect_and_ask(client: PeerManager, port: int) -> None:
    peer_id = await client.connect("127.0.0.1", port)
    await client.request_file_list(peer_id, GAME, "1.0")


@pytest.mark.parametrize("failing", ["file_list", "stream_grant", "peer_changed", "snapshot"])
def test_an_oserror_in_a_peer_handler_never_stops_the_server(tmp_path: Path, failing: str) -> None:
    lines: list[str] = []
    tally = RefusalTally(emit=lines.append)
    server_host = FaultyHost({failing})
    server = manager(tmp_path, "server", server_host, tally)
    honest = FaultyHost(set())

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tg:
            served = tg.create_task(server.run())
            await server.ready.wait()
            for round_ in range(2):  # a second client after the first one's trouble
                client = manager(tmp_path, f"client{round_}", honest, RefusalTally())
                run = tg.create_task(client.run())
                await client.ready.wait()
                if failing in ("file_list", "stream_grant"):
                    peer_id = await client.connect("127.0.0.1", server.port)
                    asks: list[Callable[[str, str, str], Awaitable[object]]] = [
                        client.request_file_list,
                        client.request_stream_install,
                    ]
                    fail, work = asks if failing == "file_list" else reversed(asks)
                    with pytest.raises(PeerError, match="could not answer"):
                        await fail(peer_id, GAME, "1.0")
                    # The connection that met the failure goes on being served.
                    await work(peer_id, GAME, "1.0")
                else:
                    # Failing while a peer connects may cost that connection, no more.
                    with pytest.raises(PeerError, match="internal error"):
                        await connect_and_ask(client, server.port)
                run.cancel()
                assert not served.done(), "the peer service stopped"
            served.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    if failing in ("file_list", "stream_grant"):
        assert tally.totals["request-failed-OSError"] == 2
        assert len(lines) == 1 and "Too many open files" in lines[0]
