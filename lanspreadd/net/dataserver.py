"""The data channel's server: token grants, chunk requests answered with sendfile,
stream installs, the upload limit and the count of outbound transfers per game.

What may be served is decided above (the app's host): here a grant names the files,
and every request is checked against it and against `is_servable` again. Transfers
register before that check, so a writer that cancels a game's transfers never
misses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lanspreadd.archive.provider import StreamInstallProvider, TreeEntry
from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.mesh import MAX_PEERS
from lanspreadd.core.paths import check_relative_path
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import ArchiveError
from lanspreadd.net.ratelimit import RateLimiter
from lanspreadd.protocol import stream
from lanspreadd.protocol.datachannel import (
    BAD_REQUEST,
    BUSY,
    GREETING_LEN,
    NOT_HELD,
    NOT_SERVABLE,
    OK,
    REQUEST,
    ChunkRequest,
    decode_greeting,
    decode_request,
    encode_reply_header,
)
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import FileEntry

log = logging.getLogger(__name__)

GRANTS_KEPT = 2  # per peer and game: a download in progress and its successor
GREETING_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0  # an authorised connection that asks for nothing this long is closed
# Chunks sent or waiting for the upload limit at once; more are answered BUSY. With a
# deep queue, a flash crowd's receivers all wait on the source for chunks they chose
# long ago, and none is whole (and servable by its receiver) until late.
UPLOAD_SLOTS = 4
# A chunk a complete holder sent to one peer is refused to another for a while (as
# NOT_HELD: "take it from the one that has it"): the one that got it serves it on within
# a second or two, and our upload goes to chunks nobody else has (BitTorrent's
# super-seeding). 3 s while no more peers ask us than a mesh keeps (ASKERS_PER_HOP);
# longer with more, up to 12 s: in a bounded mesh they are hops away from the one that
# got it. A 32-receiver flash crowd's source sent 1.56-1.68 copies with 3 s and 1.08
# with 10 s (1.83-2.07 and 1.71 times the ideal); 8 receivers took 2.11 times the ideal
# with 10 s (1.43-1.58 with 3 s): the last chunks waited.
SENT_ELSEWHERE = 3.0
SENT_ELSEWHERE_MAX = 12.0
ASKERS_PER_HOP = MAX_PEERS  # a mesh's worth of peers, all neighbours of one another
ASKED_WITHIN = 10.0  # a peer that asked us for a chunk this recently counts as asking
SENT_KEPT = 4096  # chunks remembered before the old ones are forgotten


def sent_elsewhere(askers: int) -> float:
    """Seconds a chunk sent to one peer is refused to others, with `askers` peers asking
    us for chunks lately."""
    return min(SENT_ELSEWHERE_MAX, SENT_ELSEWHERE * max(1.0, askers / ASKERS_PER_HOP))


class FrameProducer:
    """Turns a provider's entries into stream frames in bounded batches (worker thread)."""

    BATCH = 4 << 20

    def __init__(self, entries: Generator[tuple[TreeEntry, Iterator[bytes]], None, None]):
        self.entries = entries
        self.files = 0
        self.total = 0
        self._pieces: Iterator[bytes] | None = None
        self._crc = 0

    def next_batch(self) -> bytes | None:
        """Up to about BATCH bytes of frames; None when the tree is complete."""
        out = bytearray()
        while len(out) < self.BATCH:
            if self._pieces is None:
                try:
                    entry, pieces = next(self.entries)
                except StopIteration:
                    return bytes(out) if out else None
                if entry.is_dir:
                    out += stream.encode(stream.Dir(entry.path, entry.mode))
                    continue
                if entry.copy_of is not None:
                    # The receiver copies a file it has: its bytes count, none are sent.
                    out += stream.encode(stream.Copy(entry.path, entry.copy_of, entry.mode))
                    self.files += 1
                    self.total += entry.size
                    continue
                out += stream.encode(stream.FileStart(entry.path, entry.size, entry.mode))
                self._pieces, self._crc = pieces, 0
            piece = next(self._pieces, None)
            if piece is None:
                out += stream.encode(stream.FileEnd(self._crc))
                self._pieces = None
                self.files += 1
                continue
            self._crc = zlib.crc32(piece, self._crc)
            self.total += len(piece)
            out += stream.encode(stream.Data(piece))
        return bytes(out)

    def close(self) -> None:
        self.entries.close()


class HeldChunks(Protocol):
    """What a peer still downloading a game serves: only the chunks it has verified."""

    def serving(self) -> bool: ...
    def holds(self, file_index: int, offset: int, length: int) -> bool: ...
    def in_memory(self, file_index: int) -> bytes | None: ...


@dataclass
class Grant:
    """What a data-channel token allows: one peer reading one game's listed files,
    or (with a provider) pulling its installed tree once as a stream install.

    A token is no bearer token: it is honoured only from the address of the QUIC
    connection it was issued over, and only while that connection lives (`alive`).
    """

    peer_id: str
    game_id: str
    version: str
    root: Path
    files: tuple[FileEntry, ...] = ()
    provider: StreamInstallProvider | None = None
    host: str = ""  # the issuing connection's remote address; "" takes any (tests)
    alive: Callable[[], bool] = lambda: True
    held: HeldChunks | None = None  # a download in progress: its verified chunks only


