"""A desktop app's view of lanspreadd: GLib's GDBusObjectManagerClient on the daemon's bus.

Run under Debian's /usr/bin/python3 with python3-gi, as a GTK app would be (the test
venv has no PyGObject): `python3 glib_client.py ADDRESS`. It prints one JSON line per
event and takes one command a line on stdin; closing stdin ends it.

Events (each with `t`, the monotonic time it was seen):
  object-added        path, interfaces {name: cached properties}, initial (already there)
  object-removed      path, interfaces [names]
  properties-changed  path, interface, changed {name: value}, invalidated [names]
                      (objects of the manager, and the Manager interface at the root)
  signal              path, interface, member, args  (signals of managed objects)
  ready               name_owner (the objects there at start came just before)
  name-owner          name_owner (the daemon left or came)
  reply               command, path, error (D-Bus error name or null), message
  objects             objects {path: {interface: cached properties}}
  manager             properties (the Manager proxy's cache)
  bus-closed
Commands: `cancel PATH` (Job.Cancel through the manager's proxy, or a plain call if the
manager holds no such object), `objects`, `manager`.

PyGObject has no type stubs in the venv that type-checks this file: gi is imported by
name and typed as Any.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any

gi: Any = importlib.import_module("gi")
gi.require_version("Gio", "2.0")
gi.require_version("GLib", "2.0")
Gio: Any = importlib.import_module("gi.repository.Gio")
GLib: Any = importlib.import_module("gi.repository.GLib")

BUS_NAME = "org.lanspread.Lanspread1"
ROOT = "/org/lanspread/Lanspread1"
MANAGER = "org.lanspread.Lanspread1.Manager"
JOB = "org.lanspread.Lanspread1.Job"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def cached(proxy: Any) -> dict[str, Any]:
    """What the proxy holds in its cache: what an app shows without asking."""
    names = proxy.get_cached_property_names() or []
    return {name: proxy.get_cached_property(name).unpack() for name in names}


def interfaces(obj: Any) -> dict[str, Any]:
    return {proxy.get_interface_name(): cached(proxy) for proxy in obj.get_interfaces()}


def described(error: Any) -> tuple[str, str]:
    """The D-Bus error name and message a GLib error carries (GLib's own if it is local)."""
    name = Gio.DBusError.get_remote_error(error)
    if not name:
        return f"{error.domain}:{error.code}", str(error.message)
    return str(name), str(error.message).removeprefix(f"GDBus.Error:{name}: ")


class Client:
    """The object manager, the Manager proxy at the root, and the stdin commands."""

    def __init__(self, address: str) -> None:
        self.loop = GLib.MainLoop()
        flags = (
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        )
        self.bus = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
        self.bus.connect("closed", self.on_closed)
        self.objects = Gio.DBusObjectManagerClient.new_sync(
            self.bus, Gio.DBusObjectManagerClientFlags.NONE, BUS_NAME, ROOT, None, None, None
        )
        self.manager = Gio.DBusProxy.new_sync(
            self.bus, Gio.DBusProxyFlags.NONE, None, BUS_NAME, ROOT, MANAGER, None
        )
        self.pending = b""

    def start(self) -> None:
        for obj in self.objects.get_objects():
            emit(
                "object-added", path=obj.get_object_path(), interfaces=interfaces(obj), initial=True
            )
        self.objects.connect("object-added", self.on_added)
        self.objects.connect("object-removed", self.on_removed)
        self.objects.connect("interface-proxy-properties-changed", self.on_changed)
        self.objects.connect("interface-proxy-signal", self.on_signal)
        self.objects.connect("notify::name-owner", self.on_owner)
        self.manager.connect("g-properties-changed", self.on_manager_changed)
        GLib.io_add_watch(0, GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP, self.on_stdin)
        emit("ready", name_owner=self.objects.get_name_owner())
        self.loop.run()

    def on_added(self, _manager: Any, obj: Any) -> None:
        emit("object-added", path=obj.get_object_path(), interfaces=interfaces(obj), initial=False)

    def on_removed(self, _manager: Any, obj: Any) -> None:
        names = [proxy.get_interface_name() for proxy in obj.get_interfaces()]
        emit("object-removed", path=obj.get_object_path(), interfaces=names)

    def on_changed(
        self, _manager: Any, obj: Any, proxy: Any, changed: Any, invalidated: list[str]
    ) -> None:
        emit(
            "properties-changed",
            path=obj.get_object_path(),
            interface=proxy.get_interface_name(),
            changed=changed.unpack(),
            invalidated=list(invalidated),
        )

    def on_manager_changed(self, proxy: Any, changed: Any, invalidated: list[str]) -> None:
        emit(
            "properties-changed",
            path=ROOT,
            interface=MANAGER,
            changed=changed.unpack(),
            invalidated=list(invalidated),
        )

    def on_signal(
        self, _manager: Any, obj: Any, proxy: Any, _sender: str, member: str, args: Any
    ) -> None:
        emit(
            "signal",
            path=obj.get_object_path(),
            interface=proxy.get_interface_name(),
            member=member,
            args=list(args.unpack()),
        )

    def on_owner(self, manager: Any, _spec: Any) -> None:
        emit("name-owner", name_owner=manager.get_name_owner())

    def on_closed(self, _bus: Any, _remote_vanished: bool, _error: Any) -> None:
        emit("bus-closed")
        self.loop.quit()

    def on_stdin(self, _fd: int, _condition: Any) -> bool:
        data = os.read(0, 65536)
        if not data:
            self.loop.quit()
            return False
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.command(line.decode())
        return True

    def command(self, line: str) -> None:
        word, _, argument = line.strip().partition(" ")
        if word == "cancel":
            self.cancel(argument)
        elif word == "objects":
            held = {obj.get_object_path(): interfaces(obj) for obj in self.objects.get_objects()}
            emit("objects", objects=held)
        elif word == "manager":
            emit("manager", properties=cached(self.manager))
        else:
            emit("reply", command=word, path="", error="unknown-command", message=line)

    def cancel(self, path: str) -> None:
        """Job.Cancel as an app calls it: through the proxy the manager holds, if any."""

        def done(source: Any, result: Any, finish: Any) -> None:
            try:
                finish(result)
            except GLib.Error as error:
                name, message = described(error)
                emit("reply", command="cancel", path=path, error=name, message=message)
            else:
                emit("reply", command="cancel", path=path, error=None, message="")

        proxy = self.objects.get_interface(path, JOB)
        if proxy is not None:
            proxy.call("Cancel", None, Gio.DBusCallFlags.NONE, -1, None, done, proxy.call_finish)
        else:
            self.bus.call(
                BUS_NAME,
                path,
                JOB,
                "Cancel",
                None,
                None,
                Gio.DBusCallFlags.NONE,
                -1,
                None,
                done,
                self.bus.call_finish,
            )


def main() -> None:
    Client(sys.argv[1]).start()


if __name__ == "__main__":
    main()
