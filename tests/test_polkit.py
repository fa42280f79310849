"""Polkit decides mutating calls; python-dbusmock's polkitd template stands in for polkitd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from tests.support import Daemon, PrivateBus, disconnect, make_game, name_has_owner

GAME = "sample-game"


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
        deadline = time.monotonic() + 20
        while not name_has_owner(bus.address, "org.freedesktop.PolicyKit1"):
            assert time.monotonic() < deadline, "polkitd mock did not start"
            time.sleep(0.05)

    def _mock_call(self, member: str, signature: str, body: list[object]) -> None:
        async def go() -> None:
            bus = await MessageBus(bus_address=self.bus.address).connect()
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.PolicyKit1",
                    path="/org/freedesktop/PolicyKit1/Authority",
                    interface="org.freedesktop.DBus.Mock",
                    member=member,
                    signature=signature,
                    body=body,
                )
            )
            assert reply is not None
            assert reply.error_name is None, reply.body
            await disconnect(bus)

        asyncio.run(go())

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
    for args in (("remove", GAME), ("cancel", GAME), ("reload-catalog",)):
        assert guarded.ctl(*args).returncode == 4, args
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

    from lanspreadd import dbus_api

    policy = Path(__file__).resolve().parent.parent / "dbus" / "org.lanspread.policy"
    ids = [a.get("id", "") for a in ET.parse(policy).getroot().iter("action")]
    assert len(ids) == len(set(ids)), f"an action is declared twice: {sorted(ids)}"
    declared = set(ids)
    used = {
        *dbus_api.ACTIONS.values(),
        dbus_api.ACTION_CANCEL,
        dbus_api.ACTION_CONFIGURE,
        dbus_api.ACTION_DOWNLOAD,
        dbus_api.ACTION_PEERS,
    }
    assert used == declared
