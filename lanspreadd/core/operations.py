"""The operation table: at most one operation per game, each a Job with progress."""

from __future__ import annotations

import enum
import itertools
import threading
import time
from dataclasses import dataclass, field

from lanspreadd.core.escape import escape_unsafe
from lanspreadd.errors import Busy

RATE_WINDOW = 2.0


class OpKind(enum.StrEnum):
    INSTALL = "install"
    UPDATE = "update"
    UNINSTALL = "uninstall"
    REMOVE = "remove"
    DOWNLOAD = "download"
    STREAM_INSTALL = "stream-install"


class JobState(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PEERS_GONE = "peers-gone"


_job_ids = itertools.count(1)


@dataclass
class Job:
    game_id: str
    kind: OpKind
    id: int = field(default_factory=lambda: next(_job_ids))
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    state: JobState = JobState.RUNNING
    error_name: str = ""
    error_message: str = ""
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # wall clock, for clients
    started_by_uid: int = 0  # who asked for it (0: root, or the daemon itself)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    install_after: bool = False
    sources: dict[str, int] = field(default_factory=dict)  # bytes received per peer id
    _samples: list[tuple[float, int]] = field(default_factory=list)

    def update(self, done: int, total: int, now: float) -> None:
        """Record progress; the rate is bytes over the last RATE_WINDOW seconds."""
        self.bytes_done = done
        self.bytes_total = max(total, done)
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.pop(0)
        first_t, first_done = self._samples[0]
        span = now - first_t
        self.rate = (done - first_done) / span if span > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        """How far along, 0..1; None while the total is unknown."""
        if self.state is JobState.FINISHED:
            return 1.0
        return min(1.0, self.bytes_done / self.bytes_total) if self.bytes_total else None

    def expected_end(self, now: float) -> float | None:
        """When it should end at the current rate (wall clock); None if nobody can tell."""
        if self.state is not JobState.RUNNING or not self.bytes_total or self.rate <= 0:
            return None
        return now + max(0, self.bytes_total - self.bytes_done) / self.rate

    def finish(self, state: JobState, error_name: str = "", message: str = "") -> bool:
        """Settle the job once; later calls are ignored so there is exactly one outcome."""
        if self.state is not JobState.RUNNING:
            return False
        self.state = state
        self.error_name = error_name
        self.error_message = escape_unsafe(message)
        self.rate = 0.0
        return True


class OperationTable:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def begin(self, game_id: str, kind: OpKind) -> Job:
        current = self.jobs.get(game_id)
        if current is not None:
            raise Busy(f"{game_id} is busy: {current.kind} is running (job {current.id})")
        job = Job(game_id, kind)
        self.jobs[game_id] = job
        return job

    def end(self, job: Job) -> None:
        if self.jobs.get(job.game_id) is job:
            del self.jobs[job.game_id]

    def get(self, game_id: str) -> Job | None:
        return self.jobs.get(game_id)

    def active(self) -> set[str]:
        return set(self.jobs)
