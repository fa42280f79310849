"""Our requests to peers awaiting their replies, matched by request id.

A reply is accepted only from the peer that was asked; a peer that leaves fails
every request it still owed, at once, with the reason it left.
"""

from __future__ import annotations

import asyncio
import itertools

from lanspreadd.errors import PeerError
from lanspreadd.protocol.messages import ErrorReply, FileList, Message, StreamInstallGrant

REQUEST_TIMEOUT = 60.0

Reply = FileList | StreamInstallGrant | ErrorReply


class PendingRequests:
    def __init__(self) -> None:
        self._pending: dict[int, tuple[str, asyncio.Future[Message]]] = {}
        self._ids = itertools.count(1)

    def open(self, peer_id: str) -> tuple[int, asyncio.Future[Message]]:
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (peer_id, future)
        return request_id, future

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
