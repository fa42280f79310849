"""Fixtures of the booted-systemd test: one package build, cached roots, booted machines.

Machines live for the whole run (booting costs seconds, making a root minutes) and are
destroyed at its end, failed or not; a failing test prints the daemon's journal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.booted.machine import TIMINGS, Lan, Machine, build_deb, cached_root, sweep_leftovers

PLAYER = "player"
TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "ip", "tar", "dpkg-buildpackage")


def timed(step: str, action: Callable[[], Path]) -> Path:
    started = time.monotonic()
    result = action()
    TIMINGS[step] = time.monotonic() - started
    return result


@pytest.fixture(scope="session")
def booted_host() -> None:
    """Root and the tools; CI has them (scripts/setup), elsewhere the test is skipped."""
    problem = None
    if os.geteuid() != 0:
        problem = "the booted-systemd test needs root"
    else:
        missing = [t for t in TOOLS if shutil.which(t) is None and t != "dpkg-buildpackage"]
        if missing:
            problem = f"the booted-systemd test needs {', '.join(missing)} (scripts/setup)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    sweep_leftovers()


@pytest.fixture(scope="session", autouse=True)
def unwind_on_sigterm() -> Iterator[None]:
    """SIGTERM (a CI time-out, a developer's kill) unwinds like Ctrl-C, so the machines'
    teardown runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def deb(booted_host: None) -> Path:
    """The package built from the checkout, or the one LANSPREAD_DEB names (to try a
    build of another commit)."""
    given = os.environ.get("LANSPREAD_DEB")
    if given:
        return Path(given).resolve(strict=True)
    return timed("packaging/build-deb", build_deb)


@pytest.fixture(scope="session")
def base_root(booted_host: None) -> Path:
    return timed("Debian 13 root (debootstrap or cache)", cached_root)


@pytest.fixture(scope="session")
def lan(booted_host: None) -> Iterator[Lan]:
    network = Lan()
    yield network
    network.close()


def boot(name: str, base_root: Path, deb: Path, lan: Lan) -> Iterator[Machine]:
    started = time.monotonic()
    machine = Machine(name, base_root, deb, lan)
    try:
        TIMINGS[f"{name}: unpack and apt install"] = time.monotonic() - started
        TIMINGS[f"{name}: boot"] = machine.boot()
        yield machine
    finally:
        machine.destroy()


@pytest.fixture(scope="session")
def alpha(base_root: Path, deb: Path, lan: Lan) -> Iterator[Machine]:
    yield from boot("alpha", base_root, deb, lan)


@pytest.fixture(scope="session")
def beta(base_root: Path, deb: Path, lan: Lan) -> Iterator[Machine]:
    yield from boot("beta", base_root, deb, lan)


@pytest.fixture(scope="session")
def player(alpha: Machine) -> str:
    """A user of alpha without a login session: polkit refuses them every change."""
    alpha.run("useradd", "--create-home", PLAYER)
    return PLAYER


@pytest.fixture(scope="session")
def peers(alpha: Machine, beta: Machine) -> tuple[Machine, Machine]:
    """alpha and beta have found each other over mDNS."""
    for machine in (alpha, beta):
        connected = json.loads(
            machine.run(
                "lanspreadctl", "--json", "wait-peers", "1", "--timeout", "60", timeout=90
            ).stdout
        )
        other = beta if machine is alpha else alpha
        assert [p["name"] for p in connected] == [other.name], connected
    return alpha, beta


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.stash[FAILED] = bool(getattr(report, "failed", False))
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def journal_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing test shows what the machines' daemons logged."""
    yield
    if not request.node.stash.get(FAILED, False):
        return
    for name in ("alpha", "beta"):
        if name in request.fixturenames:
            machine: Machine = request.getfixturevalue(name)
            if machine.leader is not None:
                result = machine.run(
                    "journalctl", "--no-pager", "-n", "60", "-u", "lanspreadd", check=False
                )
                print(f"---- {name}: journalctl -u lanspreadd\n{result.stdout}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("booted-systemd test: seconds per step")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f}  {step}")
