"""A hostile peer that offers forged organiser catalogs, a separate process as on a LAN.

`python -m tests.scenarios.hostile_catalog STATE TARGET_HOST:PORT` connects to the
target with a real PeerManager of its own identity and prints `connected`. Each line
`offer REVISION SIGNER FILE` on its stdin then announces catalog REVISION as signed by
the key with fingerprint SIGNER (the victim's trusted key: fingerprints are public) and
answers a request for it with FILE's bytes, whatever they are; it prints
`asked REVISION` each time the target asks.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import CatalogAnnounce, CatalogDocument, CatalogRequest
from tests.scenarios.hostile import LyingHost
from tests.support import free_port


class ForgingCatalogs:
    """Announces whatever it was told to, and sends the forged document it holds."""

    def __init__(self) -> None:
        self.offer = CatalogAnnounce(0, "")
        self.forgery = b""

    def announcement(self) -> CatalogAnnounce:
        return self.offer

    def heard(self, peer: Peer) -> None:
        pass

    async def document(self, peer: Peer, request: CatalogRequest) -> CatalogDocument:
        print(f"asked {request.revision}", flush=True)
        return CatalogDocument(request.request_id, self.forgery)


async def serve(state: Path, target: str) -> None:
    catalogs = ForgingCatalogs()
    identity = load_or_create(state, "forger")
    manager = PeerManager(
        identity, "forger", "127.0.0.1", free_port(), LyingHost(), RefusalTally(), catalogs=catalogs
    )
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        await manager.connect(host, int(port))
        print("connected", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            _, revision, signer, path = line.split()
            catalogs.forgery = Path(path).read_bytes()
            catalogs.offer = CatalogAnnounce(int(revision), signer)
            manager.send_to_all(catalogs.offer)
        run.cancel()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), sys.argv[2]))
