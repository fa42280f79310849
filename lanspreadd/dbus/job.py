"""A Job on D-Bus, shaped like UDisks2's `org.freedesktop.UDisks2.Job`.

Desktop clients cache properties and trust PropertiesChanged, so a change is told
once, with only what changed, at most every `CHANGE_INTERVAL` per job, and always a
last time when the job ends, before `Completed`.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from dbus_fast import PropertyAccess
from dbus_fast.service import dbus_property, method, signal

from lanspreadd.core.operations import Job, JobState
from lanspreadd.dbus.conventions import Exported
from lanspreadd.dbus.errors import dbus_error_name, dbus_errors

JOB_IFACE = "org.lanspread.Lanspread1.Job"
CHANGE_INTERVAL = 0.2


def microseconds(wall: float | None) -> int:
    """Seconds since the epoch as UDisks2 gives times: µs, 0 for unknown."""
    return int(wall * 1_000_000) if wall else 0


class JobInterface(Exported):
    """One job's object; `cancel` is the daemon's, authorised by the caller of `Cancel`."""

    ARG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {
        "Completed": ("success", "message", "state", "error_name")
    }
    CONSTANT = frozenset({"Operation", "GameId", "Game", "StartTime", "StartedByUID"})

    def __init__(
        self,
        job: Job,
        game_path: str,
        cancel: Callable[[Job], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(JOB_IFACE)
        self.job = job
        self.game_path = game_path
        self._cancel = cancel
        self._loop = loop
        self._told = self.changeable()  # what clients hold: sent with InterfacesAdded
        self._last_told = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def changeable(self) -> dict[str, Any]:
        """The properties that change while the job lives, as clients see them."""
        j = self.job
        fraction = j.fraction
        return {
            "State": str(j.state),
            "Progress": fraction if fraction is not None else 0.0,
            "ProgressValid": fraction is not None,
            "Bytes": j.bytes_total,
            "BytesDone": j.bytes_done,
            "Rate": int(j.rate),
            "ExpectedEndTime": microseconds(j.expected_end(time.time())),
            "Cancelable": j.state is JobState.RUNNING,
            "Sources": dict(j.sources),
            "ErrorName": dbus_error_name(j.error_name),
            "ErrorMessage": j.error_message,
        }

    def progressed(self) -> None:
        """Tell what changed now, or when the interval since the last telling is up."""
        if self._pending is not None:
            return
        wait = self._last_told + CHANGE_INTERVAL - self._loop.time()
        if wait <= 0:
            self._tell()
        else:
            self._pending = self._loop.call_later(wait, self._tell)

    def ended(self) -> None:
        """The last PropertiesChanged, then Completed."""
        self.stop_telling()
        self._tell()
        job = self.job
        self.Completed(
            job.state is JobState.FINISHED,
            job.error_message,
            str(job.state),
            dbus_error_name(job.error_name),
        )

    def stop_telling(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def _tell(self) -> None:
        self._pending = None
        self._last_told = self._loop.time()
        now = self.changeable()
        changed = {k: v for k, v in now.items() if self._told.get(k) != v}
        self._told = now
        if changed:
            self.emit_properties_changed(changed)

    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> "s":
        return str(self.job.kind)

    @dbus_property(access=PropertyAccess.READ)
    def GameId(self) -> "s":
        return self.job.game_id

    @dbus_property(access=PropertyAccess.READ)
    def Game(self) -> "o":
        return self.game_path

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return str(self.job.state)

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> "d":
        return self.job.fraction or 0.0

    @dbus_property(access=PropertyAccess.READ)
    def ProgressValid(self) -> "b":
        return self.job.fraction is not None

    @dbus_property(access=PropertyAccess.READ)
    def Bytes(self) -> "t":
        return self.job.bytes_total

    @dbus_property(access=PropertyAccess.READ)
    def BytesDone(self) -> "t":
        return self.job.bytes_done

    @dbus_property(access=PropertyAccess.READ)
    def Rate(self) -> "t":
        return int(self.job.rate)

    @dbus_property(access=PropertyAccess.READ)
    def StartTime(self) -> "t":
        return microseconds(self.job.started_at)

    @dbus_property(access=PropertyAccess.READ)
    def ExpectedEndTime(self) -> "t":
        return microseconds(self.job.expected_end(time.time()))

    @dbus_property(access=PropertyAccess.READ)
    def Cancelable(self) -> "b":
        return self.job.state is JobState.RUNNING

    @dbus_property(access=PropertyAccess.READ)
    def StartedByUID(self) -> "u":
        return self.job.started_by_uid

    @dbus_property(access=PropertyAccess.READ)
    def Sources(self) -> "a{st}":
        return dict(self.job.sources)

    @dbus_property(access=PropertyAccess.READ)
    def ErrorName(self) -> "s":
        return dbus_error_name(self.job.error_name)

    @dbus_property(access=PropertyAccess.READ)
    def ErrorMessage(self) -> "s":
        return self.job.error_message

    @method()
    async def Cancel(self) -> None:
        with dbus_errors():
            await self._cancel(self.job)

    @signal()
    def Completed(self, success: bool, message: str, state: str, error_name: str) -> "bsss":
        return [success, message, state, error_name]
