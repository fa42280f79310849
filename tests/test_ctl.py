"""lanspreadctl behaviour a user sees: progress on a terminal, monitor, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lanspreadd.archive.writer import Entry
from lanspreadd.core.catalog import CatalogGame, write_catalog
from lanspreadd.core.operations import Job, JobState, OperationTable, OpKind
from lanspreadd.errors import Busy
from tests.support import BUS_NAME, Daemon, make_game, match_rules, wait_for

GAME = "sample-game"


def test_progress_bar_on_a_terminal(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME, "1.0", [Entry("big.bin", bytes(384 << 20))])
    daemon.start()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanspreadctl", "--address", daemon.bus.address, "install", GAME],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    os.close(primary)
    assert proc.wait(60) == 0
    assert proc.stdout is not None
    assert "install sample-game: finished" in proc.stdout.read()
    proc.stdout.close()
    drawn = "".join(chunks)
    assert "\rinstall sample-game [" in drawn
    assert "100.0%" in drawn
    assert "384.0 MiB/384.0 MiB" in drawn


def test_no_progress_bar_without_a_terminal(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME)
    daemon.start()
    result = daemon.ctl("install", GAME)
    assert result.returncode == 0
    assert "\r" not in result.stderr


def test_monitor_prints_events_until_the_daemon_stops(daemon: Daemon, game_dir: Path) -> None:
    make_game(game_dir, GAME)
    daemon.start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lanspreadctl",
            "--address",
            daemon.bus.address,
            "--json",
            "monitor",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )

    def subscribed() -> bool:
        rules = ",".join(match_rules(daemon.bus.address, proc.pid))
        return f"sender='{BUS_NAME}'" in rules and "member='NameOwnerChanged'" in rules

    wait_for(subscribed, 30, "the monitor to subscribe")  # before anything happens
    assert daemon.ctl("install", GAME).returncode == 0
    daemon.stop()
    assert proc.wait(30) == 3
    assert proc.stdout is not None
    events = [json.loads(line) for line in proc.stdout.read().splitlines()]
    proc.stdout.close()
    members = {e.get("member") for e in events}
    assert {"InterfacesAdded", "PropertiesChanged", "Completed"} <= members
    assert events[-1] == {"event": "daemon-stopped"}


def test_job_rate_and_single_outcome() -> None:
    job = Job("g", OpKind.INSTALL)
    job.update(0, 1000, now=10.0)
    job.update(500, 1000, now=11.0)
    assert job.rate == 500.0
    job.update(1000, 1000, now=14.0)
    assert job.rate == 500.0 / 3  # the sample older than the window is dropped
    assert job.finish(JobState.FINISHED) is True
    assert job.finish(JobState.FAILED, "x", "y") is False
    assert job.state is JobState.FINISHED


def test_operation_table_is_one_per_game() -> None:
    table = OperationTable()
    job = table.begin("g", OpKind.INSTALL)
    with pytest.raises(Busy, match="install is running"):
        table.begin("g", OpKind.UNINSTALL)
    other = table.begin("h", OpKind.INSTALL)
    table.end(job)
    assert table.active() == {"h"}
    table.end(other)


TERMINAL_ATTACKS = "\x1b]0;owned\x07\x1b[2J\u202eexe.gnp\nfake-game  Ready  yes"


def _raw_controls(text: str) -> list[str]:
    """Characters a terminal would act on rather than show (newlines aside)."""
    return [ch for ch in text if ch != "\n" and not ch.isprintable()]


def test_human_output_escapes_what_a_terminal_would_act_on(daemon: Daemon, tmp_path: Path) -> None:
    """Names and error texts may come from other machines: printed raw they re-title
    or clear the terminal, reverse text (U+202E) or forge table rows. Human output
    escapes them; --json stays exact."""
    catalog = tmp_path / "game.db"
    write_catalog(catalog, [CatalogGame("odd", TERMINAL_ATTACKS, TERMINAL_ATTACKS, 1, "1.0")])
    daemon.extra_args = ("--catalog", str(catalog))
    daemon.start()

    games = daemon.ctl("games")
    assert games.returncode == 0
    assert _raw_controls(games.stdout) == []
    # Header, one row (no forged one) and the catalog's revision line.
    assert len(games.stdout.strip().splitlines()) == 3
    assert "\\x1b]0;owned\\x07" in games.stdout and "\\u202e" in games.stdout

    shown = daemon.ctl("show", "odd")
    assert _raw_controls(shown.stdout) == []
    assert "fake-game" in shown.stdout
    assert not any(line.startswith("fake-game") for line in shown.stdout.splitlines())

    exact = daemon.ctl_json("show", "odd")
    assert exact["name"] == TERMINAL_ATTACKS

    # An error that quotes what it was given.
    refused = daemon.ctl("connect", "\x1b]0;owned\x07:99999")
    assert refused.returncode != 0
    assert _raw_controls(refused.stderr) == []
    assert "owned" in refused.stderr


def test_a_failure_names_the_job_once(daemon: Daemon, make_tmpfs: Callable[[int], Path]) -> None:
    """A game dir the daemon cannot write to (issue 10 saw `/srv/games`) used to fail
    with 'install of X failed: install of X failed: [Errno 30] ...'."""
    games = make_tmpfs(128)
    make_game(games, GAME)
    subprocess.run(["mount", "-o", "remount,ro", str(games)], check=True)
    daemon.game_dir = games
    daemon.start()

    outcome = json.loads(daemon.ctl("--json", "install", GAME).stdout)
    assert outcome["state"] == "failed"
    assert "Read-only file system" in outcome["error_message"]
    assert "failed" not in outcome["error_message"]  # it says why; the job has a name

    human = daemon.ctl("install", GAME)
    assert human.returncode == 1
    assert human.stdout.startswith("install sample-game: failed: ")
    assert human.stdout.count("failed") == 1
    assert "Read-only file system" in human.stdout

    logged = [json.loads(line)["line"] for line in daemon.ctl("--json", "logs").stdout.splitlines()]
    lines = [line for line in logged if "Read-only" in line]
    assert len(lines) == 2, logged  # one per attempt
    for line in lines:
        assert line.count("install of sample-game failed: ") == 1, line
        assert line.count("failed") == 1, line


def test_session_bus_found_or_named_missing(daemon: Daemon, tmp_path: Path) -> None:
    """Like libdbus, `--session` falls back on $XDG_RUNTIME_DIR/bus; with no session bus
    at all it says so and exits 3 (it was a dbus-fast traceback and exit 1)."""
    daemon.start()
    runtime_dir = Path(daemon.bus.address.removeprefix("unix:path=")).parent
    assert (runtime_dir / "bus").is_socket()
    env = {k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY")}

    def ctl(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lanspreadctl", *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    found = ctl("--session", "games", XDG_RUNTIME_DIR=str(runtime_dir))
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("ID")

    missing = ctl("--session", "games", XDG_RUNTIME_DIR=str(tmp_path))
    assert missing.returncode == 3
    assert missing.stderr.startswith("lanspreadctl: no session bus: DBUS_SESSION_BUS_ADDRESS")
    assert "Traceback" not in missing.stderr
    as_json = ctl("--json", "--session", "games", XDG_RUNTIME_DIR=str(tmp_path))
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["message"].startswith("no session bus")


def test_every_bus_option_is_explained() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "lanspreadctl", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = shown[shown.index("options:") :]
    for option in ("--system", "--session", "--address ADDRESS", "--json"):
        line = next(line for line in options.splitlines() if line.strip().startswith(option))
        assert line.strip() != option, f"{option} has no help text"


def test_a_wait_ends_when_the_daemon_is_killed(daemon: Daemon, game_dir: Path) -> None:
    """`install` waited forever on a Completed signal that a killed daemon never sends."""
    make_game(game_dir, GAME, "1.0", [Entry("big.bin", bytes(384 << 20))])
    daemon.start()
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "lanspreadctl", "--address", daemon.bus.address),
            *("--json", "install", GAME),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
    )
    os.close(secondary)
    drawn = ""
    while "\rinstall sample-game [" not in drawn:  # it follows the job now
        drawn += os.read(primary, 4096).decode(errors="replace")
    daemon.stop(signal.SIGKILL)
    assert proc.wait(30) == 3
    with contextlib.suppress(OSError):  # EIO once the last writer has closed the pty
        while data := os.read(primary, 4096):
            drawn += data.decode(errors="replace")
    os.close(primary)
    assert "100.0%" not in drawn, "the install finished before the daemon was killed"
    assert proc.stdout is not None
    assert json.loads(proc.stdout.read()) == {
        "error": "daemon-stopped",
        "message": "lanspreadd stopped while waiting for install sample-game",
    }
    proc.stdout.close()
    assert "\nlanspreadctl: lanspreadd stopped while waiting for install sample-game" in drawn


def test_following_the_log_ends_when_the_daemon_stops(daemon: Daemon) -> None:
    daemon.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lanspreadctl", "--address", daemon.bus.address, "logs", "-f"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert "lanspreadd ready" in proc.stdout.readline()  # it follows the log now
    daemon.stop()
    assert proc.wait(30) == 3
    assert "lanspreadd stopped while waiting for log lines" in proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
