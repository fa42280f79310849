"""Hostile lanspread peers, each a separate process as it would be on the LAN.

- `lie` (the default): a real PeerManager whose host lies. It announces the game
  at the catalog version, answers file-list requests with a path that climbs out
  of the game (`..`) and sizes no honest peer agrees with, and on request sends
  an oversized frame and malformed JSON on its session.
- `name NAME`: says Hello with a name no sink can take raw (a lone surrogate, a
  NUL, terminal escapes), then falls silent; prints how the target answered
  (`refused: ...` when the target closed the connection, `unanswered: ...` when the
  dial never reached it).
- `data-flood HOST PORT COUNT`: opens COUNT TCP connections to a data port as
  fast as it can, holds them until its stdin closes, and prints how many the
  target accepted and how many it closed at once.
- `swarm-liar STATE SOURCE RECEIVER...`: a receiver of the swarm that lies. It asks
  SOURCE for the game's real file list as any peer would, then tells every peer it
  connects to (the RECEIVERs) that it holds every chunk of that list (a full ChunkMap
  with the real fingerprint), hands out that list and a data-channel token when asked,
  and answers every chunk request with garbage of the right length. Prints
  "connected" once it has told all of them, then the number of chunks it served for
  each line read on stdin.
- `exchange-liar STATE TARGET`: connects to TARGET and tells it, as a neighbour in the
  bounded mesh would, of 32 peers that hold the game: made-up ids on addresses where
  nothing answers. Prints "connected", then stays until its stdin closes.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from lanspreadd.core.held import ChunkNumbers
from lanspreadd.core.identity import load_or_create
from lanspreadd.core.plan import fingerprint
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import NotServable, PeerError
from lanspreadd.net.peers import Peer, PeerHost, PeerManager
from lanspreadd.protocol.codec import HEADER
from lanspreadd.protocol.datachannel import (
    GREETING_LEN,
    OK,
    REQUEST,
    decode_greeting,
    decode_request,
    encode_reply_header,
)
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import (
    MAX_EXCHANGED,
    ChunkMap,
    ExchangedPeer,
    FileEntry,
    FileList,
    FileListRequest,
    PeerExchange,
    Snapshot,
    StreamInstallGrant,
    StreamInstallRequest,
)
from tests.support import Daemon, free_port, wait_for

GAME = "sample-game"


class LyingHost:
    def snapshot(self) -> dict[str, str]:
        return {GAME: "1.0"}

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        pass

    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList:
        files = (
            FileEntry("../escape", 10, ("0" * 64,)),
            FileEntry("version.ini", 4, ("1" * 64,)),
        )
        return FileList(request.request_id, GAME, request.version, 1 << 20, files, b"t" * 32)

    async def stream_grant(self, peer: Peer, request: StreamInstallRequest) -> StreamInstallGrant:
        return StreamInstallGrant(request.request_id, 1 << 40, b"t" * 32)


def hostile_manager(
    state: Path, name: str, host: PeerHost | None = None, listen: str = "127.0.0.1"
) -> PeerManager:
    """Our dials leave from `listen` when it is a specific address: in a namespace of
    its own, where 127.0.0.1 reaches nobody, the hostile listens on the wildcard."""
    identity = load_or_create(state, "hostile")
    return PeerManager(identity, name, listen, free_port(), host or LyingHost(), RefusalTally())


class SwarmLiarHost:
    """Holds nothing, says it holds every chunk: it hands out the real file list (so it
    passes the fingerprint check a partial holder must pass) and serves garbage."""

    def __init__(self) -> None:
        self.listing: FileList | None = None
        self.tokens: set[bytes] = set()
        self.served = 0  # corrupt chunks sent

    def snapshot(self) -> dict[str, str]:
        return {}  # not a complete holder: it never votes, it joins as a partial one

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        pass

    def full_map(self) -> ChunkMap:
        listing = self.listing
        assert listing is not None
        numbers = ChunkNumbers(listing.files)
        bits = numbers.bits(numbers.keys)
        return ChunkMap(GAME, listing.version, fingerprint(listing), numbers.count, bits)

    async def file_list(self, peer: Peer, request: FileListRequest) -> FileList:
        listing = self.listing
        if listing is None or (request.game_id, request.version) != (GAME, listing.version):
            raise NotServable(f"{request.game_id} is not here")
        token = secrets.token_bytes(32)
        self.tokens.add(token)
        return FileList(
            request.request_id, GAME, listing.version, listing.chunk_size, listing.files, token
        )

    async def stream_grant(self, peer: Peer, request: StreamInstallRequest) -> StreamInstallGrant:
        raise NotServable("no stream installs from a liar")

    async def serve_data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The data channel: a valid token, then garbage for every chunk asked."""
        try:
            if decode_greeting(await reader.readexactly(GREETING_LEN)) not in self.tokens:
                return
            while True:
                request = decode_request(await reader.readexactly(REQUEST.size))
                writer.write(encode_reply_header(OK, request.length))
                writer.write(b"\xa5" * request.length)
                await writer.drain()
                self.served += 1
        except (OSError, asyncio.IncompleteReadError, RemoteProtocolError):
            pass
        finally:
            writer.close()


