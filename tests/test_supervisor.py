"""Supervision policies with real asyncio tasks, and a required service failing for real."""

from __future__ import annotations

import asyncio
import socket

from lanspreadd.app.supervisor import Policy, Service, Supervisor
from tests.support import Daemon


def test_policies() -> None:
    async def scenario() -> tuple[list[tuple[str, str]], dict[str, int]]:
        failures: list[tuple[str, str]] = []
        runs = {"required": 0, "restart": 0, "best-effort": 0}
        supervisor = Supervisor(lambda name, error: failures.append((name, error)))

        def failing(name: str) -> Service:
            async def run() -> None:
                runs[name] += 1
                raise RuntimeError(f"{name} broke")

            return Service(name, run, Policy(name), restart_delay=0.01)

        async with asyncio.TaskGroup() as tg:
            required = tg.create_task(supervisor.supervise(failing("required")))
            best = tg.create_task(supervisor.supervise(failing("best-effort")))
            restart = tg.create_task(supervisor.supervise(failing("restart")))
            await required
            await best
            await asyncio.sleep(0.2)
            supervisor.stopping.set()
            await restart
        return failures, runs

    failures, runs = asyncio.run(scenario())
    assert failures == [("required", "RuntimeError: required broke")]
    assert runs["required"] == 1
    assert runs["best-effort"] == 1
    assert runs["restart"] > 3, "a Restart service comes back until shutdown"


def test_port_in_use_stops_the_daemon_with_a_named_component(daemon: Daemon) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", daemon.port))
        daemon.start(wait=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 1
    log = daemon.stderr()
    assert "required service quic-server failed" in log
    assert "Address already in use" in log
