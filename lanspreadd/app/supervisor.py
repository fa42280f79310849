"""Supervised long-lived services with an explicit policy each.

Required services stop the daemon when they fail; Restart services come back
after a delay; BestEffort services log and stay down. Every service task is
owned by one TaskGroup and joined on shutdown.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Policy(enum.Enum):
    REQUIRED = "required"
    RESTART = "restart"
    BEST_EFFORT = "best-effort"


@dataclass(frozen=True)
class Service:
    name: str
    run: Callable[[], Awaitable[None]]
    policy: Policy
    restart_delay: float = 5.0


FailureHandler = Callable[[str, str], None]
Sleep = Callable[[float], Awaitable[None]]


class Supervisor:
    def __init__(self, on_required_failure: FailureHandler, sleep: Sleep = asyncio.sleep) -> None:
        self.on_required_failure = on_required_failure
        # Injected so tests can run restart delays on a fake clock without waiting them out.
        self.sleep = sleep
        self.stopping = asyncio.Event()

    async def supervise(self, service: Service) -> None:
        while not self.stopping.is_set():
            try:
                await service.run()
                if self.stopping.is_set():
                    return
                error = "exited unexpectedly"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("service %s failed", service.name)
                error = f"{type(exc).__name__}: {exc}"
            if service.policy is Policy.REQUIRED:
                self.on_required_failure(service.name, error)
                return
            if service.policy is Policy.BEST_EFFORT:
                log.warning("service %s stopped: %s (not restarted)", service.name, error)
                return
            log.warning(
                "service %s stopped: %s; restarting in %.0fs",
                service.name,
                error,
                service.restart_delay,
            )
            await self._pause(service.restart_delay)

    async def _pause(self, delay: float) -> None:
        """Wait out a restart delay, cut short when the daemon stops."""
        stopped = asyncio.ensure_future(self.stopping.wait())
        paused = asyncio.ensure_future(self.sleep(delay))
        try:
            await asyncio.wait((stopped, paused), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            paused.cancel()
            await asyncio.gather(stopped, paused, return_exceptions=True)
