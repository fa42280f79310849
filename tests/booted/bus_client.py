"""A desktop client's view of lanspreadd's jobs, run inside a booted machine.

Standalone on purpose (no project imports): it runs under the machine's own
/usr/bin/python3 with Debian's python3-dbus-fast, as any program on the LAN party's
machines would, on the system bus.

`python3 bus_client.py watch` prints one JSON line per event until its stdin closes:
  ready      python, dbus_fast (version), module (where dbus-fast's bus code lives)
  added      from (the signal's path), path, interfaces {name: properties}
  removed    from, path, interfaces [names]
  changed    path, interface, changed {name: value}, invalidated [names]  (jobs only)
  completed  path, args (success, message, state, error_name)
Every event has `t`, the monotonic time it was seen. It matches the ObjectManager's
signals on the root path, as GLib's object manager does, and also from anywhere else,
so that a signal sent from the wrong path is seen and named (`from`), not just missed.

`python3 bus_client.py cancel PATH` calls Job.Cancel on PATH and prints one line:
  reply      path, error (the D-Bus error name, or null), message
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time
from typing import Any

import dbus_fast.message_bus
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

NAME = "org.lanspread.Lanspread1"
ROOT = "/org/lanspread/Lanspread1"
JOB = "org.lanspread.Lanspread1.Job"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
RULES = (
    # What a desktop object manager listens to: the manager's own path.
    f"type='signal',sender='{NAME}',path='{ROOT}',interface='{OBJECT_MANAGER}'",
    # The same signals from any other path: to name a daemon that sends them wrongly.
    f"type='signal',sender='{NAME}',interface='{OBJECT_MANAGER}'",
    f"type='signal',sender='{NAME}',interface='{PROPERTIES}',member='PropertiesChanged',"
    f"path_namespace='{ROOT}/jobs'",
    f"type='signal',sender='{NAME}',interface='{JOB}',member='Completed'",
)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def plain(value: Any) -> Any:
    """Variants unwrapped, for JSON."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def on_message(msg: Message) -> None:
    if msg.message_type is not MessageType.SIGNAL:
        return
    body = plain(msg.body)
    if msg.interface == OBJECT_MANAGER and msg.member == "InterfacesAdded":
        emit("added", **{"from": msg.path}, path=body[0], interfaces=body[1])
    elif msg.interface == OBJECT_MANAGER and msg.member == "InterfacesRemoved":
        emit("removed", **{"from": msg.path}, path=body[0], interfaces=body[1])
    elif msg.interface == PROPERTIES and msg.member == "PropertiesChanged":
        emit("changed", path=msg.path, interface=body[0], changed=body[1], invalidated=body[2])
    elif msg.interface == JOB and msg.member == "Completed":
        emit("completed", path=msg.path, args=body)


async def watch() -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.add_message_handler(on_message)
    for rule in RULES:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
        if reply is None or reply.message_type is MessageType.ERROR:
            raise SystemExit(f"AddMatch {rule} failed: {reply and reply.body}")
    emit(
        "ready",
        python=sys.version,
        dbus_fast=importlib.metadata.version("dbus-fast"),
        module=dbus_fast.message_bus.__file__,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    bus.disconnect()


async def cancel(path: str) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    reply = await bus.call(Message(destination=NAME, path=path, interface=JOB, member="Cancel"))
    bus.disconnect()
    failed = reply is not None and reply.message_type is MessageType.ERROR
    message = str(reply.body[0]) if failed and reply is not None and reply.body else ""
    emit("reply", path=path, error=reply.error_name if failed and reply else None, message=message)


if __name__ == "__main__":
    if sys.argv[1:2] == ["watch"]:
        asyncio.run(watch())
    elif sys.argv[1:2] == ["cancel"] and len(sys.argv) == 3:
        asyncio.run(cancel(sys.argv[2]))
    else:
        raise SystemExit("usage: bus_client.py watch | cancel PATH")
