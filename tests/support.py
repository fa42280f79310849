"""Test support: a private dbus-daemon, real lanspreadd processes, sample games."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadd.archive.writer import Entry, write_rar4, write_rar5, write_rar5_volumes

SAMPLES = Path(__file__).parent / "data" / "rarfile-samples"
BUS_NAME = "org.lanspread.Lanspread1"
ROOT = "/org/lanspread/Lanspread1"
MANAGER = "org.lanspread.Lanspread1.Manager"
ERR = "org.lanspread.Lanspread1.Error."
POLL_EVERY = 0.05


class TimedOut(AssertionError):
    """What `wait_for` waited on never came."""


def wait_for(
    check: Callable[[], object], timeout: float, what: str, every: float = POLL_EVERY
) -> float:
    """Ask `check` until it holds; fail naming `what`. Returns the seconds it took.

    For state only another process can tell (a daemon's answers, /proc, its files);
    something in this process is waited on through its own event instead. `every` is
    for a race against another process, where a cheap check must be asked often."""
    started = time.monotonic()
    while True:
        asked = time.monotonic()
        if check():
            return time.monotonic() - started
        now = time.monotonic()
        if now - started > timeout:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        # A check that starts a process is not repeated back to back: on a busy machine
        # it would take the CPU from the daemons it is waiting for.
        time.sleep(max(every, now - asked))


async def wait_for_async(
    check: Callable[[], Awaitable[object]], timeout: float, what: str
) -> float:
    """`wait_for` inside an event loop, for checks that are themselves calls."""
    started = time.monotonic()
    while True:
        asked = time.monotonic()
        if await check():
            return time.monotonic() - started
        now = time.monotonic()
        if now - started > timeout:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(max(POLL_EVERY, now - asked))


class FakeClock:
    """Time that moves only when the test says so: call it for the time, give code its
    `sleep`, and `advance` wakes every sleeper whose time has come."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, woken)
        self._sleepers.append(entry)
        self._changed.set()
        try:
            await woken
        finally:
            if entry in self._sleepers:  # cancelled rather than woken
                self._sleepers.remove(entry)

    @property
    def sleeping(self) -> int:
        return len(self._sleepers)

    async def until_sleeping(self, count: int = 1) -> None:
        """Until `count` sleepers wait on this clock (the code got to its sleep)."""
        while self.sleeping < count:
            self._changed.clear()
            await self._changed.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [entry for entry in self._sleepers if entry[0] <= self.now]
        for entry in due:
            self._sleepers.remove(entry)
            entry[1].set_result(None)


class PrivateBus:
    """A real dbus-daemon with a session-bus configuration in a temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [
                "dbus-daemon",
                "--session",
                "--nofork",
                "--print-address=1",
                f"--address=unix:path={tmp / 'bus'}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        assert self.address.startswith("unix:"), self.address

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


SYSTEM_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


class SystemBus:
    """A real dbus-daemon configured like the system bus (deny by default, its default
    limits) plus our policy file, in a directory every user may reach."""

    def __init__(self, policy: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="lanspread-sysbus-"))
        self.base.chmod(0o755)
        socket_path = self.base / "system_bus_socket"
        config = self.base / "system.conf"
        config.write_text(SYSTEM_BUS_CONFIG.format(socket=socket_path, policy=policy))
        self.address = f"unix:path={socket_path}"
        # A file, not a pipe: dbus-daemon logs every refusal and blocks once a pipe is full.
        self.log = self.base / "dbus-daemon.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    tool("dbus-daemon"),
                    f"--config-file={config}",
                    "--nofork",
                    "--nopidfile",
                    "--print-address=1",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        # The address is printed once the bus listens. Its socket file appears earlier,
        # at bind(): a daemon that connected then was refused on a busy machine.
        assert self.proc.stdout is not None
        printed = self.proc.stdout.readline()
        assert printed.startswith(self.address), self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.base, ignore_errors=True)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def as_user(
    user: str, *cmd: str, keep_read_search: bool = False, keep: Sequence[str] = ()
) -> list[str]:
    """Run `cmd` as `user`; `keep_read_search` lets it read the checkout wherever it is
    (D-Bus policy still sees only the uid); `keep` names more capabilities it keeps
    (the unit's `fowner`)."""
    kept = ",".join(f"+{c}" for c in [*(["dac_read_search"] if keep_read_search else []), *keep])
    caps = [f"--inh-caps={kept}", f"--ambient-caps={kept}"] if kept else []
    gid = pwd.getpwnam(user).pw_gid
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", *caps, *cmd]


@dataclass
class Daemon:
    bus: PrivateBus | SystemBus
    game_dir: Path
    state_dir: Path
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    port: int = field(default_factory=lambda: free_port())
    name: str = "peer"
    listen: str = "127.0.0.1"
    mdns: bool = False
    netns: str | None = None
    user: str | None = None
    caps: Sequence[str] = ()  # capabilities the daemon keeps as `user`

    def start(self, wait: bool = True) -> Daemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "lanspreadd.toml").touch()
        if self.user is not None:
            for directory in (self.state_dir, self.game_dir):
                shutil.chown(directory, self.user, self.user)
        with (self.state_dir / "stderr.log").open("a") as log:
            self.proc = subprocess.Popen(
                [
                    *(["ip", "netns", "exec", self.netns] if self.netns else []),
                    *(
                        as_user(self.user, keep_read_search=True, keep=self.caps)
                        if self.user
                        else []
                    ),
                    sys.executable,
                    "-m",
                    "lanspreadd",
                    "--bus",
                    self.bus.address,
                    "--game-dir",
                    str(self.game_dir),
                    "--state-dir",
                    str(self.state_dir),
                    "--config",
                    str(self.state_dir / "lanspreadd.toml"),
                    "--listen",
                    self.listen,
                    "--port",
                    str(self.port),
                    "--name",
                    self.name,
                    *(["--mdns-interface", self.listen] if self.mdns else ["--no-mdns"]),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | self.env,
                text=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"lanspreadd exited early:\n{self.stderr()}")
            return name_has_owner(self.bus.address, BUS_NAME)

        try:
            wait_for(ready, timeout, "lanspreadd on the bus")
        except TimedOut:
            raise AssertionError(f"lanspreadd did not come up:\n{self.stderr()}") from None

    def stderr(self) -> str:
        path = self.state_dir / "stderr.log"
        return path.read_text() if path.exists() else ""

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_ctl("--address", self.bus.address, *args, timeout=timeout)

    def ctl_json(self, *args: str) -> Any:
        result = self.ctl("--json", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP (data channel) and UDP (QUIC)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def run_ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanspreadctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def bus_driver_call(bus: MessageBus, member: str, argument: str) -> Message:
    """Call the bus itself (org.freedesktop.DBus) with one string argument."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature="s",
            body=[argument],
        )
    )
    assert reply is not None
    assert reply.message_type is not MessageType.ERROR, reply.body
    return reply


def name_has_owner(address: str, name: str) -> bool:
    async def check() -> bool:
        bus = await MessageBus(bus_address=address).connect()
        try:
            return bool((await bus_driver_call(bus, "NameHasOwner", name)).body[0])
        finally:
            await disconnect(bus)

    return asyncio.run(check())


def match_rules(address: str, pid: int) -> list[str]:
    """The match rules that process `pid` has on the bus, from the bus's statistics: a
    client listens for signals once its rule is there."""

    async def ask() -> list[str]:
        bus = await MessageBus(bus_address=address).connect()
        try:
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus.Debug.Stats",
                    member="GetAllMatchRules",
                )
            )
            assert reply is not None
            assert reply.message_type is not MessageType.ERROR, reply.body
            found: list[str] = []
            for name, rules in reply.body[0].items():
                owner = await bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="GetConnectionUnixProcessID",
                        signature="s",
                        body=[name],
                    )
                )
                # A connection that left meanwhile answers with an error.
                if owner is not None and owner.body == [pid]:
                    found += rules
            return found
        finally:
            await disconnect(bus)

    return asyncio.run(ask())


async def disconnect(bus: MessageBus) -> None:
    """Disconnect and wait, so the socket is closed before the loop ends."""
    bus.disconnect()
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


async def call(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    path: str = ROOT,
    interface: str = MANAGER,
) -> Message:
    reply = await bus.call(
        Message(
            destination=BUS_NAME,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    return reply


def error_name(reply: Message) -> str | None:
    return reply.error_name if reply.message_type is MessageType.ERROR else None


def make_game(
    game_dir: Path,
    game_id: str,
    version: str = "1.0",
    entries: Sequence[Entry] | None = None,
    fmt: str = "rar5",
    sentinel: bool = True,
    name: str | None = None,
) -> Path:
    """Write a downloaded game: archives plus the version.ini sentinel."""
    root = game_dir / game_id
    root.mkdir(parents=True, exist_ok=True)
    entries = list(entries or default_entries(version))
    archive = root / (name or f"{game_id}.rar")
    if fmt == "rar5":
        write_rar5(archive, entries)
    elif fmt == "rar4":
        write_rar4(archive, entries)
    elif fmt == "rar5-volumes":
        write_rar5_volumes(root / f"{game_id}.part1.rar", entries, 64 * 1024)
    else:
        raise ValueError(fmt)
    if sentinel:
        (root / "version.ini").write_text(f"{version}\n")
    return root


def default_entries(version: str) -> list[Entry]:
    return [
        Entry("bin/"),
        Entry("bin/start.sh", b"#!/bin/sh\necho " + version.encode() + b"\n", 0o755),
        Entry("data/level1.dat", bytes(range(256)) * 400),
        Entry("VERSION.txt", version.encode()),
    ]


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for directories), for whole-tree comparisons."""
    result: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        result[rel] = None if path.is_dir() else path.read_bytes()
    return result


@contextmanager
def system_user(name: str) -> Iterator[str]:
    """A system user (created for the duration if missing, then removed again)."""
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        created = True
    try:
        yield name
    finally:
        if created:
            subprocess.run(["userdel", name], check=False)


@dataclass
class Link:
    """Our D-Bus connection to one daemon, and the jobs it told us have ended (the
    flash-crowd bench and the swarm scenarios drive many daemons through these)."""

    daemon: Daemon
    bus: MessageBus
    peer_id: str = ""
    ended: dict[str, list[Any]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.daemon.name

    def take(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "Completed":
            self.ended[str(msg.path)] = msg.body
            self.arrived.set()
