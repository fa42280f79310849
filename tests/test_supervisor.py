"""Supervision policies with real asyncio tasks on a fake clock, and a required service
failing for real."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from lanspreadd.app.supervisor import Policy, Service, Supervisor
from tests.support import Daemon, FakeClock

RESTART_DELAY = 5.0


def test_policies() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], Counter[str]]:
        clock = FakeClock()
        failures: list[tuple[str, str]] = []
        runs: Counter[str] = Counter()
        supervisor = Supervisor(lambda name, error: failures.append((name, error)), clock.sleep)

        def failing(name: str) -> Service:
            async def run() -> None:
                runs[name] += 1
                raise RuntimeError(f"{name} broke")

            return Service(name, run, Policy(name), restart_delay=RESTART_DELAY)

        async with asyncio.TaskGroup() as tg:
            required = tg.create_task(supervisor.supervise(failing("required")))
            best = tg.create_task(supervisor.supervise(failing("best-effort")))
            restart = tg.create_task(supervisor.supervise(failing("restart")))
            await required
            await best
            for done in range(1, 4):
                await clock.until_sleeping()
                assert runs["restart"] == done
                clock.advance(RESTART_DELAY - 0.1)
                assert clock.sleeping == 1, "restarted before its delay"
                clock.advance(0.1)
            await clock.until_sleeping()
            supervisor.stopping.set()  # ends the delay without the clock moving
            await restart
        return failures, runs

    failures, runs = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert failures == [("required", "RuntimeError: required broke")]
    assert runs["required"] == 1
    assert runs["best-effort"] == 1
    assert runs["restart"] == 4, "a Restart service comes back after each delay until shutdown"


def test_port_in_use_stops_the_daemon_with_a_named_component(daemon: Daemon) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", daemon.port))
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 1
    log = daemon.stderr()
    assert "required service quic-server failed" in log
    assert "Address already in use" in log
