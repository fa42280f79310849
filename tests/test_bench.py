"""bench/datapath.py runs end to end at a tiny size and prints every row it promises."""

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


def cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""
