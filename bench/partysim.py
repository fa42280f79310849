"""Party simulator: a whole LAN party fills a game, at sizes no machine here can run.

A discrete-event simulation (a heap of events on an injected clock: no asyncio, no
sockets, no sleeping) that drives the daemon's own sans-IO code, one copy per seat:
`DownloadPlan` (which chunk next from whom), `MeshPolicy` and `Redial` (the bounded
mesh: whom to dial and when, whom to admit, whom to let go) and `Locality` (which
peers look behind our own switch), with the daemon's constants (upload slots, BUSY
backoff, the sent-elsewhere rule, delta, recruit and exchange intervals).

The downloads, as the daemon does them:
- Each receiving seat runs one download: a plan shuffled by its own `rng`, 4 streams to
  each complete source, 1 to each partial one, at most 12 fetches at once (the others
  wait their turn in order, as on the download's semaphore). A worker the plan gives
  nothing waits until woken (its source told more chunks, or any chunk came back) or
  for 0.5 s; a BUSY or NOT_HELD answer gives the chunk back and the worker asks again
  after 0.5, 1, then 2 s (x0.5-1.5), as `Downloader._take_chunk` computes it. A chunk
  is hashed (0.95 s/GB) before its worker asks again.
- Each seat tells its newly verified chunks once a second; peers that have it as a
  partial source take them in at once. Its recruiter looks once a second for connected
  peers downloading the same game or holding it whole and enlists them after a
  file-list round trip (`LIST_DELAY`). A seat that finishes withdraws its map (it stops
  being a partial source) and is enlisted as a complete one.
- A serving seat answers BUSY with 4 uploads under way; a complete holder refuses
  (NOT_HELD) a chunk it sent to another seat within `sent_elsewhere()` (3 s, up to
  12 s with more than 8 seats asking it).
- A download starts with the file list: here from any holder (see "Not modelled").

The mesh, as app.mesh does it: daemons start within 10 s and run idle for WARMUP (60 s)
before the first download may start. mDNS tells each daemon of MAX_UNCONNECTED random
others (Redial keeps no more unconnected peers: the first it heard). Each dials, in
Redial's order and at its pace, until `MeshPolicy.dial_target`, admits peers while
`admit()`, and every TEND (5 s) lets go what `trim()` names and tells each neighbour
its other peers and whether each holds the game (PeerExchange) when that changed; a
download with fewer than HOLDER_DIALS holders connected dials `holders_to_dial()`.
A peer turned away gets the refuser's exchange.

Locality (`--locality rtt`, the default; `oracle` reads the true switch, `none` is the
mesh without it), as app.mesh applies `core.locality`: Redial ranks the peers it dials
by `Locality.order`; while a download runs, `trim()` sees the connections we dialled
that `Locality.far` names as serving nothing, and `Probing` dials a few peers only to
measure them, judged SETTLE after the handshake and let go (and forgotten by Redial)
unless kept; a full Redial makes way for a peer `Locality.replaces` ranks nearer; a
peer named in an exchange is estimated by its introducer's RTT. A new connection is
enlisted and told of SETTLE after its handshake (the daemon's recruiter looks once a
second, its exchanges go every 5 s).

What the RTTs read (QUIC's smoothed RTT, samples as aioquic takes them: from the acks
of once-a-second deltas while downloading, of pings otherwise, each floored at 1 ms):
the hosts' turnaround (0.3 ms) with exponential jitter (0.2 ms mean per sample), 5 us
per switch each way, and the queue at each port on the way: both seats' access ports
(125 kB, 1 ms at 1 GbE) and, between switches, the four uplink ports (1 MB, 0.85 ms at
10 GbE each). A port a transfer is waiting for is a bottleneck and its queue is full
(TCP fills it); otherwise it queues as an M/M/1 queue at its load over the last second.
Hosts queue nothing of their own (fq_codel). So an idle LAN reads 1 ms to every peer,
and a busy one 1.3-2.5 ms to a peer behind our switch and 3.5-5.5 ms to one behind
another while the uplinks are full.

The network (the simplest model that conserves every link's capacity):
- LAN: each seat has a link of `--link` MB/s each way on a switch of `--ports` seats; each
  switch is joined to one core by an uplink of `--uplink` MB/s each way. A chunk moves
  as PIECES pieces, each at one seat link's rate, and each piece holds a lane of every
  link it crosses for that long: the sender's up, the receiver's down, and between
  switches the sending switch's uplink and the receiving switch's downlink, which have
  uplink / link lanes (10 for 10 GbE over 1 GbE). A piece starts at the earliest time
  after the piece before it that every link on its path has a free lane (booked in
  request order, gaps filled). So a seat's uploads interleave as TCP's packets do,
  no link ever carries more than its capacity, and a link waiting on a busy receiver
  is free for another's pieces meanwhile. (With whole chunks, PIECES = 1, a chunk
  needed the sender's and the receiver's links free at once for all of its 1.1 s: a
  source's four uploads then waited on its receivers' full downlinks while its own
  link sat idle, and 500 seats took 1.99 times the ideal instead of 1.80.) Latency is
  `LATENCY` each way; CPU but hashing, and disks, are free.
- Calibration (`--calibrate`): the bench's loopback, where nothing limits but each
  daemon's upload limiter, a token bucket one request deep: a request waits until the
  bytes before it are paid for at the rate, then its chunk goes at loopback speed.
  The bounded mesh as the bench runs it; every RTT alike.

`--scale S` makes chunks S times larger than the daemon's 4 MiB (same game size,
links and constants, S times fewer chunks): the plans' chunk choice is most of the run
time, and grows with chunks x seats. Larger chunks take S times longer to cross a link
before they can be served on, and a receiver's 12 fetches queue S times longer on its
link, so the fill time is pessimistic, the more so the larger the party: 2,000 seats
took 2.33, 2.21, 1.93 and 1.80 times the ideal at --scale 32, 16, 8 and 4 (7, 14, 21
and 46 minutes on one core); 500 seats 1.81 and 1.50 at 32 and 8; 100 seats 1.49 and
1.45. The default is 8 (32 MiB chunks); --scale 32 is for a quick look.
The sent-elsewhere memory (a complete holder refuses a chunk it sent another seat
within it: "take it from the one that has it") is made as much longer as a chunk
takes longer to be passed on: sent, hashed and told in the next delta (`pass_on`;
`--no-scale-memory`: not). That ratio decides how often the source sends a chunk twice.

Not modelled: the agreement on the file list (the daemon's needs a complete holder
connected within 60 s: at 2,000 seats one source admits 32), CPU but hashing, disks,
mDNS traffic, QUIC messages' own cost.

    .venv/bin/python bench/partysim.py                 # 100, 500 and 2,000 seats (25 min)
    .venv/bin/python bench/partysim.py --scale 32      # the same, coarser (9 min)
    .venv/bin/python bench/partysim.py --calibrate
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import statistics
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from operator import itemgetter
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
from lanspreadd.core.locality import FAR_LINKS, NEAR_MARGIN, SETTLE, Locality, Probing
from lanspreadd.core.locality import slow as slow_for_link
from lanspreadd.core.mesh import MAX_PEERS, Link, MeshPolicy, last_holders
from lanspreadd.core.plan import Chunk, ChunkKey, DownloadPlan
from lanspreadd.core.redial import MAX_UNCONNECTED, Redial
from lanspreadd.net.dataserver import (
    ASKED_WITHIN,
    ASKERS_PER_HOP,
    UPLOAD_SLOTS,
    sent_elsewhere,
)
from lanspreadd.protocol.messages import MAX_EXCHANGED, FileEntry
from lanspreadd.protocol.session import PING_INTERVAL

IDLE_WAIT = 0.5  # a worker the plan gave nothing asks again after this (Downloader)
LATENCY = 0.0002  # one way, seat to seat (LAN or loopback)
LIST_DELAY = 0.01  # a file list asked for and received, when a source is enlisted
LOOPBACK_RATE = 700e6  # bytes/s of one loopback sendfile stream (bench/datapath.py)
HASH_RATE = 1e9 / 0.95  # SHA-256 of a chunk before its worker asks again (DEVELOPERS.md)
MB = 1e6
SOURCE = 0  # the seat that holds the game from the start
GAME = "game"

# The mesh (app.mesh): daemons start within DAEMON_STARTS, run idle for WARMUP (the
# mesh forms) before the first download may start; every TEND seconds each trims,
# tells its neighbours its peers when they changed, and its RTTs are looked at.
WARMUP = 60.0
DAEMON_STARTS = 10.0
TEND = 5.0  # app.mesh.TEND_INTERVAL
HANDSHAKE = 0.05  # Retry, TLS and the identity proof, seconds
RATE_WINDOW = TEND  # a download's rate, as app.mesh reads it (here averaged exponentially)
PORT = 7777
PIECES = 8  # a chunk crosses the LAN as this many pieces, interleaved with others'

# What QUIC's smoothed RTT would read (`--locality rtt`): the hosts' own turnaround and
# its jitter (exponential, per sample), a few microseconds per switch each way, and a
# full queue at each port on the way that is busy: TCP fills the buffer of whatever
# link is its bottleneck. Queue delay is an M/M/1 queue's (packet time x load / (1 -
# load)) over the last LOAD_WINDOW, at most the port's buffer.
HOST_RTT = 300e-6
JITTER = 200e-6
HOP = 5e-6
PACKET = 1500
SEAT_BUFFER = 125_000  # bytes a 1 GbE access port queues (1 ms)
UPLINK_BUFFER = 1_000_000  # bytes a 10 GbE uplink port queues (0.85 ms)
LOAD_WINDOW = 1.0
LOAD_BUCKET = 0.1
ORACLE_FAR = 0.01  # `--locality oracle`: the RTT added behind another switch, no noise
SRTT_GAIN = 1 / 8  # RFC 9002's smoothing of RTT samples
RTT_FLOOR = 0.001  # aioquic 1.x reads any RTT sample under 1 ms as 1 ms
# RTT samples per second at each end of a connection: acks of its deltas (once a second)
# while either end downloads, of pings and pongs (every PING_INTERVAL) otherwise.
BUSY_SAMPLES = 1 / DELTA_INTERVAL
IDLE_SAMPLES = 1 / PING_INTERVAL

# bench/flashcrowd.py's figures in the README: receivers -> all done, seconds.
MEASURED = {8: 14.5, 16: 16.1, 32: 19.3}
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

    def rtt(self, a: int, b: int, now: float) -> float:
        """The round trip between two seats' QUIC stacks now, without the hosts' jitter."""
        ...

    def far(self, a: int, b: int) -> bool:
        """Whether traffic between the two crosses the core."""
        ...

    def capacity(self) -> float:
        """Bytes/s a seat can receive."""
        ...


class Lanes:
    """One direction of one link: `count` lanes, each a sorted list of booked spans."""

    def __init__(self, count: int) -> None:
        self.lanes: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self.busy: dict[int, float] = {}  # seconds booked, per LOAD_BUCKET of time
        self.pruned = 0  # buckets before this one are forgotten
        self.blocked_until = -math.inf  # a transfer waits for this link until then

    @staticmethod
    def _gap(lane: list[tuple[float, float]], t: float, d: float) -> float:
        # Spans never overlap, so their ends are sorted too: skip those over by `t`.
        for start, end in islice(lane, bisect.bisect_right(lane, t, key=itemgetter(1)), None):
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
        end = t + d
        for bucket in range(int(t / LOAD_BUCKET), int(end / LOAD_BUCKET) + 1):
            start = bucket * LOAD_BUCKET
            overlap = min(end, start + LOAD_BUCKET) - max(t, start)
            if overlap > 0:
                self.busy[bucket] = self.busy.get(bucket, 0.0) + overlap
        for lane in self.lanes:
            if self._gap(lane, t, d) == t:
                bisect.insort(lane, (t, t + d))
                return
        raise AssertionError("no lane free for a span found free")

    def load(self, now: float) -> float:
        """The share of the link's capacity used over the last LOAD_WINDOW (whole
        LOAD_BUCKETs, the one under way not counted)."""
        last = int(now / LOAD_BUCKET)
        buckets = round(LOAD_WINDOW / LOAD_BUCKET)
        while self.pruned < last - buckets:
            self.busy.pop(self.pruned, None)
            self.pruned += 1
        busy = sum(self.busy.get(b, 0.0) for b in range(last - buckets, last))
        return busy / (LOAD_WINDOW * len(self.lanes))


def queued(lanes: Lanes, rate: float, buffer: int, now: float) -> float:
    """Seconds a packet waits at a port sending at `rate` bytes/s: its whole buffer
    while a transfer waits for it (it is a bottleneck: TCP keeps its queue full), else
    an M/M/1 queue at its load."""
    load = lanes.load(now)
    if load >= 1.0 or now < lanes.blocked_until:
        return buffer / rate
    return min(buffer / rate, PACKET / rate * load / (1.0 - load))


class Lan:
    """Seats on switches, switches on one core (see the module docstring)."""

    def __init__(self, seats: int, link: float, uplink: float, ports: int) -> None:
        self.link = link
        self.ports = ports
        switches = (seats + ports - 1) // ports
        self.lanes = max(1, int(uplink / link + 1e-9))
        self.up = [Lanes(1) for _ in range(seats)]
        self.down = [Lanes(1) for _ in range(seats)]
        self.switch_up = [Lanes(self.lanes) for _ in range(switches)]
        self.switch_down = [Lanes(self.lanes) for _ in range(switches)]

    def send(self, sender: int, receiver: int, size: int, now: float) -> tuple[float, float]:
        path = [self.up[sender], self.down[receiver]]
        a, b = sender // self.ports, receiver // self.ports
        if a != b:
            path += [self.switch_up[a], self.switch_down[b]]
        d = size / self.link / PIECES
        t = now
        for _ in range(PIECES):  # each piece after the one before, in any free gap
            while True:
                starts = [link.earliest(t, d, now) for link in path]
                later = max(starts)
                if later == t:
                    break
                for link, start in zip(path, starts, strict=True):
                    if start == later:  # the bottleneck: TCP would fill its queue meanwhile
                        link.blocked_until = max(link.blocked_until, later)
                t = later
            for link in path:
                link.book(t, d)
            t += d
        return t, t

    def far(self, a: int, b: int) -> bool:
        return a // self.ports != b // self.ports

    def capacity(self) -> float:
        return self.link

    def rtt(self, a: int, b: int, now: float) -> float:
        """Both seats' ports toward them, and the four uplink ports between switches."""
        rtt = HOST_RTT + 2 * HOP
        for seat in (a, b):
            rtt += queued(self.down[seat], self.link, SEAT_BUFFER, now)
        if self.far(a, b):
            rtt += 4 * HOP
            rate = self.link * self.lanes
            for switch in (a // self.ports, b // self.ports):
                for lanes in (self.switch_up[switch], self.switch_down[switch]):
                    rtt += queued(lanes, rate, UPLINK_BUFFER, now)
        return rtt


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

    def far(self, a: int, b: int) -> bool:
        return False

    def capacity(self) -> float:
        return LOOPBACK_RATE

    def rtt(self, a: int, b: int, now: float) -> float:
        return HOST_RTT


# -- the mesh: each seat's daemon, its connections and what it measures of them ----------


@dataclass(eq=False)
class Daemon:
    """One seat's daemon as its mesh sees it."""

    index: int
    policy: MeshPolicy
    redial: Redial
    locality: Locality | None
    probing: Probing | None
    running: bool = False
    links: dict[int, float] = field(default_factory=dict)  # peer -> since
    srtt: dict[int, float] = field(default_factory=dict)
    connecting: set[int] = field(default_factory=set)
    dialled: set[int] = field(default_factory=set)  # connected peers we dialled
    known: set[int] = field(default_factory=set)  # unconnected peers Redial keeps
    silent: bool = False  # a dial was refused since Redial last left a newcomer out
    full: float = math.inf  # no known peer makes way for a newcomer named this near
    version: int = 0  # bumped when what we would tell neighbours changed
    told: dict[int, int] = field(default_factory=dict)  # peer -> version last told
    waking: bool = False  # a dial step is due
    made: int = 0  # connections made (ours or theirs)
    area: float = 0.0  # integral of the connection count over time
    area_at: float = 0.0
    most: int = 0  # the most connections at once while downloading

    def count(self, now: float) -> None:
        """Before the connection count changes: its integral to now."""
        self.area += len(self.links) * (now - self.area_at)
        self.area_at = now

    def ids(self) -> set[str]:
        return {str(p) for p in self.links}


class Holdings(Protocol):
    """What the mesh asks of the seats' downloads."""

    def holds(self, i: int) -> bool:
        """Whether seat `i` serves the game, whole or while downloading it."""
        ...

    def whole(self, i: int) -> bool:
        """Whether seat `i` serves the game whole: what exchanges and the policy know."""
        ...

    def slow(self, i: int) -> bool:
        """Whether seat `i` downloads slowly enough to probe (`core.locality.slow`)."""
        ...

    def downloading(self, i: int) -> bool: ...


class Exchanges(ABC):
    """What the daemons tell and measure of one another every TEND: the mesh's talking
    half (`Mesh` is its dialling half)."""

    clock: Clock
    network: Network
    daemons: list[Daemon]
    mode: str
    rng: random.Random
    holds: Callable[[int], bool]
    whole: Callable[[int], bool]
    downloading: Callable[[int], bool]

    @abstractmethod
    def found(self, daemon: Daemon, p: int) -> None: ...

    @abstractmethod
    def close(self, i: int, p: int) -> None: ...

    @abstractmethod
    def links(self, daemon: Daemon) -> list[Link]: ...

    @abstractmethod
    def wake(self, daemon: Daemon, delay: float = 0.0) -> None: ...

    def tend(self, daemon: Daemon) -> None:
        """Every TEND: RTTs, trims, exchanges."""
        now = self.clock.now
        daemon.full = math.inf  # estimates moved
        i = daemon.index
        for p in list(daemon.links):
            busy = self.downloading(i) or self.downloading(p)
            self.measure(daemon, p, TEND * (BUSY_SAMPLES if busy else IDLE_SAMPLES))
        for peer_id in daemon.policy.trim(self.links(daemon), now):
            self.close(i, int(peer_id))
        for p in list(daemon.links):
            if daemon.told.get(p) != daemon.version:
                self.tell(daemon, p)
        self.wake(daemon)
        self.clock.after(TEND, partial(self.tend, daemon))

    def measure(self, daemon: Daemon, p: int, samples: float, both: bool = False) -> None:
        """QUIC's smoothed RTT at our end (and `both`: at p's too) after `samples` more
        samples."""
        now = self.clock.now
        n = max(1, round(samples))
        if self.mode == "oracle":
            rtt = HOST_RTT + (ORACLE_FAR if self.network.far(daemon.index, p) else 0.0)
        else:
            rtt = self.network.rtt(daemon.index, p, now)
        other = self.daemons[p]
        for a, b in ((daemon, other), (other, daemon))[: 2 if both else 1]:
            sample = rtt
            if self.mode != "oracle":  # n samples' mean, floored as aioquic floors each
                sample = max(RTT_FLOOR, rtt + self.rng.gammavariate(n, JITTER / n))
            old = a.srtt.get(b.index)
            srtt = sample if old is None else old + (1 - (1 - SRTT_GAIN) ** n) * (sample - old)
            a.srtt[b.index] = srtt
            if a.locality is not None:
                a.locality.measured(str(b.index), srtt, now)

    def tell(self, daemon: Daemon, p: int) -> None:
        """A PeerExchange to `p`: our other peers and whether each holds the game."""
        daemon.told[p] = daemon.version
        self.refer(daemon, self.daemons[p])

    def refer(self, daemon: Daemon, receiver: Daemon) -> None:
        """`receiver` takes in `daemon`'s PeerExchange (app.mesh.exchanged)."""
        p = receiver.index
        now = self.clock.now
        entries = sorted(
            q for q, since in daemon.links.items() if q != p and now - since >= SETTLE - 1e-9
        )[:MAX_EXCHANGED]
        via = str(daemon.index)
        for q in entries:
            if q == p or q in receiver.links:
                continue
            if receiver.locality is not None:
                receiver.locality.heard(str(q), via)
            self.found(receiver, q)
            if q in receiver.known:  # Redial took it
                receiver.policy.heard(str(q), [GAME] if self.whole(q) else [])

    def changed(self, i: int) -> None:
        """What seat `i` holds changed: its neighbours have something new to tell."""
        for p in self.daemons[i].links:
            self.daemons[p].version += 1


class Mesh(Exchanges):
    """Every seat's connections, through the daemon's own `MeshPolicy`, `Redial` and
    (unless `--locality none`) `Locality`, over a `Network` that says what RTTs read."""

    def __init__(
        self,
        clock: Clock,
        network: Network,
        seats: int,
        max_peers: int,
        locality: str,
        margin: float,
        far_links: int,
        party: Holdings,
        rng: random.Random,
    ) -> None:
        self.clock = clock
        self.network = network
        self.mode = locality
        self.holds = party.holds
        self.whole = party.whole
        self.slow = party.slow
        self.downloading = party.downloading
        self.rng = rng
        self.on_link: Callable[[int, int], None] = lambda _a, _b: None
        self.on_unlink: Callable[[int, int], None] = lambda _a, _b: None
        self.daemons: list[Daemon] = []
        for i in range(seats):
            near = None if locality == "none" else Locality(margin, far_links)
            redial = Redial(rng=random.Random(rng.getrandbits(64)))  # noqa: S311
            probing = None if near is None else Probing(near)
            self.daemons.append(Daemon(i, MeshPolicy(max_peers), redial, near, probing))

    def start(self, i: int) -> None:
        """The daemon starts; mDNS tells it of others. Redial keeps MAX_UNCONNECTED of
        those it is told of unconnected and leaves the rest out: the first it heard."""
        daemon = self.daemons[i]
        daemon.running = True
        daemon.area_at = self.clock.now
        heard = min(MAX_UNCONNECTED, len(self.daemons) - 1)
        others = self.rng.sample(range(len(self.daemons) - 1), heard)
        for p in others:
            self.found(daemon, p if p < i else p + 1)
        self.wake(daemon)
        self.clock.after(self.rng.uniform(0, TEND), partial(self.tend, daemon))

    def found(self, daemon: Daemon, p: int) -> None:
        """Told of a peer (mDNS, or a neighbour's exchange): into the dial schedule, as
        Redial allows. A full schedule (MAX_UNCONNECTED, none silent to push out) leaves
        a newcomer out, unless locality ranks it above the worst peer kept, which then
        makes way (app.mesh.found)."""
        if p == daemon.index or p in daemon.known or p in daemon.links:
            return
        if len(daemon.redial) - len(daemon.links) >= MAX_UNCONNECTED and not daemon.silent:
            worst = self.worst(daemon, p)
            if worst is None:
                return  # what Redial would answer, without asking it
            daemon.redial.gone(str(worst))
            self.forget(daemon, worst)
        dropped = daemon.redial.seen(str(p), host(p), PORT, self.clock.now)
        if dropped == str(p):
            daemon.silent = False  # no address that never answered was there to go
            return
        if dropped is not None:
            self.forget(daemon, int(dropped))
        daemon.known.add(p)
        daemon.full = math.inf

    def worst(self, daemon: Daemon, p: int) -> int | None:
        """The peer kept for dialling that `p` should replace (`Locality.replaces`)."""
        locality = daemon.locality
        if locality is None:
            return None
        estimate = locality.estimate(str(p))
        if estimate is None or estimate >= daemon.full:
            return None  # the sim's economy: none makes way for a newcomer no nearer
        worst = locality.replaces(str(p), map(str, daemon.known))
        if worst is None:
            daemon.full = estimate  # until `known` or the estimates change
            return None
        return int(worst)

    def forget(self, daemon: Daemon, p: int) -> None:
        daemon.known.discard(p)
        daemon.full = math.inf
        daemon.policy.forget([str(p)])

    # -- dialling ------------------------------------------------------------------------

    def wake(self, daemon: Daemon, delay: float = 0.0) -> None:
        if not daemon.waking:
            daemon.waking = True
            self.clock.after(delay, partial(self.dial, daemon))

    def dial(self, daemon: Daemon) -> None:
        """app.mesh's dial step: room for the mesh, holders a download needs, the probe."""
        daemon.waking = False
        now = self.clock.now
        connected, connecting = len(daemon.links), len(daemon.connecting)
        prefer: set[str] = set()
        if self.downloading(daemon.index):
            holders = sum(self.whole(p) for p in daemon.links)
            prefer = daemon.policy.holders_to_dial([GAME], {GAME: holders}, connected, connecting)
            squeeze = connected + connecting + len(prefer) - daemon.policy.hard_cap
            if prefer and squeeze > 0:
                for peer_id in daemon.policy.trim(self.links(daemon), now, squeeze):
                    self.close(daemon.index, int(peer_id))
        probes = self.next_probes(daemon, connected + connecting)
        prefer |= {str(p) for p in probes}
        room = daemon.policy.room(connected, connecting)
        if room <= 0 and not prefer:
            return  # Redial would dial nothing (it notices lost peers at its next call)
        rank = daemon.locality.order if daemon.locality is not None else None
        for dial in daemon.redial.due(now, daemon.ids(), room, prefer, rank):
            p = int(dial.peer_id)
            if p in probes and daemon.probing is not None:
                daemon.probing.dialling(dial.peer_id)
            if p not in daemon.links and p not in daemon.connecting:
                daemon.connecting.add(p)
                self.clock.after(HANDSHAKE, partial(self.connect, daemon, p))
        if room > 0 or prefer:
            self.wake(daemon, max(0.1, daemon.redial.next_wake(now, room, prefer)))

    def next_probes(self, daemon: Daemon, links: int) -> list[int]:
        """While a download runs and locality is searching, peers dialled only to
        measure them (`Probing.pick`)."""
        if daemon.probing is None or not self.slow(daemon.index):
            return []
        free = daemon.policy.hard_cap - links
        holders = daemon.policy.holders()  # dialled for what they hold, not measured
        known = [str(p) for p in daemon.known if str(p) not in holders]
        near_links = daemon.policy.max_peers - daemon.probing.locality.far_links
        picked = daemon.probing.pick(known, daemon.ids(), free, self.clock.now, near_links)
        return [int(p) for p in picked]

    def settle(self, daemon: Daemon, p: int, since: float) -> None:
        """SETTLE after a handshake: a probe is judged on its RTT (kept if it belongs
        among our nearest, or if the mesh has room), and a connection kept is told to
        neighbours and enlisted by downloads."""
        if daemon.links.get(p) != since:
            return
        other = self.daemons[p]
        probing = daemon.probing
        if probing is not None and probing.is_probe(str(p)):
            self.wake(daemon)
            self.measure(daemon, p, SETTLE * BUSY_SAMPLES)
            if not probing.judge(str(p), daemon.ids(), daemon.policy.max_peers):
                self.close(daemon.index, p)
                if str(p) not in daemon.policy.holders():
                    # Forgotten (app.mesh._judge): its place in Redial goes to another.
                    daemon.redial.gone(str(p))
                    self.forget(daemon, p)
                return
        for a, b in ((daemon, other), (other, daemon)):
            a.version += 1
            self.tell(a, b.index)
        self.on_link(daemon.index, p)

    def connect(self, daemon: Daemon, p: int) -> None:
        """A dial's handshake is done: the peer keeps it if its policy admits one more."""
        daemon.connecting.discard(p)
        other = self.daemons[p]
        if not other.running or p in daemon.links or not other.policy.admit(len(other.links) + 1):
            if daemon.probing is not None and daemon.probing.is_probe(str(p)):
                daemon.probing.failed(str(p))
                self.wake(daemon)
            if other.running and p not in daemon.links:
                # Turned away with whom else to try; to Redial the address is silent.
                daemon.silent = True
                self.refer(other, daemon)
            return
        now = self.clock.now
        self.clock.after(SETTLE, partial(self.settle, daemon, p, now))
        daemon.dialled.add(p)
        for a, b in ((daemon, other), (other, daemon)):
            a.count(now)
            a.links[b.index] = now
            a.most = max(a.most, len(a.links)) if self.downloading(a.index) else a.most
            a.made += 1
            a.known.discard(b.index)
            a.full = math.inf
            a.redial.seen(str(b.index), host(b.index), PORT, now, connected=True)
            a.policy.heard(str(b.index), [GAME] if self.whole(b.index) else [])
        self.measure(daemon, p, 1, both=True)  # the handshake's sample

    def close(self, i: int, p: int) -> None:
        a, b = self.daemons[i], self.daemons[p]
        if p not in a.links:
            return
        now = self.clock.now
        settled = now - a.links[p] >= SETTLE - 1e-9
        for x, y in ((a, b), (b, a)):
            x.count(now)
            del x.links[y.index]
            x.dialled.discard(y.index)
            x.srtt.pop(y.index, None)
            x.told.pop(y.index, None)
            if x.probing is not None:
                x.probing.failed(str(y.index))
            x.known.add(y.index)  # Redial keeps it, to redial
            x.full = math.inf
            x.version += settled
            self.wake(x)
        self.on_unlink(i, p)

    def links(self, daemon: Daemon) -> list[Link]:
        """What app.mesh passes to trim: a link serves a download of either end; while
        we download, locality calls the far ones beyond those it keeps useless, if we
        dialled them (app.mesh._links). A complete holder keeps its far askers: what it
        sends crosses their uplinks, theirs to judge, and its upload is what a crowd
        waits on."""
        far: set[str] = set()
        if daemon.locality is not None and self.downloading(daemon.index):
            whole = [str(p) for p in daemon.links if self.whole(p)]
            dialled = {str(p) for p in daemon.dialled}
            far = set(daemon.locality.far(daemon.ids(), last_holders(whole), dialled))
        return [
            Link(str(p), since, self.useful(daemon.index, p) and str(p) not in far)
            for p, since in daemon.links.items()
        ]

    def useful(self, i: int, p: int) -> bool:
        return (self.downloading(i) and self.holds(p)) or (self.holds(i) and self.downloading(p))


def host(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


# -- the downloads: each seat's plan, workers and what it serves ---------------------------


@dataclass(eq=False)
class Worker:
    """One data connection of one download to one source."""

    seat: int
    source: int
    partial: bool
    epoch: int  # the source's enlistment it belongs to: it ends with it


@dataclass(eq=False)
class Seat:
    index: int
    start: float
    plan: DownloadPlan | None  # None for the source
    done: float | None = None
    downloading: bool = False
    # Serving.
    uploading: int = 0
    sent: dict[ChunkKey, tuple[int, float]] = field(default_factory=dict)
    asked: dict[int, float] = field(default_factory=dict)  # seat -> when it last asked
    told: list[ChunkKey] = field(default_factory=list)
    fresh: list[ChunkKey] = field(default_factory=list)
    partial_at: set[int] = field(default_factory=set)  # seats that take our chunks
    # Downloading.
    slots: int = MAX_STREAMS
    queue: deque[Worker] = field(default_factory=deque)
    idle: dict[int, list[Worker]] = field(default_factory=dict)
    # Sources whose last answer was nothing, and nothing since could change it (the plan
    # is deterministic: asking again would give nothing again); idle sources not in it.
    empty: set[int] = field(default_factory=set)
    ready: set[int] = field(default_factory=set)
    refused: Counter[int] = field(default_factory=Counter)
    complete: set[int] = field(default_factory=set)  # complete sources in the plan
    candidates: set[int] = field(default_factory=set)  # peers to enlist
    epochs: Counter[int] = field(default_factory=Counter)  # enlistments lost, per source
    from_source: int = 0  # chunks completed from the source seat
    rate: float = 0.0  # bytes/s received, averaged over RATE_WINDOW (as app.mesh: a tend)
    rate_at: float = 0.0
    links_area: float = 0.0  # the connection-count integral at the start (at the end:
    # over the download)

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
    connections: list[float]  # each seat's mean connections while it downloaded
    most: int  # the most connections any seat had at once while downloading
    made: float  # connections made per seat, warm-up and probes included
    via_core: float  # the share of chunk bytes that crossed the core
    source_copies: float
    wall: float
    unfinished: int


class Fetching(ABC):
    """Each download's workers and each seat's data server: a party's chunk-level half
    (`Party` is its download-level half)."""

    clock: Clock
    network: Network
    rng: random.Random
    seats: list[Seat]
    bytes: int
    core_bytes: int
    stretch: float  # the sent-elsewhere memory made longer with --scale (pass_on)

    def plan(self, seat: Seat) -> DownloadPlan:
        assert seat.plan is not None
        return seat.plan

    @abstractmethod
    def finish(self, seat: Seat) -> None: ...

    def start_workers(self, seat: Seat, source: int, partial: bool) -> None:
        epoch = seat.epochs[source]
        for _ in range(STREAMS_PER_PARTIAL if partial else STREAMS_PER_SOURCE):
            seat.queue.append(Worker(seat.index, source, partial, epoch))
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
            seat.queue.extend(seat.idle.pop(s, ()))
        self.drain(seat)

    def drain(self, seat: Seat) -> None:
        """Workers take free fetch slots in the order they asked for them."""
        while seat.slots and seat.queue and seat.downloading:
            self.take(seat, seat.queue.popleft())

    def take(self, seat: Seat, worker: Worker) -> None:
        plan = self.plan(seat)
        sid = str(worker.source)
        if sid not in plan.sources or worker.epoch != seat.epochs[worker.source]:
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
            server.asked[worker.seat] = now
            if len(server.asked) > ASKERS_PER_HOP:
                asked_within = ASKED_WITHIN * self.stretch
                server.asked = {p: t for p, t in server.asked.items() if now - t < asked_within}
            window = sent_elsewhere(len(server.asked)) * self.stretch
            recent = now - last[1] < window if last is not None else False
            if last is not None and last[0] != worker.seat and recent:
                self.clock.after(LATENCY, lambda: self.refused(worker, chunk))  # NOT_HELD
                return
            server.sent[chunk.key] = (worker.seat, now)
        server.uploading += 1
        self.bytes += chunk.length
        if self.network.far(worker.source, worker.seat):
            self.core_bytes += chunk.length
        held, sent = self.network.send(worker.source, worker.seat, chunk.length, now)
        self.clock.at(sent, lambda: self.uploaded(server))
        verified = held + LATENCY + chunk.length / HASH_RATE
        self.clock.at(verified, lambda: self.received(worker, chunk))

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
        if worker.epoch == seat.epochs[worker.source]:
            self.plan(seat).source_lost(str(worker.source))
            seat.epochs[worker.source] += 1
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
        now = self.clock.now
        decay = math.exp(-(now - seat.rate_at) / RATE_WINDOW)
        seat.rate, seat.rate_at = seat.rate * decay + chunk.length / RATE_WINDOW, now
        if worker.epoch != seat.epochs[worker.source]:
            self.drain(seat)  # the connection closed while it came: given back already
            return
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


class Party(Fetching):
    """One simulated party: seats, their downloads and what they serve."""

    def __init__(
        self,
        receivers: int,
        size: int,
        chunk_size: int,
        network: Network,
        capacity: float,
        start_window: float,
        mesh: Callable[[Clock, Holdings], Mesh],
        rng: random.Random,
        scale_memory: bool = True,
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
        stretch = pass_on(chunk_size, capacity) / pass_on(CHUNK_SIZE, capacity)
        self.stretch = stretch if scale_memory else 1.0
        self.chunks = count + 1
        self.seats = [
            Seat(
                i,
                0.0 if i == SOURCE else WARMUP + rng.uniform(0, start_window),
                None if i == SOURCE else DownloadPlan(self.files, chunk_size, rng=rng_of(rng)),
            )
            for i in range(n)
        ]
        self.seats[SOURCE].done = 0.0
        self.left = receivers
        self.bytes = 0
        self.core_bytes = 0
        self.capacity = capacity
        self.mesh = mesh(self.clock, self)
        self.mesh.on_link = self.linked
        self.mesh.on_unlink = self.unlinked

    def holds(self, i: int) -> bool:
        seat = self.seats[i]
        return seat.downloading or seat.done is not None

    def whole(self, i: int) -> bool:
        return self.seats[i].done is not None

    def slow(self, i: int) -> bool:
        seat = self.seats[i]
        if not seat.downloading:
            return False
        rate = seat.rate * math.exp(-(self.clock.now - seat.rate_at) / RATE_WINDOW)
        return slow_for_link(rate, self.capacity)

    def downloading(self, i: int) -> bool:
        return self.seats[i].downloading

    def links(self, seat: Seat) -> dict[int, float]:
        return self.mesh.daemons[seat.index].links

    def run(self, limit: float) -> None:
        for i in range(len(self.seats)):
            self.clock.at(self.rng.uniform(0, DAEMON_STARTS), partial(self.mesh.start, i))
        for seat in self.seats[1:]:
            self.clock.at(seat.start, partial(self.begin, seat))
        self.clock.run(lambda: self.left == 0, WARMUP + limit)

    # -- connections come and go ---------------------------------------------------------

    def linked(self, a: int, b: int) -> None:
        """A new connection: a download at either end enlists the other at its next look."""
        for s, o in ((a, b), (b, a)):
            seat = self.seats[s]
            if seat.downloading and self.holds(o) and str(o) not in self.plan(seat).sources:
                seat.candidates.add(o)

    def unlinked(self, a: int, b: int) -> None:
        """A closed connection: each end's download loses the other as a source."""
        for s, o in ((a, b), (b, a)):
            seat = self.seats[s]
            seat.candidates.discard(o)
            self.seats[o].partial_at.discard(s)
            self.drop(seat, o)

    def drop(self, seat: Seat, source: int) -> None:
        """A download's source is gone (or withdrew its map): its workers end."""
        if not seat.downloading or str(source) not in self.plan(seat).sources:
            return
        self.plan(seat).source_lost(str(source))
        seat.complete.discard(source)
        seat.epochs[source] += 1
        seat.idle.pop(source, None)
        seat.empty.discard(source)
        seat.ready.discard(source)
        seat.forget(list(seat.empty))  # its chunks in flight are pending again
        self.poke(seat)

    # -- a download's life -------------------------------------------------------

    def begin(self, seat: Seat) -> None:
        """Download called: complete peers are the first sources; our (empty) map goes out."""
        seat.downloading = True
        daemon = self.mesh.daemons[seat.index]
        daemon.count(self.clock.now)
        seat.links_area = daemon.area
        daemon.most = len(daemon.links)
        self.mesh.changed(seat.index)
        plan = self.plan(seat)
        for p in self.links(seat):
            peer = self.seats[p]
            if peer.done is not None:
                plan.add_source(str(p))
                seat.complete.add(p)
                self.start_workers(seat, p, False)
            elif peer.downloading:
                seat.candidates.add(p)
                peer.candidates.add(seat.index)
        self.recruit(seat)
        self.mesh.wake(daemon)
        self.clock.after(DELTA_INTERVAL, lambda: self.tell(seat))
        self.clock.after(IDLE_WAIT, lambda: self.tick(seat))

    def finish(self, seat: Seat) -> None:
        seat.done = self.clock.now
        seat.downloading = False
        daemon = self.mesh.daemons[seat.index]
        daemon.count(seat.done)
        seat.links_area = daemon.area - seat.links_area  # now over the whole download
        self.mesh.changed(seat.index)
        self.left -= 1
        for r in list(seat.partial_at):  # our map withdrawn: we stop being a partial source
            self.drop(self.seats[r], seat.index)
        seat.partial_at.clear()
        for p in self.links(seat):  # announced whole: enlisted as a complete source
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
                plan = self.plan(taker)
                plan.add_held(str(seat.index), fresh)
                if any(key not in plan.verified for key in fresh):
                    # Else the plan answers as it did (the sim's economy).
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
        links = self.links(seat)
        for p in list(seat.candidates):
            if p not in links:
                seat.candidates.discard(p)
                continue
            if str(p) in plan.sources:
                if self.seats[p].done is None or p in seat.complete:
                    seat.candidates.discard(p)
                continue  # a partial source now whole: enlisted once dropped
            seat.candidates.discard(p)
            self.clock.after(LIST_DELAY, partial(self.join, seat, p))
        self.clock.after(RECRUIT_INTERVAL, lambda: self.recruit(seat))

    def join(self, seat: Seat, p: int) -> None:
        plan = self.plan(seat)
        if not seat.downloading or str(p) in plan.sources or p not in self.links(seat):
            return
        peer = self.seats[p]
        if peer.done is not None:
            plan.add_source(str(p))
            seat.complete.add(p)
        elif peer.downloading:
            plan.add_source(str(p), held=peer.told)
            peer.partial_at.add(seat.index)
        else:
            return
        seat.forget((p,))
        self.start_workers(seat, p, peer.done is None)

    def result(self, wall: float) -> Result:
        receivers = self.seats[1:]
        done = [s.done - WARMUP for s in receivers if s.done is not None]
        daemons = self.mesh.daemons
        connections = []
        for s in receivers:
            if s.done is None:
                daemons[s.index].count(self.clock.now)
                area, end = daemons[s.index].area - s.links_area, self.clock.now
            else:
                area, end = s.links_area, s.done
            connections.append(area / max(end - s.start, 1e-9))
        copies = sum(s.from_source for s in receivers) / self.chunks
        return Result(
            len(self.seats),
            self.chunks,
            done,
            connections,
            max(daemons[s.index].most for s in receivers),
            sum(d.made for d in daemons) / 2 / len(daemons),
            self.core_bytes / max(1, self.bytes),
            copies,
            wall,
            len(receivers) - len(done),
        )


def pass_on(chunk_size: int, link: float) -> float:
    """Seconds before a chunk one seat received can be asked of it by another: sent,
    hashed, and told in the next delta (DELTA_INTERVAL, at worst)."""
    return chunk_size / link + chunk_size / HASH_RATE + DELTA_INTERVAL


def rng_of(rng: random.Random) -> random.Random:
    """Each download's own shuffle, as each daemon has its own."""
    return random.Random(rng.getrandbits(64))  # noqa: S311 (a simulation: repeatable)


@dataclass(frozen=True)
class MeshSettings:
    max_peers: int = MAX_PEERS
    locality: str = "rtt"  # rtt, oracle or none
    margin: float = NEAR_MARGIN
    far_links: int = FAR_LINKS


def simulate(
    receivers: int,
    size: int,
    chunk_size: int,
    network: Network,
    start_window: float,
    settings: MeshSettings,
    seed: int,
    limit: float,
    scale_memory: bool = True,
) -> Result:
    began = time.monotonic()
    rng = random.Random(seed)  # noqa: S311
    mesh_rng = rng_of(rng)

    def mesh(clock: Clock, party: Holdings) -> Mesh:
        return Mesh(
            clock,
            network,
            receivers + 1,
            settings.max_peers,
            settings.locality,
            settings.margin,
            settings.far_links,
            party,
            mesh_rng,
        )

    capacity = network.capacity()
    party = Party(
        receivers, size, chunk_size, network, capacity, start_window, mesh, rng, scale_memory
    )
    party.run(limit)
    return party.result(time.monotonic() - began)


HEAD = (
    f"{'seats':>6} {'chunks':>6} {'all done s':>10} {'ideal s':>8} {'time/ideal':>10} "
    f"{'median s':>8} {'conn/seat med/max':>17} {'dials/seat':>10} {'via core':>8} "
    f"{'source copies':>13} {'done':>11} {'sim s':>6}"
)


def row(result: Result, ideal: float, limit: float) -> str:
    done = max(result.done) if not result.unfinished else limit
    median = statistics.median(result.done) if result.done else limit
    conns = f"{statistics.median(result.connections):.1f}/{result.most}"
    receivers = result.seats - 1
    finished = f"{receivers - result.unfinished}/{receivers}"
    mark = ">" if result.unfinished else ""
    return (
        f"{result.seats:>6} {result.chunks:>6} {mark + f'{done:.1f}':>10} {ideal:>8.1f} "
        f"{mark + f'{done / ideal:.2f}':>10} {median:>8.1f} {conns:>17} {result.made:>10.1f} "
        f"{result.via_core:>8.0%} {result.source_copies:>13.2f} {finished:>11} "
        f"{result.wall:>6.1f}"
    )


CALIBRATION_SEEDS = 5
CALIBRATION_HEAD = (
    f"{'receivers':>9} {'simulated s median':>18} {'min-max':>11} {'measured s':>10} "
    f"{'simulated/measured':>18} {'min-max':>9}"
)


def calibrate(seed: int) -> list[str]:
    """The bench's own parameters: 100 MiB, 10 MiB/s upload caps, all start at once,
    through the bounded mesh as the bench runs it (loopback: every RTT alike, so
    locality finds nothing to sort); CALIBRATION_SEEDS runs from `seed` on."""
    lines = [CALIBRATION_HEAD]
    for receivers, measured in MEASURED.items():
        times = []
        for run in range(seed, seed + CALIBRATION_SEEDS):
            network = Loopback(receivers + 1, CALIBRATION_RATE)
            result = simulate(
                receivers, CALIBRATION_SIZE, CHUNK_SIZE, network, 0.0, MeshSettings(), run, 600.0
            )
            times.append(max(result.done) if not result.unfinished else math.inf)
        low, middle, high = min(times), statistics.median(times), max(times)
        lines.append(
            f"{receivers:>9} {middle:>18.1f} {f'{low:.1f}-{high:.1f}':>11} {measured:>10.1f} "
            f"{middle / measured:>18.2f} {f'{low / measured:.2f}-{high / measured:.2f}':>9}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--size", type=float, default=20.0, help="game GB (default 20)")
    parser.add_argument("--scale", type=int, default=8, help="chunks this many times larger")
    parser.add_argument("--link", type=float, default=117.0, help="seat link MB/s each way")
    parser.add_argument("--uplink", type=float, default=1170.0, help="switch uplink MB/s")
    parser.add_argument("--ports", type=int, default=48, help="seats per switch")
    parser.add_argument("--start-window", type=float, default=10.0, help="seats start within")
    parser.add_argument("--max-peers", type=int, default=MAX_PEERS, help="MeshPolicy's cap")
    parser.add_argument(
        "--locality",
        choices=["rtt", "oracle", "none"],
        default="rtt",
        help="what ranks peers: modelled QUIC RTTs, the true switch, or nothing",
    )
    parser.add_argument("--margin", type=float, default=NEAR_MARGIN * 1e3, help="near, ms")
    parser.add_argument("--far-links", type=int, default=FAR_LINKS, help="far peers kept")
    parser.add_argument(
        "--scale-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sent-elsewhere memory grows with --scale (default)",
    )
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
    settings = MeshSettings(args.max_peers, args.locality, args.margin / 1e3, args.far_links)
    stretch = pass_on(chunk_size, link) / pass_on(CHUNK_SIZE, link) if args.scale_memory else 1
    print(
        f"{args.size:g} GB game in {chunk_size >> 20} MiB chunks (--scale {args.scale}, "
        f"sent-elsewhere memory x{stretch:.2f}); "
        f"{args.link:g} MB/s seat links, {args.ports} per switch, {args.uplink:g} MB/s "
        f"uplinks; starts within {args.start_window:g} s after {WARMUP:g} s of idle mesh; "
        f"--max-peers {args.max_peers}, locality: {args.locality}"
        + (
            f" (margin {args.margin:g} ms, {args.far_links} far kept)"
            if args.locality != "none"
            else ""
        )
        + "; times from the first possible start",
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
            settings,
            args.seed,
            limit,
            args.scale_memory,
        )
        failed |= bool(result.unfinished)
        print(row(result, ideal, limit), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
