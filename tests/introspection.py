"""Compare the live D-Bus objects against the committed introspection XML."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.introspection import Interface, Node

from tests.support import disconnect

XML = Path(__file__).resolve().parent.parent / "dbus" / "org.lanspread.Lanspread1.xml"
OURS = "org.lanspread.Lanspread1."
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"


def describe(iface: Interface) -> dict[str, Any]:
    """The parts of an interface a client depends on, in a comparable form."""
    return {
        "methods": {
            m.name: (
                tuple((a.name, a.signature) for a in m.in_args),
                tuple((a.name, a.signature) for a in m.out_args),
            )
            for m in iface.methods
        },
        "signals": {s.name: tuple((a.name, a.signature) for a in s.args) for s in iface.signals},
        "properties": {
            p.name: (p.signature, p.access.value, p.annotations.get(EMITS_CHANGED))
            for p in iface.properties
        },
    }


async def live_interfaces(address: str, paths: list[str]) -> dict[str, Interface]:
    bus = await MessageBus(bus_address=address).connect()
    try:
        found: dict[str, Interface] = {}
        for path in paths:
            node = await bus.introspect("org.lanspread.Lanspread1", path)
            for iface in node.interfaces:
                if iface.name.startswith(OURS):
                    found[iface.name] = iface
        return found
    finally:
        await disconnect(bus)


def contract() -> dict[str, Interface]:
    node = Node.parse(XML.read_text())
    return {iface.name: iface for iface in node.interfaces}


async def dump(address: str, paths: list[str]) -> str:
    found = await live_interfaces(address, paths)
    node = Node(interfaces=[found[name] for name in sorted(found)])
    return str(node.tostring())


if __name__ == "__main__":
    print(asyncio.run(dump(sys.argv[1], sys.argv[2:])))
