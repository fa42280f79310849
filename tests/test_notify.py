"""sd_notify against a real NOTIFY_SOCKET, and configuration errors at start-up."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support import Daemon


def receive_until(sock: socket.socket, wanted: str, timeout: float = 20) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(wanted in m for m in messages):
            return messages
    raise AssertionError(f"{wanted!r} never arrived; got {messages}")


def test_ready_watchdog_status_and_stopping(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        daemon.env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        daemon.start(wait=False)
        ready = receive_until(sock, "READY=1")
        assert any("STATUS=serving" in m for m in ready)
        assert any(f"MAINPID={daemon.proc.pid}" in m for m in ready)  # type: ignore[union-attr]
        pings = [m for m in receive_until(sock, "WATCHDOG=1") if "WATCHDOG=1" in m]
        pings += [m for m in receive_until(sock, "WATCHDOG=1") if "WATCHDOG=1" in m]
        assert len(pings) >= 2, "the watchdog is kept alive"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1")
        assert daemon.proc.wait(30) == 0
    assert "lanspreadd stopped" in daemon.stderr()


def test_sighup_reload_is_announced_and_done_before_ready(daemon: Daemon, tmp_path: Path) -> None:
    """What Type=notify-reload needs: RELOADING=1 stamped after the signal, READY=1 when done."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        daemon.env = {"NOTIFY_SOCKET": str(path)}
        daemon.start(wait=False)
        receive_until(sock, "READY=1")
        assert daemon.proc is not None
        signalled = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        daemon.proc.send_signal(signal.SIGHUP)
        messages = receive_until(sock, "READY=1")
        reloading = next(m for m in messages if "RELOADING=1" in m)
        stamp = int(reloading.split("MONOTONIC_USEC=")[1].split("\n")[0])
        assert stamp >= signalled
        assert messages.index(reloading) < next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert "catalog reloaded" in daemon.stderr()


def lanspreadd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanspreadd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_errors_are_clear(tmp_path: Path) -> None:
    config = tmp_path / "lanspreadd.toml"
    config.write_text('game_dir = "/srv/games"\nport = "many"\n')
    result = lanspreadd("--config", str(config))
    assert result.returncode == 2
    assert "port must be int" in result.stderr

    config.write_text("gamedir = '/srv'\n")
    result = lanspreadd("--config", str(config))
    assert result.returncode == 2
    assert "unknown keys gamedir" in result.stderr

    config.write_text("port = [\n")
    result = lanspreadd("--config", str(config))
    assert result.returncode == 2
    assert "not valid TOML" in result.stderr

    result = lanspreadd("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr

    config.write_text("")
    result = lanspreadd("--config", str(config), "--port", "70000")
    assert result.returncode == 2
    assert "out of range" in result.stderr

    result = lanspreadd("--config", str(config), "--bus", "nonsense")
    assert result.returncode == 2
    assert "--bus must be" in result.stderr


def test_config_file_values_and_flag_precedence(tmp_path: Path) -> None:
    from lanspreadd.app.config import from_args

    config = tmp_path / "lanspreadd.toml"
    config.write_text(
        'game_dir = "/srv/games"\nport = 5000\nname = "lan-box"\nlog_level = "debug"\n'
        "fallback_scan_interval = 60\nmdns = false\n"
    )
    loaded = from_args(["--config", str(config), "--port", "6000"])
    assert loaded.game_dir == Path("/srv/games")
    assert loaded.port == 6000
    assert loaded.name == "lan-box"
    assert loaded.mdns is False
    assert loaded.fallback_scan_interval == 60.0
    assert loaded.explicit == {"port"}
    assert loaded.use_polkit is True
    assert from_args(["--config", str(config), "--bus", "session"]).use_polkit is False


def test_a_second_daemon_on_the_same_bus_refuses(daemon: Daemon, tmp_path: Path) -> None:
    daemon.start()
    second = Daemon(daemon.bus, daemon.game_dir, tmp_path / "state2")
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 1
    assert "already owned" in second.stderr()
    assert daemon.ctl("status").returncode == 0
