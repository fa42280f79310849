"""A hostile lanspread peer: a real PeerManager whose host lies, plus raw bad frames.

It announces the game at the catalog version, answers file-list requests with a
path that climbs out of the game (`..`) and sizes no honest peer agrees with,
and on request sends an oversized frame and malformed JSON on its session.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lanspreadd.identity import load_or_create
from lanspreadd.peers import Peer, PeerManager
from lanspreadd.protocol.codec import HEADER
from lanspreadd.protocol.messages import (
    FileEntry,
    FileList,
    FileListRequest,
    Snapshot,
    StreamInstallGrant,
    StreamInstallRequest,
)
from lanspreadd.refusals import RefusalTally
from tests.support import Daemon, free_port

GAME = "sample-game"


class LyingHost:
    def snapshot(self) -> dict[str, str]:
        return {GAME: "1.0"}

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str) -> None:
        pass

    async def file_list(self, peer_id: str, request: FileListRequest) -> FileList:
        files = (
            FileEntry("../escape", 10, ("0" * 64,)),
            FileEntry("version.ini", 4, ("1" * 64,)),
        )
        return FileList(request.request_id, GAME, request.version, 1 << 20, files, b"t" * 32)

    async def stream_grant(self, peer_id: str, request: StreamInstallRequest) -> StreamInstallGrant:
        return StreamInstallGrant(request.request_id, 1 << 40, b"t" * 32)


async def serve(state: Path, target: str) -> None:
    manager = PeerManager(
        load_or_create(state, "hostile"),
        "hostile",
        "127.0.0.1",
        free_port(),
        LyingHost(),
        RefusalTally(),
    )
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
            conn.transmit()
            await asyncio.sleep(0.5)
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
        deadline = time.monotonic() + 10
        while "protocol error" not in receiver.stderr():
            assert time.monotonic() < deadline, "the receiver did not cut the peer off"
            time.sleep(0.1)


@contextmanager
def run_hostile_peer(state: Path, target: Daemon) -> Iterator[HostilePeer]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scenarios.hostile", str(state), f"127.0.0.1:{target.port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "connected", line
        yield HostilePeer(proc)
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), sys.argv[2]))
