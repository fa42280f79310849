"""Hostile lanspread peers, each a separate process as it would be on the LAN.

- `lie` (the default): a real PeerManager whose host lies. It announces the game
  at the catalog version, answers file-list requests with a path that climbs out
  of the game (`..`) and sizes no honest peer agrees with, and on request sends
  an oversized frame and malformed JSON on its session.
- `name NAME`: says Hello with a name no sink can take raw (a lone surrogate, a
  NUL, terminal escapes), then falls silent; prints how the target answered.
- `data-flood HOST PORT COUNT`: opens COUNT TCP connections to a data port as
  fast as it can, holds them until its stdin closes, and prints how many the
  target accepted and how many it closed at once.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import PeerError
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.codec import HEADER
from lanspreadd.protocol.messages import (
    FileEntry,
    FileList,
    FileListRequest,
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


def hostile_manager(state: Path, name: str) -> PeerManager:
    identity = load_or_create(state, "hostile")
    return PeerManager(identity, name, "127.0.0.1", free_port(), LyingHost(), RefusalTally())


async def say_hello_as(state: Path, target: str, name: str) -> str:
    """Connect under `name`, which the protocol must refuse, and report the answer."""
    manager = hostile_manager(state, name)
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        try:
            await manager.connect(host, int(port))
            outcome = "connected"
        except PeerError as exc:
            outcome = f"refused: {exc}"
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


async def serve(state: Path, target: str) -> None:
    manager = hostile_manager(state, "hostile")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        peer_id = await manager.connect(host, int(port))
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
def hostile_process(module: str, state: Path, target: Daemon) -> Iterator[subprocess.Popen[str]]:
    """A hostile peer (`python -m module STATE HOST:PORT`) connected to `target`: it says
    "connected" once authenticated, takes commands on stdin and is killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(state), f"127.0.0.1:{target.port}"],
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


def main(argv: list[str]) -> None:
    mode, args = (argv[0], argv[1:]) if argv[0] in ("lie", "name", "data-flood") else ("lie", argv)
    if mode == "lie":
        asyncio.run(serve(Path(args[0]), args[1]))
    elif mode == "name":
        name = args[2].encode().decode("unicode_escape")  # passed escaped: argv takes no NUL
        print(asyncio.run(say_hello_as(Path(args[0]), args[1], name)), flush=True)
    else:
        data_flood(args[0], int(args[1]), int(args[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
