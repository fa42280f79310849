"""The benchmarks run end to end at a tiny size and print every row they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.datapath import INSTALL_ROWS, INSTALL_TOOLS, TRANSFER_ROWS, TRANSFER_TOOLS, find_tool

ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"\s+(\d+(?:\.\d+)?)"
RANGE = r"\s+\d+-\d+"
PAIR = r"\s+(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)"  # median/max
SPAN = r"\s+(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)"  # min-max


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_datapath_rows(tmp_path: Path) -> None:
    missing = sorted({t for t in TRANSFER_TOOLS + INSTALL_TOOLS if find_tool(t) is None})
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: bench/setup (as root) installs the tools "
            "the benchmark compares with; CI does not run it"
        )
    result = subprocess.run(
        [sys.executable, "bench/datapath.py", "--size", "8M", "--runs", "1"],
        cwd=ROOT,
        env=os.environ | {"TMPDIR": str(tmp_path)},  # bus sockets within 108 bytes
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Each transfer row: MB/s, the runs' range, receiver and sender CPU s/GB, ratios to
    # rsync+fsync and sendfile.
    for row in TRANSFER_ROWS:
        found = re.search(rf"^{re.escape(row)}{NUMBER}{RANGE}{NUMBER * 4}$", out, re.MULTILINE)
        assert found, f"no row {row!r} in:\n{out}"
        assert float(found[1]) > 0, found[0]
    # Each install row: MB/s, the runs' range, CPU s/GB, lanspread's speed against it.
    for row in INSTALL_ROWS:
        found = re.search(rf"^{re.escape(row)}{NUMBER}{RANGE}{NUMBER * 2}$", out, re.MULTILINE)
        assert found, f"no row {row!r} in:\n{out}"
        assert float(found[1]) > 0, found[0]
    for target in ("/ rsync+fsync", "receiver CPU s/GB", "3 sources / 1 source", "install / cp"):
        assert re.search(rf"{re.escape(target)}{NUMBER}\s+[<>]=", out), f"{target!r} in:\n{out}"
    # Its servers (rsync, nginx, daemons) and its temporary directory went with it.
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in Path("/proc").glob("[0-9]*") if str(tmp_path) in cmdline(p)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flashcrowd_rows(tmp_path: Path) -> None:
    """Two receivers fill from one capped source: the swarm and mesh rows are printed,
    their ratios agree with their times, and nothing is left behind."""
    tiny = ["--receivers", "2", "--size", "8M", "--rate", "4M", "--idle", "1", "--settle", "0"]
    bounded = ["--ready-timeout", "60", "--mesh-timeout", "30"]
    result = subprocess.run(
        [sys.executable, "bench/flashcrowd.py", *tiny, *bounded],
        cwd=ROOT,
        env=os.environ | {"TMPDIR": str(tmp_path)},  # bus sockets within 108 bytes
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # receivers, game MB, all done, median, source-only bound, swarm ideal, time/ideal,
    # % from receivers, copies the source sent, downloads that succeeded.
    swarm = re.search(rf"^\s+2{NUMBER * 8}\s+2/2$", out, re.MULTILINE)
    assert swarm, f"no swarm row in:\n{out}"
    size, done, median, bound, ideal, ratio, share, copies = map(float, swarm.groups())
    assert size == pytest.approx(8.4, abs=0.1)
    assert bound == pytest.approx(2 * ideal, abs=0.1)
    assert ideal == pytest.approx(2.0, abs=0.1)  # 8 MiB at 4 MiB/s
    assert 0 < median <= done
    assert ratio == pytest.approx(done / ideal, abs=0.06)
    assert 0 <= share <= 100
    assert 1 <= copies <= 2.01  # at least one whole copy, at most one per receiver
    # receivers, on the bus, source seen, 4 peers, full mesh (s); peers per daemon
    # (min/median/max: each sees the other two); the crowd: s until every receiver had
    # a holder and its peers, most connections (source/receivers); idle CPU (source %,
    # receivers %, all daemons in cores); CPU s of the download (source, receivers).
    mesh = re.search(
        rf"^\s+2{NUMBER * 4}\s+2/2/2{NUMBER}{PAIR}{NUMBER}{PAIR}{NUMBER * 2}{PAIR}$",
        out,
        re.MULTILINE,
    )
    assert mesh, f"no mesh row in:\n{out}"
    on_bus, seen, few, full, reached, peak_source, peak_receiver = map(float, mesh.groups()[:7])
    assert 0 < on_bus <= seen
    assert seen <= 60 and few <= 30 and full <= 30
    assert reached <= 30 and peak_source == peak_receiver == 2
    for target in ("all done / swarm ideal", "idle CPU %", "to a holder and 4 peers"):
        assert re.search(rf"{re.escape(target)}.*{NUMBER}\s+<=", out), f"{target!r} in:\n{out}"
    # Its daemons, buses, tmpfs and namespace went with it.
    assert list(tmp_path.iterdir()) == []
    assert not [p for p in Path("/proc").glob("[0-9]*") if str(tmp_path) in cmdline(p)]
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()


def cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


# A party row's figures after seats and chunks.
PARTY_COLUMNS: tuple[str, ...] = ("done", "ideal", "ratio", "median", "conns", "most")
PARTY_COLUMNS += ("dials", "core", "copies", "wall")


def test_partysim_rows() -> None:
    """A tiny party fills through the bounded mesh, every seat finishing, and the
    calibration prints its rows."""
    seats = (4, 60)  # one switch; two, whose seats the mesh mostly keeps apart
    argv = ["--seats", *map(str, seats), "--size", "0.2", "--scale", "1"]
    result = subprocess.run(
        [sys.executable, "bench/partysim.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "MiB chunks (--scale 1," in out and "locality: rtt" in out, out
    # seats, chunks, all done, ideal, time/ideal, median, connections median/max, dials
    # per seat, share of bytes across the core, copies the source sent, receivers done,
    # wall seconds.
    rows = {}
    for n in seats:
        found = re.search(
            rf"^\s+{n}\s+49{NUMBER * 4}{PAIR}{NUMBER}\s+(\d+)%{NUMBER}\s+{n - 1}/{n - 1}{NUMBER}$",
            out,
            re.MULTILINE,
        )
        assert found, f"no row for {n} seats in:\n{out}"
        row = rows[n] = dict(zip(PARTY_COLUMNS, map(float, found.groups()), strict=True))
        assert row["ideal"] == pytest.approx(0.2e9 / 117e6, abs=0.05)
        assert row["ideal"] <= row["done"] and 0 < row["median"] <= row["done"]
        assert row["ratio"] == pytest.approx(row["done"] / row["ideal"], rel=0.05)  # rounded
        assert 1 <= row["conns"] <= row["most"] and row["dials"] >= 1
        assert 1 <= row["copies"] <= n - 1
    assert rows[4]["conns"] == rows[4]["most"] == 3  # all connected: the mesh dials up to 4
    assert rows[4]["core"] == 0  # one switch: nothing crosses the core
    assert rows[60]["most"] <= 4 * 8  # never over the hard cap (MeshPolicy's default)
    assert 0 < rows[60]["core"] < 100
    result = subprocess.run(
        [sys.executable, "bench/partysim.py", "--calibrate"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for receivers in (8, 16, 32):
        found = re.search(
            rf"^\s+{receivers}{NUMBER}{SPAN}{NUMBER * 2}{SPAN}$", result.stdout, re.MULTILINE
        )
        assert found, f"no calibration row for {receivers} in:\n{result.stdout}"
        simulated, low, high, measured, ratio, low_ratio, high_ratio = map(float, found.groups())
        assert 10.0 <= low <= simulated <= high  # never faster than the swarm ideal
        assert ratio == pytest.approx(simulated / measured, abs=0.01)
        assert low_ratio == pytest.approx(low / measured, abs=0.01)
        assert high_ratio == pytest.approx(high / measured, abs=0.01)