async def swarm_liar(state: Path, source: str, receivers: list[str]) -> None:
    """Take the real file list from `source`, then tell `receivers` we hold all of it."""
    host = SwarmLiarHost()
    manager = hostile_manager(state, "hostile", host)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(manager.run())
        await manager.ready.wait()
        data = await asyncio.start_server(host.serve_data, manager.host, manager.port)
        source_host, source_port = source.rsplit(":", 1)
        source_id = await manager.connect(source_host, int(source_port))
        # Whoever holds the game hands its file list to any peer that asks.
        host.listing = await manager.request_file_list(source_id, GAME, "1.0")
        full = host.full_map()
        manager.hooks.chunk_maps = lambda: [full]  # told to every peer as it connects
        for receiver in receivers:
            peer_host, peer_port = receiver.rsplit(":", 1)
            await manager.connect(peer_host, int(peer_port))
        print("connected", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(f"served {host.served}", flush=True)
        data.close()
        raise SystemExit(0)


async def exchange_liar(state: Path, target: str) -> None:
    """Name made-up holders of the game to `target`, on ports where nothing listens."""
    async with connected_to(state, target) as (manager, peer_id):
        fakes = tuple(
            ExchangedPeer(secrets.token_hex(16), "127.0.0.1", free_port(), (GAME,))
            for _ in range(MAX_EXCHANGED)
        )
        manager.peers[peer_id].connection.send_message(PeerExchange(fakes))
        print("connected", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            pass
        raise SystemExit(0)


async def say_hello_as(state: Path, target: str, name: str) -> str:
    """Connect under `name`, which the protocol must refuse, and report the answer:
    "refused" only if the target closed the connection itself, else "unanswered"."""
    manager = hostile_manager(state, name, listen="0.0.0.0")  # noqa: S104 (a netns of its own)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        try:
            await manager.connect(host, int(port))
            outcome = "connected"
        except PeerError as exc:
            # The target's own close carries its reason after "HOST:PORT: "; a dial that
            # never reached it says "no lanspread peer answered" or "cannot connect".
            refused = str(exc).startswith(f"{host}:{int(port)}: ")
            outcome = f"{'refused' if refused else 'unanswered'}: {exc}"
        run.cancel()
    return outcome


def data_flood(host: str, port: int, count: int) -> None:
    """Open `count` connections at once and hold them; report what the target did."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    held: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    # A refused connection is closed by the target without a word: it reads EOF or reset.
    time.sleep(1)
    closed = 0
    for sock in held:
        sock.setblocking(False)
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(f"opened {len(held)} closed {closed}", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


@asynccontextmanager
async def connected_to(state: Path, target: str) -> AsyncIterator[tuple[PeerManager, str]]:
    """A hostile PeerManager running, connected to `target` (HOST:PORT) as a peer."""
    manager = hostile_manager(state, "hostile")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        yield manager, await manager.connect(host, int(port))


async def serve(state: Path, target: str) -> None:
    async with connected_to(state, target) as (manager, peer_id):
        print("connected", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            conn = manager.peers[peer_id].connection
            assert conn.stream_id is not None
            # A well-formed snapshot, then malformed JSON, then a 1 GiB frame header.
            conn.send_message(Snapshot({GAME: "1.0"}))
            conn._quic.send_stream_data(conn.stream_id, HEADER.pack(5, 4) + b"{oops")
            conn._quic.send_stream_data(conn.stream_id, HEADER.pack(1 << 30, 4))
            conn.transmit()  # the loop goes on sending while the next line is awaited
            print("flooded", flush=True)
        raise SystemExit(0)


class HostilePeer:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def flood(self, receiver: Daemon) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("flood\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "flooded"
        wait_for(lambda: "protocol error" in receiver.stderr(), 10, "the receiver to cut us off")


@contextmanager
def hostile_process(
    module: str, state: Path, target: Daemon, *others: Daemon, mode: str = ""
) -> Iterator[subprocess.Popen[str]]:
    """A hostile peer (`python -m module [MODE] STATE HOST:PORT...`) connected to `target`
    (and `others`): it says "connected" once authenticated, takes commands on stdin and
    is killed at the end."""
    addresses = [f"{d.listen}:{d.port}" for d in (target, *others)]
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *([mode] if mode else []), str(state), *addresses],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "connected", line
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def run_hostile_peer(state: Path, target: Daemon) -> Iterator[HostilePeer]:
    with hostile_process("tests.scenarios.hostile", state, target) as proc:
        yield HostilePeer(proc)


class SwarmLiar:
    """The running `swarm-liar` process, asked how many chunks it has served."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def served(self) -> int:
        """Corrupt chunks it has sent so far."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("served\n")
        self.proc.stdin.flush()
        word, count = self.proc.stdout.readline().split()
        assert word == "served", word
        return int(count)


@contextmanager
def run_swarm_liar(state: Path, source: Daemon, receivers: list[Daemon]) -> Iterator[SwarmLiar]:
    """The lying swarm member: it takes the file list from `source` and tells every one
    of `receivers` that it holds all of it."""
    with hostile_process(
        "tests.scenarios.hostile", state, source, *receivers, mode="swarm-liar"
    ) as proc:
        yield SwarmLiar(proc)


@contextmanager
def run_exchange_liar(state: Path, target: Daemon) -> Iterator[subprocess.Popen[str]]:
    with hostile_process("tests.scenarios.hostile", state, target, mode="exchange-liar") as proc:
        yield proc


MODES = ("lie", "name", "data-flood", "swarm-liar", "exchange-liar")


def main(argv: list[str]) -> None:
    mode, args = (argv[0], argv[1:]) if argv[0] in MODES else ("lie", argv)
    if mode == "lie":
        asyncio.run(serve(Path(args[0]), args[1]))
    elif mode == "swarm-liar":
        asyncio.run(swarm_liar(Path(args[0]), args[1], args[2:]))
    elif mode == "exchange-liar":
        asyncio.run(exchange_liar(Path(args[0]), args[1]))
    elif mode == "name":
        name = args[2].encode().decode("unicode_escape")  # passed escaped: argv takes no NUL
        print(asyncio.run(say_hello_as(Path(args[0]), args[1], name)), flush=True)
    else:
        data_flood(args[0], int(args[1]), int(args[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
