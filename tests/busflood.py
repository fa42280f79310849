"""A local client that floods lanspreadd with cheap calls, run as its own (unprivileged) process.

`python -m tests.busflood ADDRESS CALLS IN_FLIGHT` calls `ListGames` CALLS times with at
most IN_FLIGHT unanswered, reads every answer and prints a JSON summary: how many
answers came, which errors (dbus-daemon refuses calls past its per-connection limit),
whether the daemon's answers came in the order asked and whether each was whole.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadd.dbus.busconnect import connect_bus
from tests.support import BUS_NAME, MANAGER, ROOT, as_user

CHECKOUT = Path(__file__).resolve().parent.parent

FLOOD_DEADLINE = 90


async def flood(address: str, calls: int, in_flight: int) -> dict[str, Any]:
    bus = await connect_bus(address, MessageBus)
    daemon_serials: list[int] = []
    daemon = (
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetNameOwner",
                signature="s",
                body=[BUS_NAME],
            )
        )
    ).body[0]

    def watch(msg: Message) -> None:
        if msg.message_type is MessageType.METHOD_RETURN and msg.sender == daemon:
            daemon_serials.append(msg.reply_serial)

    bus.add_message_handler(watch)
    slots = asyncio.Semaphore(in_flight)
    bodies: list[Any] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        async with slots:
            reply = await bus.call(
                Message(destination=BUS_NAME, path=ROOT, interface=MANAGER, member="ListGames")
            )
        if reply.message_type is MessageType.ERROR:
            errors[reply.error_name or "?"] += 1
        else:
            bodies.append(reply.body[0])

    async with asyncio.timeout(FLOOD_DEADLINE), asyncio.TaskGroup() as tg:
        for _ in range(calls):
            tg.create_task(one())
    bus.disconnect()
    return {
        "answers": len(bodies),
        "errors": dict(errors),
        "games": len(bodies[0]) if bodies else None,
        "all_alike": all(body == bodies[0] for body in bodies),
        "in_order": daemon_serials == sorted(daemon_serials),
        "daemon_replies": len(daemon_serials),
    }


def flood_as(user: str, address: str, calls: int, in_flight: int) -> dict[str, Any]:
    """Run the flood as `user`, in its own process as a local attacker would."""
    result = subprocess.run(
        as_user(
            user,
            sys.executable,
            "-m",
            "tests.busflood",
            address,
            str(calls),
            str(in_flight),
            keep_read_search=True,
        ),
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        timeout=FLOOD_DEADLINE + 10,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the flood did not run: {result.stderr}")
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def main() -> None:
    address, calls, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(flood(address, calls, in_flight))))


if __name__ == "__main__":
    main()
