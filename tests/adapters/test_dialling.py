"""Made-up mDNS announcements cannot turn a daemon into a packet source.

Two real daemons in this process, on loopback, without mDNS: what discovery would
report is handed to `Daemon.found` directly, as `Discovery` does. The target of the
fake announcements is a UDP socket that never answers and counts what reaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from lanspreadd.app.config import Config
from lanspreadd.app.daemon import Daemon
from lanspreadd.app.logs import LogSink
from lanspreadd.app.views import GameView
from lanspreadd.core.catalog import Catalog
from lanspreadd.core.operations import Job
from lanspreadd.net.peers import Peer
from tests.support import free_port

FAKES = 200
WINDOW = 15  # seconds: a dial's Initial and its retransmissions take 10


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received += 1


def fake(i: int) -> str:
    return f"{i:032x}"


@asynccontextmanager
async def running(tmp_path: Path, name: str) -> AsyncIterator[Daemon]:
    config = Config(
        game_dir=tmp_path / name / "games",
        state_dir=tmp_path / name / "state",
        port=free_port(),
        name=name,
        mdns=False,
        listen="127.0.0.1",
    )
    daemon = Daemon(config, LogSink(None))
    ready = asyncio.Event()
    run = asyncio.create_task(daemon.run(ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([run, waiting], return_when=asyncio.FIRST_COMPLETED)
    assert ready.is_set(), run
    try:
        yield daemon
    finally:
        daemon.stop()
        await run


class PeerWatch:
    """An observer of the daemon: when the peer we wait for has connected."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.connected = asyncio.Event()

    def peer_changed(self, peer_id: str, peer: Peer | None) -> None:
        if peer_id == self.peer_id and peer is not None:
            self.connected.set()

    def game_changed(self, game: GameView) -> None: ...
    def game_removed(self, game_id: str) -> None: ...
    def job_started(self, job: Job) -> None: ...
    def job_progress(self, job: Job) -> None: ...
    def job_finished(self, job: Job) -> None: ...
    def runtime_failed(self, component: str, error: str) -> None: ...
    def status_changed(self, status: str) -> None: ...
    def catalog_adopted(self, catalog: Catalog) -> None: ...


@pytest.mark.slow
def test_fake_announcements_cost_a_few_packets_and_honest_peers_still_connect(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        target_port = free_port()
        transport, counter = await loop.create_datagram_endpoint(
            Counter, local_addr=("127.0.0.1", target_port)
        )
        try:
            async with running(tmp_path, "victim") as victim, running(tmp_path, "honest") as honest:
                for i in range(FAKES):
                    victim.mesh.found(fake(i), "127.0.0.1", target_port)
                watch = PeerWatch(honest.identity.peer_id)
                victim.observers.append(watch)
                victim.mesh.found(honest.identity.peer_id, "127.0.0.1", honest.config.port)
                await watch.connected.wait()
                for _ in range(WINDOW):
                    # Announced again and again, as a hostile responder may.
                    await asyncio.sleep(1)
                    for i in range(FAKES):
                        victim.mesh.found(fake(i), "127.0.0.1", target_port)
                # Two dials (the second 10 s after the first), each an Initial and its
                # retransmissions. Unguarded, each of the 200 ids was dialled: 1,978
                # datagrams in the same window.
                assert 1 <= counter.received <= 2 * 8, counter.received
                assert list(victim.peers.peers) == [honest.identity.peer_id]
                assert victim.refusals.totals["mdns-too-many-peers"] > 0
        finally:
            transport.close()

    asyncio.run(asyncio.wait_for(body(), 120))
