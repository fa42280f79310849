"""Flash crowd: one source and N receivers ask for the same game at the same moment.

As when the tournament game is announced at a LAN party. Every daemon runs on its own
private D-Bus and its own loopback address, 127.0.0.2 (the source), 127.0.0.3, ...,
so per-address limits apply as on a LAN; each caps what it serves at --rate (a stand-in
for one LAN port) and finds the others over mDNS on its own address. As root the
daemons run in a network namespace of the bench's own, whose loopback is all there is
(mDNS cannot leave it, and no other daemon on this machine's loopback joins in), with
their game and state directories on a tmpfs; otherwise on this machine's loopback and
disk, and the disk's bound is printed. The source holds a generated game (--size bytes
of random data in stored RAR5), hashed before it starts, so it announces the game at
once.

Each run starts fresh daemons, waits until every daemon is connected to 4 others and
(up to --mesh-timeout) every receiver is connected to the source or to a peer that is
(the bounded mesh keeps a few connections each, not all: a neighbour's exchange names
the source), lets them settle and measures each daemon's idle CPU (--idle seconds),
then calls Download on every receiver at once and waits for each job's Completed
signal. Meanwhile it watches until every receiver is connected to a holder of the whole
game and 4 peers, and the most connections each daemon had. It prints the time until
all are done against the source-only bound (N x size / rate) and the swarm ideal
(size / rate), the share of the bytes that came from receivers (the jobs' Sources),
how the mesh formed, and CPU per daemon. A receiver whose Download is refused (it lost
the source meanwhile) or fails is counted and named, and the bench exits non-zero.

    sudo .venv/bin/python bench/flashcrowd.py --receivers 32 --size 100M --rate 10M
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus

from bench.datapath import GAME, make_game, parse_size, proc_cpu
from lanspreadd.core.hashes import HashCache
from tests.support import (
    MANAGER,
    Daemon,
    Link,
    PrivateBus,
    bus_driver_call,
    call,
    disconnect,
)

JOB = "org.lanspread.Lanspread1.Job"
PROPERTIES = "org.freedesktop.DBus.Properties"
COMPLETED = f"type='signal',interface='{JOB}',member='Completed'"
# Seconds between looks at the mesh, per daemon: each look is a call to every daemon,
# which must not load a busy machine more as the crowd grows.
POLL_PER_DAEMON = 1 / 32
FEW_PEERS = 4  # issue 17: every receiver connected to at least this many within 5 s
REACH_WINDOW = 30.0  # seconds after the Downloads that whom receivers reach is watched
REFUSED = "refused"  # a Finish whose Download call was refused: no job ran
STATE_ROOM = 64 << 20  # per daemon on the tmpfs: state, logs, bus socket
STOP_WAIT = 30.0  # seconds the daemons have to stop, together, before they are killed


class Missing(Exception):
    """A bounded wait ended without what it waited for; the message says what is missing,
    `who` names the daemons concerned (their last log lines are shown)."""

    def __init__(self, message: str, who: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.who = list(who)


@dataclass
class Isolation:
    """Where the daemons run: a network namespace (or this machine's loopback), and
    whether their directories are on a tmpfs (else the disk's write rate bounds them)."""

    netns: str | None
    tmpfs: bool
    disk_rate: float | None = None  # bytes per second, measured when not on a tmpfs

    def describe(self) -> str:
        where = (
            f"own network namespace {self.netns} (mDNS on its loopback only)"
            if self.netns
            else "this machine's loopback (not root: other daemons on it may join in)"
        )
        disk = "game dirs on a tmpfs" if self.tmpfs else "game dirs on disk"
        return f"{where}, {disk}"


@contextmanager
def network_namespace() -> Iterator[str]:
    """A namespace whose only interface is its loopback, deleted however the run ends."""
    name = f"lsfc-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[None]:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "lanspread-flashcrowd", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def disk_write_rate(directory: Path, size: int = 64 << 20) -> float:
    """Bytes per second a file written and fsynced in `directory` went at."""
    probe = directory / "disk-probe"
    block = os.urandom(1 << 20)
    began = time.monotonic()
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink()
    return size / (time.monotonic() - began)


@contextmanager
def isolation(scratch: Path, need: int) -> Iterator[Isolation]:
    """As root: a network namespace and a tmpfs of `need` bytes on `scratch`."""
    if os.geteuid() != 0:
        yield Isolation(None, False, disk_write_rate(scratch))
        return
    available = memory_available()
    if need > available * 0.9:
        raise Missing(
            f"a tmpfs of {need / 1e9:.1f} GB for every daemon's copy of the game, but only "
            f"{available / 1e9:.1f} GB of memory is available: fewer --receivers or a "
            "smaller --size"
        )
    with network_namespace() as netns, tmpfs(scratch, need):
        yield Isolation(netns, True)


def memory_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


async def ask(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    path: str = "/org/lanspread/Lanspread1",
    interface: str = MANAGER,
) -> list[Any]:
    reply = await call(bus, member, signature, body, path=path, interface=interface)
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
    return list(reply.body)


async def prop(bus: MessageBus, path: str, interface: str, name: str) -> Any:
    (value,) = await ask(bus, "Get", "ss", [interface, name], path=path, interface=PROPERTIES)
    assert isinstance(value, Variant)
    return value.value


async def peers_of(link: Link) -> dict[str, bool]:
    """Peer id -> whether it serves the game (at the catalog version, all it can hold)."""
    (peers,) = await ask(link.bus, "ListPeers")
    return {str(p["Id"].value): GAME in p["Games"].value for p in peers}


@dataclass
class Formation:
    """Seconds from the first daemon's start until each stage, None if not within its wait."""

    on_bus: float
    source_seen: float | None = None  # every receiver sees the source holding the game
    few_peers: float | None = None  # every daemon connected to min(4, N) of the others
    full_mesh: float | None = None  # every daemon connected to all the others
    peers: list[int] = field(default_factory=list)  # connections per daemon at the start
    strangers: int = 0  # peers that are none of ours (host loopback only)


async def form(
    links: list[Link], began: float, on_bus: float, ready_timeout: float, mesh_timeout: float
) -> Formation:
    """Watch the mesh form until every daemon is connected to min(4, N) others (the
    bounded mesh keeps a few connections, not all), then, up to `mesh_timeout`, until
    every receiver has heard of the source: connected to it, or to a peer that is."""
    ours = {link.peer_id for link in links}
    few = min(FEW_PEERS, len(links) - 1)
    formed = Formation(on_bus)
    while True:
        seen = await asyncio.gather(*(peers_of(link) for link in links))
        now = time.monotonic() - began
        known = [
            len(set(ids) & ours - {link.peer_id}) for link, ids in zip(links, seen, strict=True)
        ]
        formed.peers = [len(ids) for ids in seen]
        formed.strangers = len({i for ids in seen for i in ids} - ours)
        source = links[0].peer_id
        near = {link.peer_id for link, ids in zip(links, seen, strict=True) if source in ids}
        unseen = [
            link.name
            for link, ids in zip(links[1:], seen[1:], strict=True)
            if not ids.get(source, False)
        ]
        if formed.source_seen is None and not unseen:
            formed.source_seen = now
        if formed.full_mesh is None and min(known) == len(links) - 1:
            formed.full_mesh = now
        if formed.few_peers is None and min(known) >= few:
            formed.few_peers = now
        # Two hops from the source: a receiver's exchange names it as a holder.
        heard = all(
            link.peer_id == source or source in ids or near & set(ids)
            for link, ids in zip(links, seen, strict=True)
        )
        if formed.few_peers is not None and (heard or now > mesh_timeout):
            return formed
        if formed.few_peers is None and now > ready_timeout:
            lonely = ", ".join(f"{link.name} {n}" for link, n in zip(links, known, strict=True))
            raise Missing(
                f"after {ready_timeout:g} s not every daemon has {few} peers "
                f"(peers each daemon sees: {lonely})",
                [link.name for link, n in zip(links, known, strict=True) if n < few],
            )
        await asyncio.sleep(max(0.5, POLL_PER_DAEMON * len(links)))


async def reach(links: list[Link], began: float, window: float, reached: Reach) -> None:
    """While the crowd downloads, up to `window` s: when every receiver was connected to
    a holder of the whole game and to FEW_PEERS peers, and the most connections the
    source and any receiver had (filled in as it goes: the crowd may end first)."""
    few = min(FEW_PEERS, len(links) - 1)
    while time.monotonic() - began < window:
        seen = await asyncio.gather(*(peers_of(link) for link in links))
        now = time.monotonic() - began
        reached.source_peak = max(reached.source_peak, len(seen[0]))
        reached.receiver_peak = max(reached.receiver_peak, *(len(ids) for ids in seen[1:]))
        if reached.holder_and_few is None and all(
            len(ids) >= few and any(ids.values()) for ids in seen[1:]
        ):
            reached.holder_and_few = now
        await asyncio.sleep(max(0.5, POLL_PER_DAEMON * len(links)))


@dataclass
class Reach:
    """From the moment every receiver called Download."""

    holder_and_few: float | None = None  # every receiver has a holder and FEW_PEERS peers
    source_peak: int = 0  # most connections the source had
    receiver_peak: int = 0  # most connections any receiver had


@dataclass
class Finish:
    """One receiver's download: when it ended after the common start, how, and from whom."""

    name: str
    seconds: float
    success: bool
    state: str
    error: str
    sources: dict[str, int]


async def finish(link: Link, job: str, began: float) -> Finish:
    while job not in link.ended:
        link.arrived.clear()
        await link.arrived.wait()
    seconds = time.monotonic() - began
    success, message, state, error = link.ended[job]
    # The Job object stays 10 s after it ends: its Sources are still there.
    sources = await prop(link.bus, job, JOB, "Sources")
    return Finish(
        link.name, seconds, bool(success), str(state), f"{error} {message}".strip(), sources
    )


async def progress(link: Link, job: str) -> str:
    """What an unfinished download has done so far, for the report of a timeout."""
    try:
        done = await prop(link.bus, job, JOB, "BytesDone")
        total = await prop(link.bus, job, JOB, "Bytes")
        state = await prop(link.bus, job, JOB, "State")
        sources = await prop(link.bus, job, JOB, "Sources")
    except RuntimeError as exc:
        return f"{link.name}: {exc}"
    got = f"{done >> 20} of {total >> 20} MiB"
    return f"{link.name}: {state}, {got}, bytes from {len(sources)} peer(s)"


async def start(link: Link) -> str | Finish:
    """The job a Download started, or the refusal (a receiver that lost the source)."""
    reply = await call(link.bus, "Download", "sb", [GAME, False])
    if reply.message_type is MessageType.ERROR:
        why = f"{reply.error_name} {reply.body[0] if reply.body else ''}".strip()
        return Finish(link.name, 0.0, False, REFUSED, why, {})
    return str(reply.body[0])


async def flash(links: list[Link], allowed: float, reached: Reach) -> list[Finish]:
    """Download on every receiver at the same moment; each job's end. Meanwhile `reach`
    watches whom they are connected to."""
    receivers = links[1:]
    for link in receivers:
        link.bus.add_message_handler(link.take)
        await bus_driver_call(link.bus, "AddMatch", COMPLETED)
    began = time.monotonic()
    started = await asyncio.gather(*(start(link) for link in receivers))
    watching = asyncio.ensure_future(reach(links, began, REACH_WINDOW, reached))
    refused = [job for job in started if isinstance(job, Finish)]
    jobs = [
        (link, job) for link, job in zip(receivers, started, strict=True) if isinstance(job, str)
    ]
    waits = [asyncio.ensure_future(finish(link, job, began)) for link, job in jobs]
    try:
        done, _ = await asyncio.wait(waits, timeout=allowed) if waits else (set(), set())
        if len(done) < len(waits):
            late = [
                (link, job)
                for (link, job), wait in zip(jobs, waits, strict=True)
                if wait not in done
            ]
            raise Missing(
                f"{len(late)} of {len(waits)} downloads not done after {allowed:g} s:\n  "
                + "\n  ".join([await progress(link, job) for link, job in late]),
                ["source", *(link.name for link, _ in late)],
            )
        return refused + [wait.result() for wait in waits]
    finally:
        for wait in [*waits, watching]:
            wait.cancel()
        await asyncio.gather(*waits, watching, return_exceptions=True)


@dataclass
class Run:
    """What one flash crowd measured."""

    receivers: int
    size: int
    rate: int
    formation: Formation
    idle: list[float]  # CPU share of one core per daemon, source first
    finishes: list[Finish]
    cpu: list[float]  # CPU seconds per daemon from the start to all done, source first
    source_id: str
    reached: Reach

    @property
    def ended(self) -> list[float]:
        """When each job that ran ended, succeeded or not."""
        return [f.seconds for f in self.finishes if f.state != REFUSED] or [0.0]

    @property
    def all_done(self) -> float:
        return max(self.ended)

    @property
    def median_done(self) -> float:
        return statistics.median(self.ended)

    @property
    def source_only(self) -> float:
        return self.receivers * self.size / self.rate

    @property
    def ideal(self) -> float:
        return self.size / self.rate

    @property
    def from_source(self) -> int:
        return sum(f.sources.get(self.source_id, 0) for f in self.finishes)

    @property
    def received(self) -> int:
        return sum(sum(f.sources.values()) for f in self.finishes)

    @property
    def from_receivers(self) -> float:
        return 1 - self.from_source / self.received if self.received else 0.0

    @property
    def failed(self) -> list[Finish]:
        return [f for f in self.finishes if not f.success]


def spread(values: Sequence[float], fmt: str) -> str:
    """`median/max` of the receivers' values."""
    return f"{statistics.median(values):{fmt}}/{max(values):{fmt}}"


def seconds(value: float | None, waited: float) -> str:
    return f"{value:.1f}" if value is not None else f">{waited:.0f}"


SWARM_HEAD = (
    f"{'receivers':>9} {'game MB':>8} {'all done s':>10} {'median s':>8} "
    f"{'source-only s':>13} {'swarm ideal s':>13} {'time/ideal':>10} "
    f"{'from receivers %':>16} {'copies sent by source':>21} {'ok':>7}"
)


def swarm_row(run: Run) -> str:
    return (
        f"{run.receivers:>9} {run.size / 1e6:>8.1f} {run.all_done:>10.1f} {run.median_done:>8.1f} "
        f"{run.source_only:>13.1f} {run.ideal:>13.1f} {run.all_done / run.ideal:>10.2f} "
        f"{run.from_receivers * 100:>16.1f} {run.from_source / run.size:>21.2f} "
        f"{f'{run.receivers - len(run.failed)}/{run.receivers}':>7}"
    )


MESH_HEAD = (
    f"{'receivers':>9} {'on bus s':>8} {'source seen s':>13} {f'{FEW_PEERS} peers s':>9} "
    f"{'full mesh s':>11} {'peers min/med/max':>17} {'crowd: holder s':>15} "
    f"{'peak src/rcv':>12} {'idle CPU % source':>17} "
    f"{'idle % rcv med/max':>18} {'idle cores, all':>15} {'CPU s source':>12} "
    f"{'CPU s rcv med/max':>17}"
)


def mesh_row(run: Run, mesh_timeout: float) -> str:
    f, peers = run.formation, run.formation.peers
    counts = f"{min(peers)}/{statistics.median(peers):g}/{max(peers)}"
    return (
        f"{run.receivers:>9} {f.on_bus:>8.1f} {seconds(f.source_seen, 0):>13} "
        f"{seconds(f.few_peers, mesh_timeout):>9} {seconds(f.full_mesh, mesh_timeout):>11} "
        f"{counts:>17} {seconds(run.reached.holder_and_few, REACH_WINDOW):>15} "
        f"{f'{run.reached.source_peak}/{run.reached.receiver_peak}':>12} "
        f"{run.idle[0] * 100:>17.2f} "
        f"{spread([c * 100 for c in run.idle[1:]], '.2f'):>18} {sum(run.idle):>15.2f} "
        f"{run.cpu[0]:>12.1f} {spread(run.cpu[1:], '.1f'):>17}"
    )


def targets(run: Run) -> list[str]:
    """Issues 16 and 17 set these at 32 receivers, a 100 MB game and 10 MB/s caps."""
    reached = run.reached.holder_and_few
    rows = [
        ("all done / swarm ideal", run.all_done / run.ideal, 2.0),
        ("idle CPU % of the busiest daemon", max(run.idle) * 100, 0.3),
        (
            f"s from Download to a holder and {FEW_PEERS} peers",
            reached if reached is not None else float("inf"),
            5.0,
        ),
    ]
    return [
        f"  {what:<40} {got:>7.2f}  <= {bound:<4g} {'met' if got <= bound else 'missed'}"
        for what, got, bound in rows
    ]


def start_daemons(
    daemons: list[Daemon],
    scratch: Path,
    template: Path,
    receivers: int,
    rate: int,
    where: Isolation,
    log_level: str = "info",
) -> None:
    """The source and the receivers, each on its own bus and address, started without
    waiting; each joins `daemons` as soon as its bus runs, so `cluster` stops it."""
    for k in range(receivers + 1):
        name = "source" if k == 0 else f"r{k}"
        base = scratch / name
        (base / "games").mkdir(parents=True)
        daemon = Daemon(
            PrivateBus(base),
            base / "games",
            base / "state",
            extra_args=("--upload-limit", str(rate), "--log-level", log_level),
            name=name,
            listen=f"127.0.0.{k + 2}",
            mdns=True,
            netns=where.netns,
        )
        daemons.append(daemon)
        if k == 0:
            shutil.copytree(template, daemon.game_dir / GAME, copy_function=os.link)
            # Hashed before it starts, as a long-running source would have: it announces
            # the game at once.
            HashCache(daemon.state_dir / "hashes").file_entries(GAME, daemon.game_dir / GAME)
        daemon.start(wait=False)


@contextmanager
def cluster(daemons: list[Daemon]) -> Iterator[None]:
    """Whatever was started is stopped, the daemons before their buses."""
    try:
        yield
    finally:
        for daemon in daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for daemon in daemons:
            if daemon.proc is not None:
                try:
                    daemon.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(
                        f"flashcrowd: {daemon.name} still running {STOP_WAIT:g} s after "
                        "SIGTERM: killed",
                        file=sys.stderr,
                    )
                    daemon.proc.kill()
                    daemon.proc.wait(10)
        for daemon in daemons:
            daemon.bus.stop()


async def measure(
    daemons: list[Daemon], began: float, on_bus: float, args: argparse.Namespace, rate: int
) -> Run:
    links: list[Link] = []
    try:
        for daemon in daemons:
            bus = await MessageBus(bus_address=daemon.bus.address).connect()
            links.append(Link(daemon, bus))
        for link in links:
            link.peer_id = str(await prop(link.bus, "/org/lanspread/Lanspread1", MANAGER, "PeerId"))
        formation = await form(links, began, on_bus, args.ready_timeout, args.mesh_timeout)
        # Idle: once the start-up announcements are over, nothing asks the daemons
        # anything meanwhile.
        await asyncio.sleep(args.settle)
        pids = [d.proc.pid for d in daemons if d.proc is not None]
        before = [proc_cpu(pid) for pid in pids]
        await asyncio.sleep(args.idle)
        idle = [(proc_cpu(pid) - b) / args.idle for pid, b in zip(pids, before, strict=True)]
        before = [proc_cpu(pid) for pid in pids]
        size = sum(p.stat().st_size for p in (daemons[0].game_dir / GAME).iterdir())
        timeout = args.timeout or 2 * args.receivers * size / rate + 60
        reached = Reach()
        finishes = await flash(links, timeout, reached)
        cpu = [proc_cpu(pid) - b for pid, b in zip(pids, before, strict=True)]
        return Run(
            args.receivers, size, rate, formation, idle, finishes, cpu, links[0].peer_id, reached
        )
    finally:
        for link in links:
            await disconnect(link.bus)


def run_once(
    scratch: Path, template: Path, args: argparse.Namespace, where: Isolation, logs: Path | None
) -> Run:
    rate = parse_size(args.rate)
    daemons: list[Daemon] = []
    try:
        with cluster(daemons):
            began = time.monotonic()
            start_daemons(daemons, scratch, template, args.receivers, rate, where, args.log_level)
            for daemon in daemons:
                left = max(1.0, args.ready_timeout - (time.monotonic() - began))
                try:
                    daemon.wait_ready(timeout=left)
                except AssertionError as exc:  # what support.Daemon says of a daemon not up
                    raise Missing(f"{daemon.name} not on its bus: {exc}", [daemon.name]) from None
            on_bus = time.monotonic() - began
            try:
                return asyncio.run(measure(daemons, began, on_bus, args, rate))
            except Missing as exc:
                for daemon in (d for d in daemons if d.name in exc.who):
                    print(f"--- {daemon.name} ({daemon.listen}), last log lines:", file=sys.stderr)
                    print(log_tail(daemon), file=sys.stderr)
                raise
    finally:
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            for daemon in daemons:
                for kept in ("lanspread.log", "stderr.log"):
                    if (daemon.state_dir / kept).exists():
                        shutil.copy(daemon.state_dir / kept, logs / f"{daemon.name}-{kept}")


def log_tail(daemon: Daemon, lines: int = 8) -> str:
    log = daemon.state_dir / "lanspread.log"
    text = log.read_text(errors="replace") if log.exists() else daemon.stderr()
    return "\n".join(text.splitlines()[-lines:])


def stop_on_term(signum: int, frame: FrameType | None) -> None:
    """SIGTERM ends the bench as Ctrl-C does: every `finally` runs."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, default=32, help="N (default 32)")
    parser.add_argument("--size", default="100M", help="game size (default 100M)")
    parser.add_argument("--rate", default="10M", help="upload cap per daemon, per s (default 10M)")
    parser.add_argument("--runs", type=int, default=1, help="flash crowds, fresh daemons each")
    parser.add_argument(
        "--idle", type=float, default=30.0, help="seconds of idle CPU measured (default 30)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=180.0, help="until every daemon has 4 peers"
    )
    parser.add_argument(
        "--mesh-timeout",
        type=float,
        default=120.0,
        help="longest wait for every receiver to be within two hops of the source",
    )
    parser.add_argument(
        "--timeout", type=float, default=0.0, help="downloads (default 2x source-only + 60 s)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds after the mesh before idle is measured (default 40: connections are "
        "idle after 30 s, and the mesh lets go of what it does not need after 30 s)",
    )
    parser.add_argument("--logs", type=Path, help="keep every daemon's log here, per run")
    parser.add_argument("--log-level", default="info", help="the daemons' (default info)")
    args = parser.parse_args()
    if args.receivers < 1 or args.receivers > 250:
        parser.error("--receivers must be 1-250 (one 127.0.0.N address each)")
    signal.signal(signal.SIGTERM, stop_on_term)
    size, rate = parse_size(args.size), parse_size(args.rate)
    runs: list[Run] = []
    scratch = Path(tempfile.mkdtemp(prefix="lanspread-flashcrowd-"))
    try:
        need = (args.receivers + 2) * (size + (1 << 20)) + (args.receivers + 1) * STATE_ROOM
        with isolation(scratch, need) as where:
            template = scratch / "game"
            make_game(template, size)
            print(
                f"flash crowd: 1 source + {args.receivers} receivers, {size / 1e6:.1f} MB game "
                f"(stored RAR5), upload cap {rate / 1e6:.2f} MB/s per daemon, {os.cpu_count()} "
                f"CPUs, load {os.getloadavg()[0]:.2f}; {where.describe()}",
                flush=True,
            )
            if where.disk_rate is not None:
                print(
                    f"disk bound: {args.receivers} x {size / 1e6:.1f} MB written at "
                    f"{where.disk_rate / 1e6:.0f} MB/s (fsynced) take at least "
                    f"{args.receivers * size / where.disk_rate:.1f} s",
                    flush=True,
                )
            for number in range(args.runs):
                run_dir = scratch / f"run{number}"
                logs = args.logs / f"run{number + 1}" if args.logs else None
                runs.append(run_once(run_dir, template, args, where, logs))
                shutil.rmtree(run_dir)
    except Missing as exc:
        print(f"flashcrowd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("flashcrowd: interrupted; all it started is stopped and removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        "\nswarm: every receiver calls Download at the same moment (all done and median: "
        "when the jobs ended; ok: those that succeeded)"
    )
    print(SWARM_HEAD)
    for run in runs:
        print(swarm_row(run))
    print(
        "\nmesh (seconds from the first daemon's start; crowd: from the Downloads until every "
        f"receiver had a holder and {FEW_PEERS} peers; peak: most connections during it) "
        "and CPU per daemon"
    )
    print(MESH_HEAD)
    for run in runs:
        print(mesh_row(run, args.mesh_timeout))
    print("\ntargets (issues 16 and 17 set them at 32 receivers, 100 MB, 10 MB/s), run 1:")
    print("\n".join(targets(runs[0])))
    if runs[0].formation.strangers:
        print(f"note: {runs[0].formation.strangers} peer(s) that are not ours joined in")
    failed = [f for run in runs for f in run.failed]
    for f in failed:
        print(f"failed: {f.name} {f.state}: {f.error}")
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
