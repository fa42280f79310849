"""A job's progress reaches observers at most every 0.2 s, and its last news always."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from lanspreadd.app.config import Config
from lanspreadd.app.jobs import PROGRESS_INTERVAL, JobRunner
from lanspreadd.app.views import Observers
from lanspreadd.core.operations import Job, OpKind


class Told:
    """An observer that records the bytes each progress report carried."""

    def __init__(self) -> None:
        self.done: list[tuple[float, int]] = []
        self.news = asyncio.Event()

    def job_progress(self, job: Job) -> None:
        self.done.append((time.monotonic(), job.bytes_done))
        self.news.set()

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None  # the other events do not matter here


def test_an_update_inside_the_interval_is_told_when_it_ends() -> None:
    """A chunk that lands just after a report used to wait for the next chunk: with a
    slow source, seconds."""
    told = Told()
    observers = Observers([cast(Any, told)])
    none = cast(Any, None)
    runner = JobRunner(Config(), none, none, none, observers, none, none, none)
    job = Job("quake", OpKind.DOWNLOAD)

    async def body() -> None:
        runner._progress(job, 100, 1000)
        runner._progress(job, 200, 1000)  # inside the interval: held, not dropped
        runner._progress(job, 300, 1000)
        assert [d for _, d in told.done] == [100]
        told.news.clear()
        await asyncio.wait_for(told.news.wait(), 5)
        assert [d for _, d in told.done] == [100, 300]
        assert told.done[1][0] - told.done[0][0] >= PROGRESS_INTERVAL * 0.9

    asyncio.run(body())
