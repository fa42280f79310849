from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, PrivateBus, system_user

pytest_plugins = ("dbusmock.pytest_fixtures",)


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
