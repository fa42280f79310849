"""sd_notify: READY, RELOADING, STATUS, WATCHDOG and STOPPING for a Type=notify-reload unit."""

from __future__ import annotations

import asyncio
import os
import time

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self.ready_sent = False

    def send(self, state: str) -> None:
        if self._sd is not None:
            self._sd.notify(state)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
        self.ready_sent = True

    def reloading(self) -> None:
        """Tell systemd a reload began; its clock lets systemd match it to the SIGHUP it sent.

        Type=notify-reload makes `systemctl reload` wait for READY=1 after this, so the
        catalog is re-read by the time the command returns.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the catalog")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half of WATCHDOG_USEC, when the watchdog is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    async def watchdog(self) -> None:
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
