"""The README's client examples run as written, against a real daemon downloading a game.

A reader copies them; one that no longer matches the D-Bus contract is a bug."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Daemon, wait_for
from tests.test_desktop_clients import glib_python, slow_source_and_receiver
from tests.test_peers import GAME, connect, sources_of

README = Path(__file__).resolve().parent.parent / "README.md"


def example(marker: str) -> str:
    """The README's Python block that contains `marker`."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"one README example with {marker!r}"
    return found[0]


@pytest.mark.slow
def test_the_pygobject_example_follows_a_download_to_its_end(
    make_peer: Callable[..., Daemon], tmp_path: Path
) -> None:
    python = glib_python()
    if python is None:
        pytest.skip("Debian's python3 with PyGObject (python3-gi) is not installed")
    source, receiver = slow_source_and_receiver(make_peer)
    connect(receiver, source)
    wait_for(lambda: sources_of(receiver) == 1, 30, "the source")
    script = tmp_path / "follow.py"
    script.write_text(example("gi.repository"))
    # GLib's "system bus" is the receiver's private bus here.
    env = os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": receiver.bus.address}
    done = subprocess.run(
        [python, str(script), GAME], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "finished ", lines
    progress = [float(line.split("%")[0]) for line in lines[:-1]]
    assert len(progress) >= 2, lines  # a slow source: several steps were shown
    assert progress == sorted(progress)
    assert progress[-1] == 100.0
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready"
