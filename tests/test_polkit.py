"""Polkit decides mutating calls; python-dbusmock's polkitd template stands in for polkitd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, Variant
from dbus_fast.aio import MessageBus

from lanspreadctl.agent import in_login_session
from tests.support import (
    BUS_NAME,
    ERR,
    MANAGER,
    ROOT,
    Daemon,
    PrivateBus,
    disconnect,
    error_name,
    make_game,
    name_has_owner,
    tool,
    wait_for,
)

GAME = "sample-game"


def plain(value: Any) -> Any:
    """D-Bus values without Variants; structs as lists."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class PolkitMock:
    def __init__(self, bus: PrivateBus) -> None:
        self.bus = bus
        env = os.environ | {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: name_has_owner(bus.address, "org.freedesktop.PolicyKit1"),
            20,
            "the polkitd mock on the bus",
        )

    def _mock_call(self, member: str, signature: str = "", body: list[object] | None = None) -> Any:
        async def go() -> Any:
            bus = await MessageBus(bus_address=self.bus.address).connect()
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.PolicyKit1",
                    path="/org/freedesktop/PolicyKit1/Authority",
                    interface="org.freedesktop.DBus.Mock",
                    member=member,
                    signature=signature,
                    body=body or [],
                )
            )
            assert reply is not None
            assert reply.error_name is None, reply.body
            await disconnect(bus)
            return reply.body

        return asyncio.run(go())

    def calls(self) -> list[tuple[str, list[Any]]]:
        """The methods polkit was called with, in order, and their arguments."""
        return [(name, plain(args)) for _when, name, args in self._mock_call("GetCalls")[0]]

    def allow(self, *actions: str) -> None:
        self._mock_call("SetAllowed", "as", [list(actions)])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def polkit(private_bus: PrivateBus) -> Iterator[PolkitMock]:
    mock = PolkitMock(private_bus)
    yield mock
    mock.stop()


@pytest.fixture
def guarded(daemon: Daemon, game_dir: Path) -> Daemon:
    make_game(game_dir, GAME)
    daemon.extra_args = ("--polkit", "on")
    return daemon


def test_denied_calls_exit_4_and_change_nothing(guarded: Daemon, polkit: PolkitMock) -> None:
    guarded.start()
    result = guarded.ctl("install", GAME)
    assert result.returncode == 4
    assert "not authorised to perform org.lanspread.install-game" in result.stderr
    assert not (guarded.game_dir / GAME / "local").exists()
    for args in (("remove", GAME), ("reload-catalog",)):
        assert guarded.ctl(*args).returncode == 4, args
    # Nothing to cancel is said before anyone is asked for a password.
    nothing = guarded.ctl("cancel", GAME)
    assert nothing.returncode == 1
    assert "no operation is running for sample-game" in nothing.stderr
    # Reads stay open to everyone.
    assert guarded.ctl("games").returncode == 0
    assert guarded.ctl_json("show", GAME)["availability"] == "Ready"


def test_allowed_action_only(guarded: Daemon, polkit: PolkitMock) -> None:
    polkit.allow("org.lanspread.install-game")
    guarded.start()
    assert guarded.ctl_json("install", GAME)["state"] == "finished"
    assert guarded.ctl_json("update", GAME)["state"] == "finished"
    denied = guarded.ctl("uninstall", GAME)
    assert denied.returncode == 4
    assert "org.lanspread.remove-game" in denied.stderr
    assert (guarded.game_dir / GAME / "local").is_dir()


def test_missing_polkit_denies(guarded: Daemon) -> None:
    guarded.start()
    result = guarded.ctl("install", GAME)
    assert result.returncode == 4
    assert "polkit is unavailable" in result.stderr


def test_policy_file_declares_every_action_the_daemon_checks() -> None:
    import xml.etree.ElementTree as ET

    from lanspreadd.dbus import api as dbus_api

    policy = Path(__file__).resolve().parent.parent / "dbus" / "org.lanspread.policy"
    ids = [a.get("id", "") for a in ET.parse(policy).getroot().iter("action")]
    assert len(ids) == len(set(ids)), f"an action is declared twice: {sorted(ids)}"
    declared = set(ids)
    used = {
        *dbus_api.ACTIONS.values(),
        dbus_api.ACTION_CANCEL,
        dbus_api.ACTION_CATALOG,
        dbus_api.ACTION_CONFIGURE,
        dbus_api.ACTION_DOWNLOAD,
        dbus_api.ACTION_PEERS,
    }
    assert used == declared


def checks(polkit: PolkitMock) -> list[tuple[str, int]]:
    """(action, flags) of each CheckAuthorization; flags 1 is AllowUserInteraction."""
    return [(args[1], args[3]) for name, args in polkit.calls() if name == "CheckAuthorization"]


def test_polkit_may_ask_only_callers_that_allow_interaction(
    guarded: Daemon, polkit: PolkitMock
) -> None:
    """Asked to interact, polkit waits on an agent; a script that cannot answer must get
    its refusal at once."""
    guarded.start()

    async def install(flags: MessageFlag) -> str | None:
        bus = await MessageBus(bus_address=guarded.bus.address).connect()
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=ROOT,
                interface=MANAGER,
                member="Install",
                signature="s",
                body=[GAME],
                flags=flags,
            )
        )
        assert reply is not None
        await disconnect(bus)
        return error_name(reply)

    assert asyncio.run(install(MessageFlag.NONE)) == ERR + "NotAuthorized"
    assert asyncio.run(install(MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)) == (
        ERR + "NotAuthorized"
    )
    assert checks(polkit) == [("org.lanspread.install-game", 0), ("org.lanspread.install-game", 1)]


