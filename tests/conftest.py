from __future__ import annotations

import asyncio
import asyncio.runners
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns import Lan
from tests.support import Daemon, PrivateBus, system_user

pytest_plugins = ("dbusmock.pytest_fixtures",)

FINISHING_GRACE = 5.0  # for a thread that is on its way out when its test ends


@pytest.fixture(autouse=True)
def leaves_nothing_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test fails if it leaves a thread running or an asyncio task pending: either
    hides a missed cancel or join, and would go on disturbing the tests after it.

    Threads: every thread the test started, daemon or not, must end within a short
    grace after the test's fixtures are torn down. Tasks: tests run their own loops
    with asyncio.run, which silently cancels what is still pending when the main
    coroutine returns; the hook below records those tasks instead of letting them go.
    """
    before = set(threading.enumerate())
    left_pending: list[str] = []
    cancel_all_tasks = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]

    def recording(loop: asyncio.AbstractEventLoop) -> None:
        left_pending.extend(repr(task) for task in asyncio.all_tasks(loop))
        cancel_all_tasks(loop)

    monkeypatch.setattr(asyncio.runners, "_cancel_all_tasks", recording)
    yield
    deadline = time.monotonic() + FINISHING_GRACE
    started = [t for t in threading.enumerate() if t not in before]
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [f"thread {t!r}" for t in started if t.is_alive()]
    left += [f"asyncio task {task}" for task in left_pending]
    if left:
        pytest.fail("left running by the test:\n  " + "\n  ".join(left), pytrace=False)


@pytest.fixture
def private_bus(tmp_path: Path) -> Iterator[PrivateBus]:
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    bus = PrivateBus(bus_dir)
    yield bus
    bus.stop()


@pytest.fixture
def game_dir(tmp_path: Path) -> Path:
    path = tmp_path / "games"
    path.mkdir()
    return path


@pytest.fixture
def daemon(private_bus: PrivateBus, game_dir: Path, tmp_path: Path) -> Iterator[Daemon]:
    """A real lanspreadd on a private bus; started by the test with .start()."""
    d = Daemon(private_bus, game_dir, tmp_path / "state")
    d.state_dir.mkdir()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait(10)


@pytest.fixture
def make_peer(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Real daemons, each on its own private bus with its own game directory."""
    made: list[tuple[PrivateBus, Daemon]] = []

    def make(name: str, **kwargs: Any) -> Daemon:
        base = tmp_path / name
        (base / "bus").mkdir(parents=True)
        (base / "games").mkdir()
        bus = PrivateBus(base / "bus")
        daemon = Daemon(bus, base / "games", base / "state", name=name, **kwargs)
        made.append((bus, daemon))
        return daemon

    yield make
    for bus, daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        bus.stop()


@pytest.fixture
def lan() -> Iterator[Lan]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        network = Lan()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr!r}")
    try:
        yield network
    finally:
        network.delete()
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert network.tag not in leftover


@pytest.fixture
def lan_peer(lan: Lan, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Real daemons with mDNS, each in its own namespace on the test's own bridge:
    mDNS on loopback would also find every other test's daemons on this machine."""
    made: list[Daemon] = []

    def make(name: str, *extra_args: str) -> Daemon:
        ns, address = lan.add_host(len(made))
        base = tmp_path / name
        (base / "bus").mkdir(parents=True)
        (base / "games").mkdir()
        daemon = Daemon(
            PrivateBus(base / "bus"),
            base / "games",
            base / "state",
            name=name,
            listen=address,
            mdns=True,
            netns=ns,
            port=41800,
            extra_args=extra_args,
        )
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        daemon.bus.stop()


@pytest.fixture
def service_user() -> Iterator[str]:
    """The `lanspread` system user the packaged unit runs as (created if missing)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    with system_user("lanspread") as user:
        yield user


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Real small filesystems (size in MiB), for disk-full and low-disk cases."""
    mounts: list[Path] = []

    def make(size_mib: int) -> Path:
        mount = tmp_path / f"tmpfs{len(mounts)}"
        mount.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_tmpfs(make_tmpfs: Callable[[int], Path]) -> Path:
    """A real 2 MiB filesystem, for disk-full cases."""
    return make_tmpfs(2)
