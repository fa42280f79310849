"""A peer flooding announcements: 10,000 games nobody's catalog lists, then 20,000 small
deltas, each flipping a catalog game on and off and naming yet another unknown game.

Each frame once became a D-Bus signal carrying the whole table and a rebuild of every
game's view; the victim sat at 100% CPU and answered D-Bus calls seconds late.

Run as a process of its own (the `hostile-announce` scenario), it connects to TARGET
and floods round after round until its stdin closes, printing `connected`, then
`round N` as the target has taken each round in:

    python -m tests.scenarios.hostile_announce STATE TARGET UNKNOWN DELTAS
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lanspreadd.core.identity import load_or_create
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.errors import NotServable, PeerError
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import (
    Delta,
    FileList,
    FileListRequest,
    Message,
    Snapshot,
    StreamInstallGrant,
    StreamInstallRequest,
)
from tests.support import Daemon, free_port, make_game, wait_for

TOGGLED = "sample-game"  # a catalog game, announced and withdrawn over and over
TOGGLED_VERSION = "1.0"
YIELD_EVERY = 200  # frames sent between turns of the loop, so packets leave
UNKNOWN = 10_000
DELTAS = 20_000


class SilentHost:
    """Serves nothing and asks nothing: the flooder only talks."""

    def snapshot(self) -> dict[str, str]:
        return {}

    def peer_changed(self, peer_id: str, peer: Peer | None, reason: str, /) -> None:
        pass

    async def file_list(self, peer: object, request: FileListRequest, /) -> FileList:
        raise NotServable("the flooder serves nothing")

    async def stream_grant(
        self, peer: object, request: StreamInstallRequest, /
    ) -> StreamInstallGrant:
        raise NotServable("the flooder serves nothing")


def flood_manager(state: Path) -> PeerManager:
    identity = load_or_create(state, "flooder")
    return PeerManager(identity, "flooder", "127.0.0.1", free_port(), SilentHost(), RefusalTally())


def flood_frames(unknown: int, deltas: int, round_: int = 0) -> Iterator[Message]:
    """The snapshot of unknown games, then deltas flipping TOGGLED, each with one more
    unknown game; the last delta withdraws TOGGLED."""
    yield Snapshot({f"unknown-{round_}-{i}": "1" for i in range(unknown)})
    for i in range(deltas):
        more = {f"more-{round_}-{i}": "1"}
        if i % 2 == 0 and i != deltas - 1:
            yield Delta(more | {TOGGLED: TOGGLED_VERSION}, ())
        else:
            yield Delta(more, (TOGGLED,))


async def send(manager: PeerManager, peer_id: str, frames: Iterator[Message]) -> int:
    """Send every frame as fast as the loop lets packets leave; returns how many."""
    sent = 0
    for frame in frames:
        peer = manager.peers.get(peer_id)
        if peer is None:
            raise PeerError(f"the target dropped the flooder after {sent} frame(s)")
        conn = peer.connection
        conn.send_message(frame)
        sent += 1
        if sent % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    return sent


async def taken_in(manager: PeerManager, peer_id: str) -> None:
    """Wait until the target has read everything sent so far: frames on a session are
    handled in order, so the answer to a request sent last comes after them all."""
    try:
        await manager.request_file_list(peer_id, TOGGLED, "no-such-version")
    except PeerError as exc:
        if "not served" not in str(exc):
            raise


async def flood_rounds(state: Path, target: str, unknown: int, deltas: int) -> None:
    manager = flood_manager(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(manager.run())
        await manager.ready.wait()
        host, port = target.rsplit(":", 1)
        peer_id = await manager.connect(host, int(port))
        print("connected", flush=True)
        round_ = 0
        while not stop.is_set():
            await send(manager, peer_id, flood_frames(unknown, deltas, round_))
            await taken_in(manager, peer_id)
            round_ += 1
            print(f"round {round_}", flush=True)
        run.cancel()


class Flooder:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def rounds(self) -> int:
        """Wait for the next round to be taken in; its number."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["round"]:
            # Its connection dropped: the target fell silent, as it did before the fix.
            raise AssertionError(f"the flooder stopped ({line}, exit {self.proc.wait(30)})")
        return int(line[1])


@contextmanager
def run_flooder(state: Path, target: Daemon, unknown: int, deltas: int) -> Iterator[Flooder]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.scenarios.hostile_announce",
            str(state),
            f"127.0.0.1:{target.port}",
            str(unknown),
            str(deltas),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "connected", line
        yield Flooder(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def scenario(runs: int, rounds: int) -> tuple[int, int, str]:
    """The flood against a victim that serves an honest receiver all along: the
    receiver's download during the flood is timed against one before it, and the
    victim must answer D-Bus, count the refusals and show none of the flood."""
    from tests.scenarios.run import (  # run.py registers this scenario: imported late
        GAME,
        MiB,
        check,
        cluster,
        connect,
        downloads,
        payload,
        show,
    )

    passed = 0
    ratios: list[float] = []
    cpu: list[float] = []
    taken = 0
    for run in range(runs):
        with cluster() as c:
            victim = c.add("victim")
            receiver = c.add("receiver")
            root = make_game(victim.game_dir, GAME, "1.0", payload(32 * MiB, run))
            victim.start()
            receiver.start()
            connect(receiver, victim)
            wait_for(lambda: show(receiver)["sources"] == 1, 30, "the victim as a source")

            def download() -> float:
                started = time.monotonic()
                result = receiver.ctl_json("download", GAME)
                elapsed = time.monotonic() - started
                check(result["state"] == "finished", f"download: {result}")
                check(downloads(receiver.game_dir / GAME) == downloads(root), "content differs")
                return elapsed

            quiet = download()
            check(receiver.ctl_json("remove", GAME)["state"] == "finished", "remove")
            assert victim.proc is not None
            with run_flooder(c.base / "flooder", victim, UNKNOWN, DELTAS) as flooder:
                flooder.rounds()  # one round taken in; the next is on its way
                used, started = cpu_seconds(victim.proc.pid), time.monotonic()
                flooded = download()
                check(victim.ctl("games").returncode == 0, "the victim's D-Bus did not answer")
                check(show(receiver)["sources"] == 1, "the receiver lost its source")
                while (done := flooder.rounds()) < rounds:
                    pass
                taken += done
                cpu.append((cpu_seconds(victim.proc.pid) - used) / (time.monotonic() - started))
            counts = victim.ctl_json("status")["refusals"]
            check(counts.get("peer-unknown-games", 0) >= rounds, f"refusals {counts}")
            log = victim.stderr()
            check(log.count("refused (peer-unknown-games)") <= 2, "a log line per refusal")
            catalog = {g["id"] for g in victim.ctl_json("games")}
            for peer in victim.ctl_json("peers"):
                check(set(peer["games"]) <= catalog, f"{peer['name']} shows unknown games")
            ratios.append(flooded / quiet)
            passed += 1
    worst = max(ratios)
    return (
        runs,
        passed,
        f"{taken} rounds of {UNKNOWN} unknown games + {DELTAS} deltas; the victim used "
        f"{max(cpu):.0%} of a core; an honest download took {worst:.2f}x as long (flooder, "
        "victim and receiver on one machine)",
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    asyncio.run(flood_rounds(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
