"""A local user flooding the daemon with calls gets answers or refusals; the daemon stays up.

dbus-fast took a full socket (EAGAIN) for a dead bus connection, so a plain user who
called `ListGames` fast enough stopped lanspreadd for everyone (`lanspreadd.dbus.busconnect`).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadd.dbus.busconnect import PatientWriter, connect_bus
from tests.busflood import flood_as
from tests.support import (
    BUS_NAME,
    MANAGER,
    ROOT,
    Daemon,
    PrivateBus,
    SystemBus,
    as_user,
    disconnect,
    tool,
)

CHECKOUT = Path(__file__).resolve().parent.parent
POLICY = CHECKOUT / "dbus" / "org.lanspread.Lanspread1.conf"
CALLS = 5000
IN_FLIGHT = 200
# A persistent attacker floods again and again; one flood does not always fill the socket.
FLOODS = 3
# dbus-daemon's system-bus default: calls awaiting a reply on one connection.
MAX_REPLIES_PER_CONNECTION = 128
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"


@pytest.fixture
def system_daemon(service_user: str, tmp_path: Path) -> Iterator[Daemon]:
    """lanspreadd as the service user on a system-like bus with the packaged policy."""
    bus = SystemBus(POLICY)
    (tmp_path / "games").mkdir()
    daemon = Daemon(
        bus, tmp_path / "games", tmp_path / "state", ("--polkit", "on"), user=service_user
    )
    try:
        yield daemon.start()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        bus.stop()


def flood_as_nobody(daemon: Daemon, calls: int, in_flight: int) -> dict[str, object]:
    return flood_as("nobody", daemon.bus.address, calls, in_flight)


def honest_list_games(daemon: Daemon) -> str:
    reply = subprocess.run(
        as_user(
            "nobody",
            tool("busctl"),
            f"--address={daemon.bus.address}",
            "call",
            BUS_NAME,
            ROOT,
            MANAGER,
            "ListGames",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert reply.returncode == 0, reply.stderr
    return reply.stdout


def test_flood_from_an_unprivileged_user_leaves_the_daemon_serving(
    system_daemon: Daemon,
) -> None:
    """dbus-daemon refuses calls past its limit; every other call gets the daemon's answer."""
    for _ in range(FLOODS):
        summary = flood_as_nobody(system_daemon, CALLS, IN_FLIGHT)

        assert system_daemon.proc is not None
        assert system_daemon.proc.poll() is None, system_daemon.stderr()
        errors = summary["errors"]
        assert isinstance(errors, dict)
        assert set(errors) <= {LIMITS_EXCEEDED}, summary
        assert summary["answers"] == CALLS - sum(errors.values()), summary
        assert summary["answers"] == summary["daemon_replies"], summary
        assert summary["all_alike"], summary
        assert summary["in_order"], summary
        assert honest_list_games(system_daemon).startswith(f"aa{{sv}} {summary['games']} ")


def test_a_client_that_reads_every_answer_gets_all_of_them_whole_and_in_order(
    system_daemon: Daemon,
) -> None:
    """Under the bus's limit every call reaches the daemon: none may be lost or garbled."""
    summary = flood_as_nobody(system_daemon, CALLS, MAX_REPLIES_PER_CONNECTION)

    assert summary["errors"] == {}, summary
    assert summary["answers"] == CALLS, summary
    assert summary["daemon_replies"] == CALLS, summary
    assert summary["all_alike"], summary
    assert summary["in_order"], summary
    assert honest_list_games(system_daemon).startswith(f"aa{{sv}} {summary['games']} ")


def chunk(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


def test_writer_waits_out_a_full_socket_without_losing_or_reordering(tmp_path: Path) -> None:
    """Thousands of messages sent back to back outrun dbus-daemon and fill the socket."""
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    private = PrivateBus(bus_dir)
    count, size = 4000, 8192

    async def run() -> list[tuple[int, bytes]]:
        sender = await connect_bus(private.address, MessageBus)
        receiver = await connect_bus(private.address, MessageBus)
        assert isinstance(sender._writer, PatientWriter)
        got: list[tuple[int, bytes]] = []
        all_in = asyncio.Event()

        def collect(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "Chunk":
                got.append((msg.body[0], msg.body[1]))
                if len(got) == count:
                    all_in.set()

        receiver.add_message_handler(collect)
        sent = [
            sender.send(
                Message(
                    message_type=MessageType.SIGNAL,
                    destination=receiver.unique_name,
                    path="/org/lanspread/Test",
                    interface="org.lanspread.Test",
                    member="Chunk",
                    signature="uay",
                    body=[i, chunk(i, size)],
                )
            )
            for i in range(count)
        ]
        async with asyncio.timeout(60):
            await asyncio.gather(*sent)
            await all_in.wait()
        assert sender.connected
        await disconnect(sender)
        await disconnect(receiver)
        return got

    try:
        got = asyncio.run(run())
    finally:
        private.stop()
    assert [i for i, _ in got] == list(range(count))
    assert all(payload == chunk(i, size) for i, payload in got)
