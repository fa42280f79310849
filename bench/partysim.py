"""Party simulator: a whole LAN party fills a game, at sizes no machine here can run.

A discrete-event simulation (a heap of events on an injected clock: no asyncio, no
sockets, no sleeping) that drives the real `DownloadPlan`, one per seat, over a
modelled network, with the daemon's own constants (upload slots, BUSY backoff, the
sent-elsewhere rule, delta and recruit intervals, streams per source).

What is modelled, as the daemon does it:
- Each receiving seat runs one download: a plan shuffled by its own `rng`, 4 streams to
  each complete source, 1 to each partial one, at most 12 fetches at once (the others
  wait their turn in order, as on the download's semaphore). A worker the plan gives
  nothing waits until woken (its source told more chunks, or any chunk came back) or
  for 0.5 s; a BUSY or NOT_HELD answer gives the chunk back and the worker asks again
  after 0.5, 1, then 2 s (x0.5-1.5), as `Downloader._take_chunk` computes it.
- Each seat tells its newly verified chunks once a second from the start of its
  download; peers that have it as a partial source take them in at once.
- Each seat's recruiter looks once a second (the first time at the start) for peers
  downloading the same game or holding it whole, and enlists them after a file-list
  round trip (`LIST_DELAY`). A finished seat stops serving as a partial holder (the
  next request to it fails and the asker drops it), and is enlisted as a complete
  source at the asker's next look.
- A serving seat answers BUSY with 4 uploads under way; a complete holder refuses
  (NOT_HELD) a chunk it sent to another seat within 3 s.

The network (the simplest model that conserves every link's capacity):
- LAN: each seat has a link of `--link` MB/s each way on a switch of `--ports` seats; each
  switch is joined to one core by an uplink of `--uplink` MB/s each way. Every chunk
  moves at one seat link's rate, and holds a lane of every link it crosses for that
  long: the sender's up, the receiver's down, and between switches the sending
  switch's uplink and the receiving switch's downlink, which have uplink / link lanes
  (10 for 10 GbE over 1 GbE). A transfer starts at the earliest time every link on its
  path has a free lane (booked in request order, gaps filled). So a seat's uploads go
  one after another (as TCP's fair share would move the same bytes, but each chunk is
  whole sooner), and no link ever carries more than its capacity. Latency is
  `LATENCY` each way; CPU (hashing, QUIC messages) and disks are free.
- Calibration (`--calibrate`): the bench's loopback, where nothing limits but each
  daemon's upload limiter, a token bucket one request deep: a request waits until the
  bytes before it are paid for at the rate, then its chunk goes at loopback speed.

Connections: a full mesh by default. `--max-peers K` connects each seat to K random
peers and to the source (links are both ways, so a seat may have more than K): a
placeholder for the bounded mesh of issue 17, whose policy (which peers, rotation) is
not modelled.

`--scale S` makes chunks S times larger (same game size, links and constants, S times
fewer chunks): the plans' chunk choice is most of the run time, and grows with chunks
x seats x peers. Larger chunks take S times longer to cross a link before they can be
served on, and hold an upload slot S times longer (more BUSY answers), so the fill time
is pessimistic: 100 seats on one switch, 20 random peers, filled in 1.49x the ideal at
--scale 16 and 1.86x at --scale 64. On this machine --scale 64 took 60 s for 100 seats
in a full mesh and 15 s with --max-peers 20; --scale 1 does not finish 100 seats in 5
minutes.

    .venv/bin/python bench/partysim.py --seats 100 500 2000 --scale 64 --max-peers 20
    .venv/bin/python bench/partysim.py --calibrate
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import random
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanspreadd.app.downloader import (
    BUSY_BACKOFF,
    MAX_STREAMS,
    STREAMS_PER_PARTIAL,
    STREAMS_PER_SOURCE,
)
from lanspreadd.app.recruiter import RECRUIT_INTERVAL
from lanspreadd.app.sharing import DELTA_INTERVAL
from lanspreadd.core.hashes import CHUNK_SIZE
from lanspreadd.core.plan import Chunk, ChunkKey, DownloadPlan
from lanspreadd.net.dataserver import SENT_ELSEWHERE, UPLOAD_SLOTS
from lanspreadd.protocol.messages import FileEntry

IDLE_WAIT = 0.5  # a worker the plan gave nothing asks again after this (Downloader)
LATENCY = 0.0002  # one way, seat to seat (LAN or loopback)
LIST_DELAY = 0.01  # a file list asked for and received, when a source is enlisted
LOOPBACK_RATE = 700e6  # bytes/s of one loopback sendfile stream (bench/datapath.py)
MB = 1e6
SOURCE = 0  # the seat that holds the game from the start

# bench/flashcrowd.py's figures in the README: receivers -> all done, seconds.
MEASURED = {8: 15.1, 16: 17.6, 32: 19.2}
CALIBRATION_SIZE = 100 << 20
CALIBRATION_RATE = 10 << 20


class Clock:
    """Simulated time: a heap of (when, order, action)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self._heap, (max(when, self.now), self._order, action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def run(self, done: Callable[[], bool], limit: float) -> None:
        while self._heap and not done():
            when, _, action = heapq.heappop(self._heap)
            if when > limit:
                return
            self.now = when
            action()


class Network(Protocol):
    def send(self, sender: int, receiver: int, size: int, now: float) -> tuple[float, float]:
        """(when the receiver holds the chunk, when the sender's upload ends)."""
        ...


class Lanes:
    """One direction of one link: `count` lanes, each a sorted list of booked spans."""

    def __init__(self, count: int) -> None:
        self.lanes: list[list[tuple[float, float]]] = [[] for _ in range(count)]

    @staticmethod
    def _gap(lane: list[tuple[float, float]], t: float, d: float) -> float:
        for start, end in lane:
            if end <= t:
                continue
            if start >= t + d:
                break
            t = end
        return t

    def earliest(self, t: float, d: float, now: float) -> float:
        best = float("inf")
        for lane in self.lanes:
            while lane and lane[0][1] <= now:
                lane.pop(0)
            best = min(best, self._gap(lane, t, d))
            if best == t:
                break
        return best

    def book(self, t: float, d: float) -> None:
        for lane in self.lanes:
            if self._gap(lane, t, d) == t:
                bisect.insort(lane, (t, t + d))
                return
        raise AssertionError("no lane free for a span found free")


class Lan:
    """Seats on switches, switches on one core (see the module docstring)."""

    def __init__(self, seats: int, link: float, uplink: float, ports: int) -> None:
        self.link = link
        self.ports = ports
        switches = (seats + ports - 1) // ports
        lanes = max(1, int(uplink / link + 1e-9))
        self.up = [Lanes(1) for _ in range(seats)]
        self.down = [Lanes(1) for _ in range(seats)]
        self.switch_up = [Lanes(lanes) for _ in range(switches)]
        self.switch_down = [Lanes(lanes) for _ in range(switches)]

    def send(self, sender: int, receiver: int, size: int, now: float) -> tuple[float, float]:
        path = [self.up[sender], self.down[receiver]]
        a, b = sender // self.ports, receiver // self.ports
        if a != b:
            path += [self.switch_up[a], self.switch_down[b]]
        d = size / self.link
        t = now
        while True:
            later = max(link.earliest(t, d, now) for link in path)
            if later == t:
                break
            t = later
        for link in path:
            link.book(t, d)
        return t + d, t + d


class Loopback:
    """The bench: each daemon's upload limiter, one request deep, and nothing else."""

    def __init__(self, seats: int, rate: float) -> None:
        self.rate = rate
        self.paid_at = [0.0] * seats  # when every byte reserved so far is paid for

    def send(self, sender: int, receiver: int, size: int, now: float) -> tuple[float, float]:
        start = max(now, self.paid_at[sender])
        self.paid_at[sender] = start + size / self.rate
        end = start + size / LOOPBACK_RATE
        return end, end


@dataclass(eq=False)
class Worker:
    """One data connection of one download to one source."""

    seat: int
    source: int
    partial: bool


@dataclass(eq=False)
class Seat:
    index: int
    start: float
    peers: list[int]
    plan: DownloadPlan | None  # None for the source
    done: float | None = None
    downloading: bool = False
    # Serving.
    uploading: int = 0
    sent: dict[ChunkKey, tuple[int, float]] = field(default_factory=dict)
    told: list[ChunkKey] = field(default_factory=list)
    fresh: list[ChunkKey] = field(default_factory=list)
    partial_at: set[int] = field(default_factory=set)  # seats that take our chunks
    # Downloading.
    slots: int = MAX_STREAMS
    queue: deque[Worker] = field(default_factory=deque)
    idle: dict[int, list[Worker]] = field(default_factory=dict)
    # Sources whose last answer was nothing, and nothing since could change it (the plan
    # is deterministic: asking again would give nothing again); idle sources not in it.
    # state changes would give nothing again (the plan is deterministic).
    empty: set[int] = field(default_factory=set)
    ready: set[int] = field(default_factory=set)
    refused: Counter[int] = field(default_factory=Counter)
    complete: set[int] = field(default_factory=set)  # complete sources in the plan
    candidates: set[int] = field(default_factory=set)  # peers to enlist
    from_source: int = 0  # chunks completed from the source seat

    def forget(self, sources: Iterable[int]) -> None:
        """The plan may now give these sources a chunk."""
        for source in sources:
            self.empty.discard(source)
            if source in self.idle:
                self.ready.add(source)


@dataclass
class Result:
    seats: int
    chunks: int
    done: list[float]
    connections: list[int]
    source_copies: float
    wall: float
    unfinished: int


class Party:
    """One simulated party: seats, their downloads and what they serve."""

    def __init__(
        self,
        receivers: int,
        size: int,
        chunk_size: int,
        network: Network,
        start_window: float,
        max_peers: int | None,
        rng: random.Random,
    ) -> None:
        self.clock = Clock()
        self.network = network
        self.rng = rng
        n = receivers + 1
        count = -(-size // chunk_size)
        self.files = (
            FileEntry("game.rar", size, ("",) * count),
            FileEntry("version.ini", 4, ("",)),
        )
        self.chunk_size = chunk_size
        self.chunks = count + 1
        neighbours = connect(n, max_peers, rng)
        self.seats = [
            Seat(
                i,
                0.0 if i == SOURCE else rng.uniform(0, start_window),
                sorted(neighbours[i]),
                None if i == SOURCE else DownloadPlan(self.files, chunk_size, rng=rng_of(rng)),
            )
            for i in range(n)
        ]
        self.seats[SOURCE].done = 0.0
        self.left = receivers

    def run(self, limit: float) -> None:
        for seat in self.seats[1:]:
            self.clock.at(seat.start, partial(self.begin, seat))
        self.clock.run(lambda: self.left == 0, limit)

    def plan(self, seat: Seat) -> DownloadPlan:
        assert seat.plan is not None
        return seat.plan

    # -- a download's life -------------------------------------------------------

    def begin(self, seat: Seat) -> None:
        """Download called: complete peers are the first sources; our (empty) map goes out."""
        seat.downloading = True
        plan = self.plan(seat)
        for p in seat.peers:
            peer = self.seats[p]
            if peer.done is not None:
                plan.add_source(str(p))
                seat.complete.add(p)
                self.start_workers(seat, p, False)
            elif peer.downloading:
                seat.candidates.add(p)
                peer.candidates.add(seat.index)
        self.recruit(seat)
        self.clock.after(DELTA_INTERVAL, lambda: self.tell(seat))
        self.clock.after(IDLE_WAIT, lambda: self.tick(seat))

    def finish(self, seat: Seat) -> None:
        seat.done = self.clock.now
        seat.downloading = False
        self.left -= 1
        for p in seat.peers:  # announced whole: enlisted as a complete source
            peer = self.seats[p]
            if peer.downloading:
                peer.candidates.add(seat.index)

    def tell(self, seat: Seat) -> None:
        """The once-a-second delta of newly verified chunks."""
        if not seat.downloading:
            return
        if seat.fresh:
            fresh, seat.fresh = seat.fresh, []
            seat.told += fresh
            for r in list(seat.partial_at):
                taker = self.seats[r]
                if not taker.downloading:
                    seat.partial_at.discard(r)
                    continue
                self.plan(taker).add_held(str(seat.index), fresh)
                taker.forget((seat.index,))
                self.poke(taker, seat.index)
        self.clock.after(DELTA_INTERVAL, lambda: self.tell(seat))

    def tick(self, seat: Seat) -> None:
        """Idle workers' 0.5 s timeouts (one tick per seat)."""
        if not seat.downloading:
            return
        self.poke(seat)
        self.clock.after(IDLE_WAIT, lambda: self.tick(seat))

    def recruit(self, seat: Seat) -> None:
        if not seat.downloading:
            return
        plan = self.plan(seat)
        for p in list(seat.candidates):
            if str(p) in plan.sources:
                if self.seats[p].done is None or p in seat.complete:
                    seat.candidates.discard(p)
                continue  # a partial source now whole: enlisted once dropped
            seat.candidates.discard(p)
            self.clock.after(LIST_DELAY, partial(self.join, seat, p))
        self.clock.after(RECRUIT_INTERVAL, lambda: self.recruit(seat))

    def join(self, seat: Seat, p: int) -> None:
        plan = self.plan(seat)
        if not seat.downloading or str(p) in plan.sources:
            return
        peer = self.seats[p]
        if peer.done is not None:
            plan.add_source(str(p))
            seat.complete.add(p)
        else:
            plan.add_source(str(p), held=peer.told)
            peer.partial_at.add(seat.index)
        seat.forget((p,))
        self.start_workers(seat, p, peer.done is None)

    # -- workers -----------------------------------------------------------------

    def start_workers(self, seat: Seat, source: int, partial: bool) -> None:
        for _ in range(STREAMS_PER_PARTIAL if partial else STREAMS_PER_SOURCE):
            seat.queue.append(Worker(seat.index, source, partial))
        self.drain(seat)

    def poke(self, seat: Seat, source: int | None = None) -> None:
        """Wake idle workers (of one source, or all) that may now be given a chunk."""
        if source is None:
            sources, seat.ready = seat.ready, set()
        elif source in seat.ready:
            seat.ready.discard(source)
            sources = {source}
        else:
            sources = set()
        for s in sources:
            seat.queue.extend(seat.idle.pop(s))
        self.drain(seat)

    def drain(self, seat: Seat) -> None:
        """Workers take free fetch slots in the order they asked for them."""
        while seat.slots and seat.queue and seat.downloading:
            self.take(seat, seat.queue.popleft())

    def take(self, seat: Seat, worker: Worker) -> None:
        plan = self.plan(seat)
        sid = str(worker.source)
        if sid not in plan.sources:
            return  # its source was dropped: the worker ends
        if worker.source in seat.empty:
            seat.idle.setdefault(worker.source, []).append(worker)
            return
        pending = bool(plan.pending)
        chunk = plan.next_for(sid)
        if pending and not plan.pending:
            seat.forget(list(seat.empty))  # the end game: chunks in flight may be given
        if chunk is None:
            seat.empty.add(worker.source)
            seat.idle.setdefault(worker.source, []).append(worker)
            return
        seat.slots -= 1
        self.clock.after(LATENCY, lambda: self.serve(worker, chunk))

    def serve(self, worker: Worker, chunk: Chunk) -> None:
        """The source's data server answers a request."""
        server = self.seats[worker.source]
        now = self.clock.now
        if worker.partial and server.done is not None:
            self.clock.after(LATENCY, lambda: self.lost(worker, chunk))  # NOT_SERVABLE
            return
        if server.uploading >= UPLOAD_SLOTS:
            self.clock.after(LATENCY, lambda: self.refused(worker, chunk))  # BUSY
            return
        if not worker.partial:
            last = server.sent.get(chunk.key)
            if last is not None and last[0] != worker.seat and now - last[1] < SENT_ELSEWHERE:
                self.clock.after(LATENCY, lambda: self.refused(worker, chunk))  # NOT_HELD
                return
            server.sent[chunk.key] = (worker.seat, now)
        server.uploading += 1
        held, sent = self.network.send(worker.source, worker.seat, chunk.length, now)
        self.clock.at(sent, lambda: self.uploaded(server))
        self.clock.at(held + LATENCY, lambda: self.received(worker, chunk))

    def uploaded(self, server: Seat) -> None:
        server.uploading -= 1

    def refused(self, worker: Worker, chunk: Chunk) -> None:
        seat = self.seats[worker.seat]
        self.plan(seat).released(chunk, str(worker.source))
        self.back(seat, chunk)
        seat.slots += 1
        seat.refused[worker.source] += 1
        backoff = BUSY_BACKOFF * 2 ** min(seat.refused[worker.source], 3)
        self.clock.after(backoff * self.rng.uniform(0.5, 1.5), lambda: self.again(worker))
        self.poke(seat)

    def again(self, worker: Worker) -> None:
        seat = self.seats[worker.seat]
        seat.queue.append(worker)
        self.drain(seat)

    def back(self, seat: Seat, chunk: Chunk) -> None:
        """A chunk is pending again: the sources that can send it may be given it."""
        plan = self.plan(seat)
        seat.forget(
            [s for s in seat.empty if (h := plan.held.get(str(s))) is None or chunk.key in h]
        )

    def lost(self, worker: Worker, chunk: Chunk) -> None:
        """A partial source that finished: the request failed, the source is dropped."""
        seat = self.seats[worker.seat]
        self.plan(seat).source_lost(str(worker.source))
        self.seats[worker.source].partial_at.discard(seat.index)
        self.back(seat, chunk)
        seat.slots += 1
        self.poke(seat)

    def received(self, worker: Worker, chunk: Chunk) -> None:
        seat = self.seats[worker.seat]
        seat.slots += 1
        seat.refused.pop(worker.source, None)
        if not seat.downloading:
            return
        plan = self.plan(seat)
        if plan.completed(chunk):
            seat.fresh.append(chunk.key)
            seat.from_source += worker.source == SOURCE
            seat.forget(seat.complete & seat.empty)  # no longer busy, perhaps
        if plan.finished:
            self.finish(seat)
            return
        seat.queue.append(worker)
        if not plan.pending:
            self.poke(seat)  # the end game: every worker is woken
        else:
            self.drain(seat)

    def result(self, wall: float) -> Result:
        receivers = self.seats[1:]
        done = [s.done for s in receivers if s.done is not None]
        copies = sum(s.from_source for s in receivers) / self.chunks
        return Result(
            len(self.seats),
            self.chunks,
            done,
            [len(s.peers) for s in receivers],
            copies,
            wall,
            len(receivers) - len(done),
        )


def rng_of(rng: random.Random) -> random.Random:
    """Each download's own shuffle, as each daemon has its own."""
    return random.Random(rng.getrandbits(64))  # noqa: S311 (a simulation: repeatable)


def connect(n: int, max_peers: int | None, rng: random.Random) -> list[set[int]]:
    """Who is connected to whom: all to all, or K random peers each and the source."""
    if max_peers is None or max_peers >= n - 2:
        return [set(range(n)) - {i} for i in range(n)]
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i in range(1, n):
        others = rng.sample(range(1, n - 1), max_peers)
        for j in others:
            j = j if j < i else j + 1  # any receiver but i
            neighbours[i].add(j)
            neighbours[j].add(i)
        neighbours[i].add(SOURCE)
        neighbours[SOURCE].add(i)
    return neighbours


def simulate(
    receivers: int,
    size: int,
    chunk_size: int,
    network: Network,
    start_window: float,
    max_peers: int | None,
    seed: int,
    limit: float,
) -> Result:
    began = time.monotonic()
    party = Party(
        receivers,
        size,
        chunk_size,
        network,
        start_window,
        max_peers,
        random.Random(seed),  # noqa: S311
    )
    party.run(limit)
    return party.result(time.monotonic() - began)


HEAD = (
    f"{'seats':>6} {'chunks':>6} {'all done s':>10} {'ideal s':>8} {'time/ideal':>10} "
    f"{'median s':>8} {'conn/seat med/max':>17} {'source copies':>13} {'done':>11} "
    f"{'sim s':>6}"
)


def row(result: Result, ideal: float, limit: float) -> str:
    done = max(result.done) if not result.unfinished else limit
    median = statistics.median(result.done) if result.done else limit
    conns = f"{statistics.median(result.connections):g}/{max(result.connections)}"
    receivers = result.seats - 1
    finished = f"{receivers - result.unfinished}/{receivers}"
    mark = ">" if result.unfinished else ""
    return (
        f"{result.seats:>6} {result.chunks:>6} {mark + f'{done:.1f}':>10} {ideal:>8.1f} "
        f"{mark + f'{done / ideal:.2f}':>10} {median:>8.1f} {conns:>17} "
        f"{result.source_copies:>13.2f} {finished:>11} {result.wall:>6.1f}"
    )


CALIBRATION_HEAD = (
    f"{'receivers':>9} {'simulated s':>11} {'measured s':>10} {'simulated/measured':>18}"
)


def calibrate(seed: int) -> list[str]:
    """The bench's own parameters: 100 MiB, 10 MiB/s upload caps, all start at once."""
    lines = [CALIBRATION_HEAD]
    for receivers, measured in MEASURED.items():
        network = Loopback(receivers + 1, CALIBRATION_RATE)
        result = simulate(receivers, CALIBRATION_SIZE, CHUNK_SIZE, network, 0.0, None, seed, 600.0)
        done = max(result.done) if not result.unfinished else float("inf")
        lines.append(f"{receivers:>9} {done:>11.1f} {measured:>10.1f} {done / measured:>18.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--size", type=float, default=20.0, help="game GB (default 20)")
    parser.add_argument("--scale", type=int, default=1, help="chunks this many times larger")
    parser.add_argument("--link", type=float, default=117.0, help="seat link MB/s each way")
    parser.add_argument("--uplink", type=float, default=1170.0, help="switch uplink MB/s")
    parser.add_argument("--ports", type=int, default=48, help="seats per switch")
    parser.add_argument("--start-window", type=float, default=10.0, help="seats start within")
    parser.add_argument("--max-peers", type=int, help="K random peers each (and the source)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit", type=float, default=20.0, help="give up at this x ideal")
    parser.add_argument("--calibrate", action="store_true", help="the bench's N=8, 16, 32")
    args = parser.parse_args(argv)
    if args.calibrate:
        print("\n".join(calibrate(args.seed)), flush=True)
        return 0
    size = int(args.size * 1e9)
    link = args.link * MB
    ideal = size / link
    limit = args.limit * ideal
    chunk_size = CHUNK_SIZE * args.scale
    mesh = "full mesh" if args.max_peers is None else f"{args.max_peers} random peers + source"
    print(
        f"{args.size:g} GB game in {chunk_size >> 20} MiB chunks; {args.link:g} MB/s seat links, "
        f"{args.ports} per switch, {args.uplink:g} MB/s uplinks; starts within "
        f"{args.start_window:g} s; {mesh}; times from the first start",
        flush=True,
    )
    print(HEAD, flush=True)
    failed = False
    for seats in args.seats:
        network = Lan(seats, link, args.uplink * MB, args.ports)
        result = simulate(
            seats - 1,
            size,
            chunk_size,
            network,
            args.start_window,
            args.max_peers,
            args.seed,
            limit,
        )
        failed |= bool(result.unfinished)
        print(row(result, ideal, limit), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