@dataclass
class OutboundTransfers:
    """Live data connections per game, so writers can cancel them and wait."""

    on_change: Callable[[str, int], None] = lambda _g, _n: None
    _by_game: dict[str, set[asyncio.Task[None]]] = field(default_factory=dict)
    _drained: dict[str, asyncio.Event] = field(default_factory=dict)

    def register(self, game_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._by_game.setdefault(game_id, set())
        if task not in tasks:
            tasks.add(task)
            self._drained.setdefault(game_id, asyncio.Event()).clear()
            self.on_change(game_id, len(tasks))

    def unregister(self, game_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._by_game.get(game_id)
        if tasks is None or task not in tasks:
            return
        tasks.discard(task)
        self.on_change(game_id, len(tasks))
        if not tasks:
            del self._by_game[game_id]
            self._drained.setdefault(game_id, asyncio.Event()).set()

    def count(self, game_id: str) -> int:
        return len(self._by_game.get(game_id, ()))

    async def cancel_and_drain(self, game_id: str) -> None:
        tasks = list(self._by_game.get(game_id, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await self._drained.setdefault(game_id, asyncio.Event()).wait()


class DataServer:
    """The TCP bulk channel: token-authorised chunk requests answered with sendfile."""

    def __init__(
        self,
        is_servable: Callable[[str, str], bool],
        transfers: OutboundTransfers,
        refusals: RefusalTally,
        caps: ConnectionCaps,
        upload_limit: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        upload_slots: int = UPLOAD_SLOTS,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.upload_slots = upload_slots
        self._uploading = 0
        self._asked: dict[str, float] = {}  # peer -> when it last asked for a chunk
        self._sent: dict[tuple[str, int, int], tuple[str, float]] = {}  # chunk: peer, when
        self.is_servable = is_servable
        self.transfers = transfers
        self.refusals = refusals
        self.caps = caps
        self.limiter = RateLimiter(upload_limit)
        self.grants: dict[bytes, Grant] = {}
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # Each token in use, with its grant (a stream install's is spent at once) and the
        # data connections serving it, so a revocation reaches them.
        self._serving: dict[bytes, tuple[Grant, set[asyncio.Task[None]]]] = {}

    def issue(self, grant: Grant) -> bytes:
        """A new token; older ones of the same peer for the same game lapse, so a
        long party does not pile up grants."""
        same = [
            t
            for t, g in self.grants.items()
            if g.peer_id == grant.peer_id
            and g.game_id == grant.game_id
            and (g.provider is None) == (grant.provider is None)
        ]
        for token in same[: max(0, len(same) - (GRANTS_KEPT - 1))]:
            del self.grants[token]
        token = secrets.token_bytes(32)
        self.grants[token] = grant
        return token

    def revoke_peer(self, peer_id: str) -> None:
        """A peer that left loses its tokens and, at once, its open data connections."""
        for token, grant in list(self.grants.items()):
            if grant.peer_id == peer_id:
                del self.grants[token]
        for grant, tasks in self._serving.values():
            if grant.peer_id == peer_id:
                for task in tasks:
                    task.cancel()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=5)
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]).removeprefix("::ffff:") if peer else "?"
        refused = self.caps.admit(address)
        if refused is not None:
            self.refusals.note(f"data-{refused}", f"a data connection from {address}")
            writer.transport.abort()  # no goodbye: the descriptor is what we protect
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        grant: Grant | None = None
        token = b""
        try:
            greeting = await asyncio.wait_for(reader.readexactly(GREETING_LEN), GREETING_TIMEOUT)
            token = decode_greeting(greeting)
            grant = self.grants.get(token)
            refused = self._check(grant, address)
            if refused is not None:
                self.refusals.note(refused, f"a data connection from {address}")
                grant = None
                return
            assert grant is not None
            self._serving.setdefault(token, (grant, set()))[1].add(task)
            self.transfers.register(grant.game_id, task)
            if grant.provider is not None:
                del self.grants[token]  # a stream install is pulled once
                await self._stream_install(grant, grant.provider, writer)
                return
            while True:
                try:
                    request = reader.readexactly(REQUEST.size)
                    raw = await asyncio.wait_for(request, self.idle_timeout)
                except asyncio.IncompleteReadError:
                    return
                except TimeoutError:
                    self.refusals.note("data-idle", f"a data connection from {address}")
                    return
                await self._serve_chunk(token, grant, decode_request(raw), writer)
        except (RemoteProtocolError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            log.debug("data connection closed: %s", exc)
        except asyncio.CancelledError:
            log.debug("data connection for %s cancelled", grant.game_id if grant else "?")
        except Exception as exc:
            # Our bug, met by one connection: it ends, the server keeps accepting.
            self.refusals.note(f"data-failed-{type(exc).__name__}", f"serving {address}: {exc}")
        finally:
            self.caps.release(address)
            if grant is not None:
                self.transfers.unregister(grant.game_id, task)
                self._forget(token, task)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _check(self, grant: Grant | None, address: str) -> str | None:
        """Why a greeting's token is not honoured from `address`, or None."""
        if grant is None:
            return "data-unknown-token"
        if grant.host and grant.host != address:
            return "data-token-from-another-address"
        if not grant.alive():
            return "data-token-of-a-closed-connection"
        return None

    def _forget(self, token: bytes, task: asyncio.Task[None]) -> None:
        serving = self._serving.get(token)
        if serving is not None:
            serving[1].discard(task)
            if not serving[1]:
                del self._serving[token]

    async def _serve_chunk(
        self, token: bytes, grant: Grant, request: ChunkRequest, writer: asyncio.StreamWriter
    ) -> None:
        # This token, not any grant for the game: a revoked token serves nothing more.
        valid = self.grants.get(token) is grant and grant.alive()
        held = grant.held
        servable = (
            held.serving() if held is not None else self.is_servable(grant.game_id, grant.version)
        )
        if not valid or not servable:
            await self._refuse(writer, NOT_SERVABLE, f"{grant.game_id} is not served right now")
            raise RemoteProtocolError("game no longer servable")
        if request.file_index >= len(grant.files):
            await self._refuse(writer, BAD_REQUEST, "no such file")
            raise RemoteProtocolError("bad file index")
        entry = grant.files[request.file_index]
        if request.offset + request.length > entry.size:
            await self._refuse(writer, BAD_REQUEST, "range outside the file")
            raise RemoteProtocolError("bad range")
        if held is not None and not held.holds(request.file_index, request.offset, request.length):
            await self._refuse(writer, NOT_HELD, "that chunk is not here yet")
            return
        if self._uploading >= self.upload_slots:
            await self._refuse(writer, BUSY, "every upload slot is taken")
            return
        if held is None and self._sent_to_another(grant, request):
            await self._refuse(writer, NOT_HELD, "sent to another peer just now: ask it")
            return
        path = grant.root.joinpath(*check_relative_path(entry.path).parts)
        self._uploading += 1
        try:
            data = held.in_memory(request.file_index) if held is not None else None
            if data is not None:  # verified, not yet on disk (version.ini)
                await self._reply_ok(writer, request, len(data), entry.size)
                writer.write(data[request.offset : request.offset + request.length])
                await writer.drain()
                return
            with path.open("rb") as fh:
                await self._reply_ok(writer, request, os.fstat(fh.fileno()).st_size, entry.size)
                loop = asyncio.get_running_loop()
                await loop.sendfile(writer.transport, fh, request.offset, request.length)
        finally:
            self._uploading -= 1

    async def _reply_ok(
        self, writer: asyncio.StreamWriter, request: ChunkRequest, size: int, listed: int
    ) -> None:
        """The file still the size its grant lists, the upload limit paid: OK goes out."""
        if size != listed:
            await self._refuse(writer, NOT_SERVABLE, "file changed")
            raise RemoteProtocolError("file changed under the grant")
        await self.limiter.take(request.length)
        writer.write(encode_reply_header(OK, request.length))

    def _sent_to_another(self, grant: Grant, request: ChunkRequest) -> bool:
        """Was this chunk sent to another peer within `sent_elsewhere`? Notes it as ours."""
        now = asyncio.get_running_loop().time()
        self._asked[grant.peer_id] = now
        if len(self._asked) > ASKERS_PER_HOP:
            self._asked = {p: t for p, t in self._asked.items() if now - t < ASKED_WITHIN}
        key = (grant.game_id, request.file_index, request.offset)
        last = self._sent.get(key)
        window = sent_elsewhere(len(self._asked))
        if last is not None and last[0] != grant.peer_id and now - last[1] < window:
            return True
        if len(self._sent) > SENT_KEPT:
            self._sent = {k: v for k, v in self._sent.items() if now - v[1] < SENT_ELSEWHERE_MAX}
        self._sent[key] = (grant.peer_id, now)
        return False

    async def _stream_install(
        self, grant: Grant, provider: StreamInstallProvider, writer: asyncio.StreamWriter
    ) -> None:
        """Unpack the game's archives once, in order, and send the tree as frames."""
        producer = FrameProducer(provider.entries())
        try:
            while True:
                if not self.is_servable(grant.game_id, grant.version):
                    writer.write(stream.encode(stream.StreamError("the game is no longer served")))
                    return
                batch = await asyncio.to_thread(producer.next_batch)
                if batch is None:
                    break
                await self.limiter.take(len(batch))
                writer.write(batch)
                await writer.drain()
            writer.write(stream.encode(stream.End(producer.files, producer.total)))
            await writer.drain()
            log.info(
                "streamed %s to %s: %d files, %d bytes",
                grant.game_id,
                grant.peer_id[:8],
                producer.files,
                producer.total,
            )
        except ArchiveError as exc:
            log.warning("stream install of %s failed here: %s", grant.game_id, exc)
            writer.write(stream.encode(stream.StreamError(str(exc))))
            await writer.drain()
        finally:
            await asyncio.to_thread(producer.close)

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        data = reason.encode()[:1024]
        writer.write(encode_reply_header(status, len(data)) + data)
        await writer.drain()
