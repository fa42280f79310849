"""The D-Bus conventions of issue 13 on the package, seen from inside a booted Debian 13.

The development venv has dbus-fast 5.2 from PyPI; the package runs on Debian's
python3-dbus-fast (2.44, compiled) under Python 3.13, where the bus's signal methods
that lanspreadd overrides (`dbus.conventions.ObjectManagerBus`) might not be reached.
So a client runs inside the machine (tests/booted/bus_client.py, under the machine's
/usr/bin/python3 and that same python3-dbus-fast, on the system bus) and watches a
download from the other machine as a desktop app would: the job appearing at the root's
ObjectManager, its PropertiesChanged, Completed, and its removal 10 s later. A second
download is cancelled through Job.Cancel; a player who started nothing may not. busctl
and dbus-send check the introspection and the standard errors.

The game is four of rarfile's compressed samples, downloaded (not installed: their
members overlap), from a source whose upload is limited so that it takes seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.booted.machine import TIMINGS, Machine
from tests.booted.test_booted_systemd import (
    UNIT,
    archive_hashes,
    forget,
    seed,
    show,
    wait_game,
)
from tests.support import BUS_NAME, ERR, MANAGER, ROOT, SAMPLES

pytestmark = pytest.mark.timeout(900)

GAME, VERSION = "supertuxkart", "1.4"
GAME_PATH = f"{ROOT}/games/{GAME}"
# rarfile's compressed samples: 1,214 bytes in four files (four chunk requests), and
# version.ini.
ARCHIVES = ("rar5-solid.rar", "rar3-solid.rar", "rar5-dups.rar", "rar5-hlink.rar")
# The source's first chunk goes at once, the others after the bytes before them at
# this rate: about 15 s for the whole game, seconds between the chunks.
UPLOAD_LIMIT = 64
CONFIG = "/etc/lanspread/lanspreadd.toml"
JOB_IFACE = "org.lanspread.Lanspread1.Job"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
CONTRACT = "/usr/share/dbus-1/interfaces/org.lanspread.Lanspread1.xml"
JOB_PROPERTIES = {
    *("Operation", "GameId", "Game", "State", "Progress", "ProgressValid", "Bytes"),
    *("BytesDone", "Rate", "StartTime", "ExpectedEndTime", "Cancelable", "StartedByUID"),
    *("Sources", "ErrorName", "ErrorMessage"),
}
JOB_LINGER = 10.0  # an ended job's object stays this long
CHANGE_INTERVAL = 0.2  # at most one PropertiesChanged per job this often
DEBIAN_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("bus_client.py")

Event = dict[str, Any]


@pytest.fixture(autouse=True)
def timed_test(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    TIMINGS[request.node.name] = time.monotonic() - started


# ---- the client inside alpha --------------------------------------------------------------
class Watcher:
    """bus_client.py watching alpha's system bus: its events, each read as it comes."""

    def __init__(self, machine: Machine, script: str) -> None:
        self.proc = subprocess.Popen(
            machine.command(DEBIAN_PYTHON, script, "watch"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.events: list[Event] = []
        self._partial = b""

    def _read(self, deadline: float) -> bool:
        """Read until at least one more event came; False at the deadline."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        fd = self.proc.stdout.fileno()
        had = len(self.events)
        while len(self.events) == had:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False
            data = os.read(fd, 1 << 16)
            if not data:
                code = self.proc.wait(10)
                raise AssertionError(f"the client exited ({code}): {self.proc.stderr.read()!r}")
            *lines, self._partial = (self._partial + data).split(b"\n")
            self.events += [json.loads(line) for line in lines]
        return True

    def until(self, wanted: Callable[[Event], bool], what: str, timeout: float = 60) -> Event:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for event in self.events[checked:]:
                if wanted(event):
                    return event
            checked = len(self.events)
            if not self._read(deadline):
                raise AssertionError(f"the client saw no {what} within {timeout:g} s")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the client ends at the end of its input
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # nsenter; the client inside goes with the machine
            self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def added(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "added" and e["path"] == path


def removed(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "removed" and e["path"] == path


def completed(path: str) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "completed" and e["path"] == path


def job_changes(events: list[Event], path: str) -> list[Event]:
    return [e for e in events if e["event"] == "changed" and e["path"] == path]


def follow_job(events: list[Event], path: str, known: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's properties after each PropertiesChanged, from what InterfacesAdded
    gave; each must carry changed values only."""
    props = dict(known)
    seen = []
    for event in job_changes(events, path):
        assert event["interface"] == JOB_IFACE, event
        changed = event["changed"]
        assert changed, f"an empty PropertiesChanged on {path}"
        assert set(changed) <= JOB_PROPERTIES, set(changed) - JOB_PROPERTIES
        again = {k: v for k, v in changed.items() if props.get(k) == v}
        assert not again, f"PropertiesChanged on {path} told unchanged values: {again}"
        props.update(changed)
        seen.append(dict(props))
    return seen


def strays(events: list[Event]) -> list[Event]:
    """ObjectManager signals that did not come from the root: a desktop client's object
    manager never sees them."""
    return [e for e in events if e["event"] in ("added", "removed") and e["from"] != ROOT]


@pytest.fixture(scope="module")
def client(alpha: Machine) -> str:
    return alpha.put(CLIENT)


@pytest.fixture
def watcher(alpha: Machine, client: str) -> Iterator[Watcher]:
    """The client, ready: its match rules are in place."""
    started = Watcher(alpha, client)
    try:
        started.until(lambda e: e["event"] == "ready", "start")
        yield started
    finally:
        started.close()


def cancel_as(machine: Machine, client: str, job: str, user: str | None = None) -> Event:
    """Job.Cancel through the client, as root or as `user`: its reply."""
    out = machine.run(DEBIAN_PYTHON, client, "cancel", job, user=user).stdout
    reply: Event = json.loads(out)
    return reply


# ---- a source that sends slowly -------------------------------------------------------
def restart_and_reconnect(alpha: Machine, beta: Machine) -> None:
    beta.run("systemctl", "restart", UNIT)
    for machine in (alpha, beta):
        machine.run("lanspreadctl", "wait-peers", "1", "--timeout", "60", timeout=90)


@pytest.fixture(scope="module")
def slow_source(
    peers: tuple[Machine, Machine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Machine, Machine]]:
    """beta serves the game with its upload limited; alpha has none of it. Both as
    they were afterwards."""
    alpha, beta = peers
    forget(alpha, GAME)
    forget(beta, GAME)
    seed(beta, GAME, [SAMPLES / a for a in ARCHIVES], VERSION, tmp_path_factory.mktemp("seed"))
    beta.run("cp", CONFIG, f"{CONFIG}.orig")
    try:
        beta.run("sh", "-c", f"echo 'upload_limit = {UPLOAD_LIMIT}' >> {CONFIG}")
        restart_and_reconnect(alpha, beta)
        wait_game(beta, GAME, lambda g: g["availability"] == "Ready", "seeded")
        yield alpha, beta
    finally:
        beta.run("mv", f"{CONFIG}.orig", CONFIG)
        restart_and_reconnect(alpha, beta)
        idle(alpha)
        forget(alpha, GAME)
        forget(beta, GAME)


def idle(machine: Machine) -> None:
    """No job on the game: a failed test may have left its download running."""
    if show(machine, GAME)["operation"]:
        machine.run("lanspreadctl", "cancel", GAME)
        wait_game(machine, GAME, lambda g: not g["operation"], "the earlier job's end")


def start_download(alpha: Machine) -> str:
    """A fresh download of the game on alpha, as root: its job's path."""
    idle(alpha)
    forget(alpha, GAME)
    wait_game(alpha, GAME, lambda g: g["sources"] >= 1, "served by beta")
    out = alpha.run("lanspreadctl", "--json", "download", "--no-wait", GAME).stdout
    job: str = json.loads(out)["job"]
    return job


def peer_id(machine: Machine, name: str) -> str:
    peers = json.loads(machine.run("lanspreadctl", "--json", "peers").stdout)
    found: str = next(p["id"] for p in peers if p["name"] == name)
    return found


# ---- the tests ------------------------------------------------------------------------
def test_the_client_and_the_daemon_run_debians_compiled_dbus_fast(
    alpha: Machine, watcher: Watcher
) -> None:
    """Both on the build this file is about: Debian's python3-dbus-fast, its bus code
    compiled (the daemon has the very same shared object mapped)."""
    ready = watcher.until(lambda e: e["event"] == "ready", "start")
    assert ready["python"].startswith("3.13."), ready
    assert ready["module"].startswith("/usr/lib/python3/dist-packages/dbus_fast/"), ready
    assert ready["module"].endswith(".so"), f"not the compiled build: {ready}"
    maps = alpha.run("cat", f"/proc/{alpha.unit('MainPID')}/maps").stdout
    assert ready["module"] in maps, "the daemon runs another dbus-fast"


def test_a_download_as_a_desktop_client_sees_it(
    slow_source: tuple[Machine, Machine], watcher: Watcher, tmp_path: Path
) -> None:
    alpha, beta = slow_source
    source = peer_id(alpha, beta.name)
    before_us = time.time_ns() // 1000
    job = start_download(alpha)
    appeared = watcher.until(added(job), "InterfacesAdded of the job")
    assert appeared["from"] == ROOT, f"InterfacesAdded came from {appeared['from']}"
    props = appeared["interfaces"][JOB_IFACE]
    assert set(props) == JOB_PROPERTIES, set(props) ^ JOB_PROPERTIES
    assert (props["Operation"], props["GameId"], props["Game"]) == ("download", GAME, GAME_PATH)
    assert (props["State"], props["Cancelable"], props["StartedByUID"]) == ("running", True, 0)
    assert before_us <= props["StartTime"] <= time.time_ns() // 1000

    end = watcher.until(completed(job), "Completed", timeout=120)
    assert end["args"] == [True, "", "finished", ""]
    assert end["t"] - appeared["t"] >= 3, "the upload limit should have made it take seconds"
    seen = follow_job(watcher.events, job, props)
    done = [p["BytesDone"] for p in seen]
    assert done == sorted(done), done
    assert len({d for d in done if 0 < d < seen[-1]["Bytes"]}) >= 2, f"too few steps: {done}"
    progress = [p["Progress"] for p in seen]
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress), progress
    most = (end["t"] - appeared["t"]) / CHANGE_INTERVAL + 2
    assert len(seen) <= most, f"{len(seen)} PropertiesChanged in {end['t'] - appeared['t']:.1f} s"
    final = seen[-1]  # the last change comes before Completed
    total = sum((SAMPLES / a).stat().st_size for a in ARCHIVES) + len(f"{VERSION}\n")
    assert (final["State"], final["Progress"], final["ProgressValid"]) == ("finished", 1.0, True)
    assert final["BytesDone"] == final["Bytes"] == total
    assert final["Sources"] == {source: total}, "bytes per peer id"
    assert (final["ErrorName"], final["ErrorMessage"], final["Cancelable"]) == ("", "", False)
    assert archive_hashes(alpha, GAME) == archive_hashes(beta, GAME)

    gone = watcher.until(removed(job), "InterfacesRemoved of the job", timeout=JOB_LINGER + 30)
    assert (gone["from"], gone["interfaces"]) == (ROOT, [JOB_IFACE])
    assert gone["t"] - end["t"] >= JOB_LINGER - 2, "removed before a late client could look"
    assert strays(watcher.events) == []


def test_job_cancel_stops_a_download_and_a_player_may_not(
    slow_source: tuple[Machine, Machine], watcher: Watcher, client: str, player: str
) -> None:
    """Players without a session may not start downloads at all under the default
    policy (test_booted_systemd), so the player here only tries to cancel root's."""
    alpha, beta = slow_source
    job = start_download(alpha)
    appeared = watcher.until(added(job), "InterfacesAdded of the job")
    assert appeared["from"] == ROOT, f"InterfacesAdded came from {appeared['from']}"
    watcher.until(
        lambda e: bool(job_changes([e], job)) and e["changed"].get("BytesDone", 0) > 0,
        "the first bytes",
    )

    refused = cancel_as(alpha, client, job, user=player)
    assert refused["error"] == ERR + "NotAuthorized", refused
    state = alpha.run("busctl", "get-property", BUS_NAME, job, JOB_IFACE, "State").stdout
    assert state.strip() == 's "running"', "the player's Cancel stopped root's job"

    assert cancel_as(alpha, client, job)["error"] is None
    end = watcher.until(completed(job), "Completed of the cancelled job")
    assert end["args"][0] is False
    assert end["args"][2:] == ["cancelled", ERR + "Cancelled"]
    assert end["args"][1], "a message says why"
    at_end = archive_hashes(alpha, GAME)
    last = follow_job(watcher.events, job, appeared["interfaces"][JOB_IFACE])[-1]
    assert (last["State"], last["Cancelable"]) == ("cancelled", False)
    assert 0 < last["BytesDone"] < last["Bytes"], "cancelled before the last chunk"
    assert last["ErrorName"] == ERR + "Cancelled"

    # No more bytes: once the source has stopped sending, nothing more was written.
    wait_game(beta, GAME, lambda g: g["outbound_transfers"] == 0, "the source to stop sending")
    gone = watcher.until(removed(job), "InterfacesRemoved of the job", timeout=JOB_LINGER + 30)
    assert gone["from"] == ROOT
    assert archive_hashes(alpha, GAME) == at_end, "bytes arrived after the cancel"
    assert at_end != archive_hashes(beta, GAME)
    assert not [e for e in job_changes(watcher.events, job) if e["t"] > end["t"]]
    assert strays(watcher.events) == []


# ---- busctl and dbus-send -------------------------------------------------------------
def introspect(machine: Machine, path: str) -> ET.Element:
    xml = machine.run("busctl", "introspect", "--xml-interface", BUS_NAME, path).stdout
    return ET.fromstring(xml)


def interface_names(node: ET.Element) -> set[str]:
    return {i.get("name", "") for i in node.findall("interface")}


def described(iface: ET.Element) -> dict[str, Any]:
    """What an interface promises: members, argument names and types, annotations."""
    return {
        "methods": {
            m.get("name"): [(a.get("name"), a.get("type"), a.get("direction")) for a in m]
            for m in iface.findall("method")
        },
        "signals": {
            s.get("name"): [(a.get("name"), a.get("type")) for a in s.findall("arg")]
            for s in iface.findall("signal")
        },
        "properties": {
            p.get("name"): (
                p.get("type"),
                p.get("access"),
                {a.get("name"): a.get("value") for a in p.findall("annotation")},
            )
            for p in iface.findall("property")
        },
    }


def dbus_send(machine: Machine, path: str, member: str, *args: str) -> str:
    """dbus-send's error line for a call that must fail (busctl prints the message only)."""
    result = machine.run(
        "dbus-send",
        "--system",
        "--print-reply",
        f"--dest={BUS_NAME}",
        path,
        member,
        *args,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    return result.stderr.strip()


def test_busctl_sees_the_contract_and_standard_errors(
    slow_source: tuple[Machine, Machine],
) -> None:
    alpha, _ = slow_source
    root = introspect(alpha, ROOT)
    assert {OBJECT_MANAGER, MANAGER} <= interface_names(root)
    assert OBJECT_MANAGER not in interface_names(introspect(alpha, GAME_PATH))
    job = start_download(alpha)
    try:
        node = introspect(alpha, job)
        assert OBJECT_MANAGER not in interface_names(node)
        live = next(i for i in node.findall("interface") if i.get("name") == JOB_IFACE)
    finally:
        idle(alpha)
    contract = ET.fromstring(alpha.run("cat", CONTRACT).stdout)
    promised = next(i for i in contract.findall("interface") if i.get("name") == JOB_IFACE)
    assert described(live) == described(promised)
    properties = described(live)["properties"]
    assert set(properties) == JOB_PROPERTIES
    assert all(EMITS in annotations for _, _, annotations in properties.values())
    assert described(live)["signals"]["Completed"] == [
        ("success", "b"),
        ("message", "s"),
        ("state", "s"),
        ("error_name", "s"),
    ]

    # A wrong signature: InvalidArgs, with what was sent in the message.
    wrong = alpha.run("busctl", "call", BUS_NAME, ROOT, MANAGER, "GetGame", "u", "5", check=False)
    assert wrong.returncode != 0 and "takes (s), not (u)" in wrong.stderr, wrong.stderr
    sent = dbus_send(alpha, ROOT, f"{MANAGER}.GetGame", "uint32:5")
    assert sent.startswith("Error org.freedesktop.DBus.Error.InvalidArgs:"), sent
    # A job that has gone (or never was): UnknownObject, for methods and properties.
    missing = f"{ROOT}/jobs/999999"
    gone = alpha.run("busctl", "call", BUS_NAME, missing, JOB_IFACE, "Cancel", check=False)
    assert gone.returncode != 0 and f"no object at {missing}" in gone.stderr, gone.stderr
    sent = dbus_send(alpha, missing, f"{JOB_IFACE}.Cancel")
    assert sent.startswith("Error org.freedesktop.DBus.Error.UnknownObject:"), sent
    sent = dbus_send(
        alpha, missing, "org.freedesktop.DBus.Properties.Get", f"string:{JOB_IFACE}", "string:State"
    )
    assert sent.startswith("Error org.freedesktop.DBus.Error.UnknownObject:"), sent
    # The object manager is the root's only.
    sent = dbus_send(alpha, GAME_PATH, f"{OBJECT_MANAGER}.GetManagedObjects")
    assert sent.startswith("Error org.freedesktop.DBus.Error.UnknownInterface:"), sent