def test_without_a_terminal_lanspreadctl_starts_no_agent_and_exits_4(
    guarded: Daemon, polkit: PolkitMock
) -> None:
    """A script on a terminal whose input is not one (`< /dev/null`, a pipe): nobody
    can answer, so no agent, no interaction, a refusal at once."""
    guarded.start()
    primary, secondary = pty.openpty()
    ctl = [sys.executable, "-m", "lanspreadctl", "--address", guarded.bus.address]
    result = subprocess.run(
        [tool("setsid"), "--ctty", "sh", "-c", 'exec "$@" </dev/null', "sh", *ctl, "install", GAME],
        stdin=secondary,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    os.close(secondary)
    os.close(primary)
    assert result.returncode == 4
    assert "not authorised to perform org.lanspread.install-game" in result.stderr
    assert [name for name, _args in polkit.calls() if name.startswith("Register")] == []
    assert checks(polkit) == [("org.lanspread.install-game", 0)]


def agents_for(pid: int) -> list[int]:
    """pkttyagent processes registered for `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"pkttyagent") and str(pid).encode() in argv:
            found.append(int(entry.name))
    return found


def test_on_a_terminal_lanspreadctl_runs_an_agent_for_itself(
    guarded: Daemon, polkit: PolkitMock
) -> None:
    """As systemctl and pkexec do: pkttyagent registered for lanspreadctl's own process
    before the call, which allows polkit to ask; gone when lanspreadctl ends."""
    tool("pkttyagent")
    polkit.allow("org.lanspread.install-game")
    guarded.start()
    primary, secondary = pty.openpty()
    # setsid --ctty makes the pty the controlling terminal (pkttyagent talks on /dev/tty);
    # it does not fork, so its pid is lanspreadctl's.
    ctl = [sys.executable, "-m", "lanspreadctl", "--address", guarded.bus.address]
    proc = subprocess.Popen(
        [tool("setsid"), "--ctty", *ctl, "install", GAME],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the last writer has closed the pty
        while data := os.read(primary, 4096):
            shown += data
    os.close(primary)
    assert proc.wait(60) == 0, shown
    assert b"install sample-game: finished" in shown

    calls = polkit.calls()
    names = [name for name, _args in calls]
    registered = [i for i, name in enumerate(names) if name.startswith("Register")]
    assert len(registered) == 1, names
    assert registered[0] < names.index("CheckAuthorization")
    subject, _locale, _path, *options = calls[registered[0]][1]
    assert subject[0] == "unix-process"
    assert subject[1]["pid"] == proc.pid
    # A session's desktop agent asks first; without a session polkit ignores a fallback.
    assert options == ([{"fallback": True}] if in_login_session() else [])
    assert checks(polkit) == [("org.lanspread.install-game", 1)]
    assert agents_for(proc.pid) == []


def test_lanspreadctl_lets_polkit_ask_about_every_guarded_method(
    guarded: Daemon, polkit: PolkitMock
) -> None:
    """Each Manager method (and property set) the daemon refuses without polkit's yes is
    one lanspreadctl marks as allowing interaction: a new guarded one cannot be missed."""
    from dbus_fast.introspection import Node

    from lanspreadctl.client import MUTATING
    from tests.introspection import XML

    manager = next(i for i in Node.parse(XML.read_text()).interfaces if i.name == MANAGER)
    dummy: dict[str, Any] = {"s": GAME, "b": False, "u": 1, "ay": b"", "t": 1}
    by_name = {"key": "ed25519:" + "A" * 43 + "="}  # a well-formed key: polkit decides
    args = {
        m.name: [by_name.get(a.name or "", dummy[a.type.signature]) for a in m.in_args]
        for m in manager.methods
    }
    guarded.start()

    async def refused() -> set[str]:
        bus = await MessageBus(bus_address=guarded.bus.address).connect()
        names = set()
        for method in manager.methods:
            signature = "".join(a.type.signature for a in method.in_args)
            reply = await bus.call(
                Message(
                    destination=BUS_NAME,
                    path=ROOT,
                    interface=MANAGER,
                    member=method.name,
                    signature=signature,
                    body=args[method.name],
                )
            )
            assert reply is not None
            if error_name(reply) == ERR + "NotAuthorized":
                names.add(method.name)
        for prop in manager.properties:
            if prop.access.writable():
                value = Variant(prop.signature, dummy[prop.signature])
                reply = await bus.call(
                    Message(
                        destination=BUS_NAME,
                        path=ROOT,
                        interface="org.freedesktop.DBus.Properties",
                        member="Set",
                        signature="ssv",
                        body=[MANAGER, prop.name, value],
                    )
                )
                assert reply is not None
                if error_name(reply) == ERR + "NotAuthorized":
                    names.add(prop.name)
        await disconnect(bus)
        return names

    # Cancel reaches polkit only with a job running that the caller did not start
    # (tests/adapters/test_dbus_facade.py); with none it is NotFound before any prompt.
    assert asyncio.run(refused()) | {"Cancel"} == MUTATING
