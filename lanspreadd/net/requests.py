"""Our requests to peers awaiting their replies, matched by request id.

A reply is accepted only from the peer that was asked; a peer that leaves fails
every request it still owed, at once, with the reason it left. `Requester` is what
the peer table offers the rest of the daemon: each request with its reply's type.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TypeVar

from lanspreadd.errors import PeerError
from lanspreadd.protocol.messages import (
    CatalogDocument,
    CatalogRequest,
    ErrorReply,
    FileList,
    FileListRequest,
    Message,
    StreamInstallGrant,
    StreamInstallRequest,
)

REQUEST_TIMEOUT = 60.0

Reply = FileList | StreamInstallGrant | CatalogDocument | ErrorReply
Answer = TypeVar("Answer", bound=Message)


class PendingRequests:
    def __init__(self) -> None:
        self._pending: dict[int, tuple[str, asyncio.Future[Message]]] = {}
        self._ids = itertools.count(1)

    def open(self, peer_id: str) -> tuple[int, asyncio.Future[Message]]:
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (peer_id, future)
        return request_id, future

    async def ask(
        self,
        peer_id: str,
        peer_name: str,
        send: Callable[[Message], None],
        build: Callable[[int], Message],
        kind: type[Answer],
    ) -> Answer:
        """Send the request `build` makes with a fresh id; its reply, of type `kind`."""
        request_id, future = self.open(peer_id)
        request = build(request_id)
        send(request)
        what = type(request).__name__
        reply = await self.wait(
            request_id, future, f"{peer_name} did not answer the {what} in time"
        )
        if not isinstance(reply, kind):
            raise PeerError(f"peer {peer_id[:8]} answered a {what} oddly")
        return reply

    async def wait(self, request_id: int, future: asyncio.Future[Message], late: str) -> Message:
        """The reply; PeerError(`late`) when none comes within REQUEST_TIMEOUT."""
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            raise PeerError(late) from None
        finally:
            self._pending.pop(request_id, None)

    def reply(self, peer_id: str, peer_name: str, message: Reply) -> None:
        """Settle the request this reply answers, if `peer_id` is who was asked: a reply
        from anyone else (guessing the next id) must not cost the real one its answer."""
        pending = self._pending.get(message.request_id)
        if pending is None or pending[0] != peer_id or pending[1].done():
            return
        del self._pending[message.request_id]
        if isinstance(message, ErrorReply):
            pending[1].set_exception(PeerError(f"{peer_name}: {message.message}"))
        else:
            pending[1].set_result(message)

    def peer_left(self, peer_id: str, why: str) -> None:
        for request_id, (owner, future) in list(self._pending.items()):
            if owner == peer_id:
                del self._pending[request_id]
                if not future.done():
                    future.set_exception(PeerError(why))


class Requester:
    """Typed requests to peers; the peer table below says who is connected."""

    def __init__(self) -> None:
        self._requests = PendingRequests()

    def _connected(self, peer_id: str) -> tuple[str, Callable[[Message], None]]:
        """The peer's name and how to send it a message; PeerError if it is not there."""
        raise NotImplementedError

    async def request_file_list(self, peer_id: str, game_id: str, version: str) -> FileList:
        return await self._request(
            peer_id, lambda rid: FileListRequest(rid, game_id, version), FileList
        )

    async def request_stream_install(
        self, peer_id: str, game_id: str, version: str
    ) -> StreamInstallGrant:
        return await self._request(
            peer_id, lambda rid: StreamInstallRequest(rid, game_id, version), StreamInstallGrant
        )

    async def request_catalog(self, peer_id: str, revision: int) -> bytes:
        """The signed catalog a peer announced (at `revision` or newer), unverified."""
        reply = await self._request(
            peer_id, lambda rid: CatalogRequest(rid, revision), CatalogDocument
        )
        return reply.document

    async def _request(
        self, peer_id: str, build: Callable[[int], Message], kind: type[Answer]
    ) -> Answer:
        name, send = self._connected(peer_id)
        return await self._requests.ask(peer_id, name, send, build, kind)
