"""A local user's flood of ListGames, run inside a booted machine on Debian's own python3.

Standalone on purpose (no project imports): it is what any player could run. It
prints how many calls were answered and refused; it may itself give up, which is
no concern of the daemon's.
"""

from __future__ import annotations

import asyncio
import sys

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

NAME = "org.lanspread.Lanspread1"


async def flood(calls: int, in_flight: int) -> tuple[int, int]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    slots = asyncio.Semaphore(in_flight)
    counts = [0, 0]

    async def one() -> None:
        async with slots:
            reply = await bus.call(
                Message(
                    destination=NAME,
                    path="/org/lanspread/Lanspread1",
                    interface=f"{NAME}.Manager",
                    member="ListGames",
                )
            )
        counts[reply.message_type is MessageType.ERROR] += 1

    await asyncio.gather(*(one() for _ in range(calls)))
    bus.disconnect()
    return counts[0], counts[1]


if __name__ == "__main__":
    answered, refused = asyncio.run(flood(int(sys.argv[1]), int(sys.argv[2])))
    print(f"answered {answered} refused {refused}")
