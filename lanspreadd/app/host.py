"""What we serve to peers, and how: the peer-facing side of the daemon.

Only games that are Ready at the catalog version, with no operation running on
them, whose chunk hashes are cached for the state they are in, are announced and
served. Hashing happens here, before announcing: a peer waiting for a file list
must never wait for tens of GB to be read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanspreadd.app.config import Config
from lanspreadd.app.sharing import PartialShare, Sharing
from lanspreadd.archive.provider import RarStreamProvider
from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.hashes import CHUNK_SIZE, HashCache
from lanspreadd.core.install import root_archives
from lanspreadd.core.library import Availability, GameState, Library
from lanspreadd.core.operations import OperationTable
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import ArchiveError, Cancelled, NotServable
from lanspreadd.net.dataclient import in_thread
from lanspreadd.net.dataserver import DataServer, Grant, OutboundTransfers
from lanspreadd.net.peers import Peer
from lanspreadd.protocol.messages import (
    FileList,
    FileListRequest,
    StreamInstallGrant,
    StreamInstallRequest,
)

log = logging.getLogger(__name__)


class Host:
    """The `PeerHost` of the peer layer, the data server, and the hashing before serving."""

    def __init__(
        self,
        config: Config,
        library: Library,
        ops: OperationTable,
        refusals: RefusalTally,
        game_changed: Callable[[str], None],
        served_changed: Callable[[], None],
        peer_changed: Callable[[str, Peer | None, str], None],
    ) -> None:
        self.config = config
        self.library = library
        self.ops = ops
        self._game_changed = game_changed
        self._served_changed = served_changed
        self._peer_changed = peer_changed
        self.hashes = HashCache(config.state_dir / "hashes")
        self.sharing = Sharing(config.share_while_downloading, game_changed)
        self.transfers = OutboundTransfers(lambda game_id, _count: game_changed(game_id))
        self.data_server = DataServer(
            self.is_servable,
            self.transfers,
            refusals,
            ConnectionCaps(config.data_connections_per_address, config.data_connections),
            config.upload_limit,
        )
        # Games whose chunk hashes are cached for the state and root they were checked
        # at: only these are announced, so a peer's file list never waits on hashing.
        self._prepared: dict[str, tuple[Path, GameState]] = {}
        self.prepare_wake = asyncio.Event()

    # ---- what is served -----------------------------------------------------------------
    def snapshot(self) -> dict[str, str]:
        """Games we serve now: Ready at the catalog version, hashed, with no operation running."""
        return {
            game_id: state.local_version
            for game_id, state in self.library.states.items()
            if self.serves(game_id, state)
        }

    def offered(self) -> set[str]:
        """Games peers may take from us: whole, or chunks of a download in progress."""
        return set(self.snapshot()) | set(self.sharing.shares)

    def serves(self, game_id: str, state: GameState) -> bool:
        return self._may_serve(game_id, state) and self._hashed(game_id, state)

    def is_servable(self, game_id: str, version: str) -> bool:
        state = self.library.states.get(game_id)
        return state is not None and state.local_version == version and self.serves(game_id, state)

    def _may_serve(self, game_id: str, state: GameState) -> bool:
        """Ready at the catalog version with no operation on it: only hashing is missing."""
        return state.availability is Availability.READY and game_id not in self.ops.jobs

    def _hashed(self, game_id: str, state: GameState) -> bool:
        return self._prepared.get(game_id) == (self.library.game_root(game_id), state)

    # ---- services -----------------------------------------------------------------------
    async def data_channel(self) -> None:
        await self.data_server.start(self.config.listen, self.config.port)
        try:
            await asyncio.Event().wait()
        finally:
            await self.data_server.close()

    async def preparer(self) -> None:
        """Hash Ready games before announcing them, one at a time.

        A first file-list request used to hash the whole game while the peer waited:
        tens of GB take longer than the peer's request timeout, and every peer asking
        at once hashed the same files in parallel.
        """
        while True:
            self.prepare_wake.clear()
            for game_id, state in self._unprepared():
                root = self.library.game_root(game_id)
                if await self._prepare(game_id, root):
                    self._prepared[game_id] = (root, state)
                    self._served_changed()
                    self._game_changed(game_id)
            await self.prepare_wake.wait()

    def _unprepared(self) -> list[tuple[str, GameState]]:
        return [
            (game_id, state)
            for game_id, state in sorted(self.library.states.items())
            if self._may_serve(game_id, state) and not self._hashed(game_id, state)
        ]

    async def _prepare(self, game_id: str, root: Path) -> bool:
        cancel = threading.Event()
        try:
            stale = await in_thread(None, self.hashes.stale_bytes, game_id, root)
            if not stale:
                return True
            log.info("hashing %s before serving it: %d bytes", game_id, stale)
            started = time.monotonic()
            await in_thread(cancel, self.hashes.file_entries, game_id, root, cancel)
        except (OSError, Cancelled) as exc:
            log.info("cannot hash %s for serving yet: %s", game_id, exc)
            return False
        log.info("%s is ready to serve (hashed in %.1f s)", game_id, time.monotonic() - started)
        return True

    # ---- the peer layer's host (PeerHost) -----------------------------------------------
    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList:
        share = self.sharing.share(request.game_id, request.version)
        if share is not None and not self.is_servable(request.game_id, request.version):
            return self._partial_file_list(peer, request, share)
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} {request.version} is not served here now")
        root = self.library.game_root(request.game_id)
        log.info("peer %s asked for the file list of %s", peer.peer_id[:8], request.game_id)
        entries = await asyncio.to_thread(self.hashes.file_entries, request.game_id, root)
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} changed while it was being listed")
        token = self.data_server.issue(
            Grant(peer.peer_id, request.game_id, request.version, root, entries, **_bound(peer))
        )
        return FileList(
            request.request_id, request.game_id, request.version, CHUNK_SIZE, entries, token
        )

    def _partial_file_list(
        self, peer: Peer, request: FileListRequest, share: PartialShare
    ) -> FileList:
        """A download in progress answers with the file list it downloads (never a hash
        of its half-written files), and its grant serves verified chunks only."""
        grant = Grant(
            peer.peer_id, share.game_id, share.version, share.root, share.files, **_bound(peer)
        )
        grant.held = share
        token = self.data_server.issue(grant)
        return FileList(
            request.request_id, share.game_id, share.version, share.chunk_size, share.files, token
        )

    async def stream_grant(self, peer: Peer, request: StreamInstallRequest) -> StreamInstallGrant:
        if not self.is_servable(request.game_id, request.version):
            raise NotServable(f"{request.game_id} {request.version} is not served here now")
        root = self.library.game_root(request.game_id)
        try:
            provider = await asyncio.to_thread(RarStreamProvider, root_archives(root))
        except ArchiveError as exc:
            raise NotServable(f"cannot stream {request.game_id}: {exc}") from exc
        log.info("peer %s asked to stream-install %s", peer.peer_id[:8], request.game_id)
        token = self.data_server.issue(
            Grant(
                peer.peer_id,
                request.game_id,
                request.version,
                root,
                provider=provider,
                **_bound(peer),
            )
        )
        return StreamInstallGrant(request.request_id, provider.total_bytes(), token)

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        if peer is None:
            self.data_server.revoke_peer(peer_id)
        self._peer_changed(peer_id, peer, reason)


def _bound(peer: Peer) -> dict[str, Any]:
    """A grant honoured only from the address of the connection it was issued over,
    and only while that connection lives."""
    connection = peer.connection
    return {"host": peer.host, "alive": lambda: not connection.session.closed}
