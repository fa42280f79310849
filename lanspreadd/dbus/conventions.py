"""The D-Bus conventions desktop clients rely on, which dbus-fast does not keep by itself.

- One ObjectManager, at the root: dbus-fast sends `InterfacesAdded`/`InterfacesRemoved`
  from the object's own path and lists `org.freedesktop.DBus.ObjectManager` on every
  object, so GLib's `GDBusObjectManagerClient` and dbus-next never saw a Job come or go.
- Every argument named and every property's change behaviour annotated
  (`EmitsChangedSignal`), so that generated bindings (`gdbus-codegen`) have names and
  clients know which cached values they can trust.
- Standard errors: a known method called with the wrong signature is `InvalidArgs`, a
  call on a path where nothing lives is `UnknownObject` (dbus-fast says `UnknownMethod`
  to both), and whatever the caller sent is echoed cut short.

dbus-fast calls `_emit_interface_added`, `_emit_interface_removed` and
`_introspect_export_path` through attribute look-ups, in PyPI's compiled wheels and in
Debian 13's package alike, so overriding them in a subclass is what runs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dbus_fast import DBusError, ErrorType, Message, MessageType
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from lanspreadd.core.escape import echoed

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
STANDARD = "org.freedesktop.DBus."
# The standard interfaces' methods and their signatures, as dbus-fast serves them.
STANDARD_METHODS = {
    PROPERTIES: {"Get": "ss", "Set": "ssv", "GetAll": "s"},
    "org.freedesktop.DBus.Introspectable": {"Introspect": ""},
    "org.freedesktop.DBus.Peer": {"Ping": "", "GetMachineId": ""},
    OBJECT_MANAGER: {"GetManagedObjects": ""},
}
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"


class Exported(ServiceInterface):
    """An interface that names its out-arguments and says how its properties change.

    dbus-fast names in-arguments after the Python parameters and nothing else.
    """

    ARG_NAMES: ClassVar[dict[str, tuple[str, ...]]] = {}  # method out-args, signal args
    CONSTANT: ClassVar[frozenset[str]] = frozenset()  # fixed for the object's lifetime
    UNTOLD: ClassVar[frozenset[str]] = frozenset()  # changes without PropertiesChanged

    def introspect(self) -> intr.Interface:
        iface: intr.Interface = super().introspect()
        members: list[tuple[str, list[intr.Arg]]] = [(m.name, m.out_args) for m in iface.methods]
        members += [(s.name, s.args) for s in iface.signals]
        for name, arguments in members:
            names = self.ARG_NAMES.get(name, ())
            if len(names) != len(arguments):
                raise ValueError(f"{self.name}.{name}: name its {len(arguments)} argument(s)")
            for arg, arg_name in zip(arguments, names, strict=True):
                arg.name = arg_name
        for prop in iface.properties:
            told = "false" if prop.name in self.UNTOLD else "true"
            prop.annotations[EMITS_CHANGED] = "const" if prop.name in self.CONSTANT else told
        return iface


class ObjectManagerBus(MessageBus):
    """A bus whose exported objects live under one ObjectManager at `manager_path`."""

    manager_path = "/"

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        if self._disconnected:
            return

        def send(iface: ServiceInterface, values: Any, _data: Any, err: Exception | None) -> None:
            if err is None and not self._disconnected:
                self.send(
                    Message.new_signal(
                        self.manager_path,
                        OBJECT_MANAGER,
                        "InterfacesAdded",
                        "oa{sa{sv}}",
                        [path, {iface.name: values}],
                    )
                )

        ServiceInterface._get_all_property_values(interface, send)

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        if self._disconnected:
            return
        self.send(
            Message.new_signal(
                self.manager_path,
                OBJECT_MANAGER,
                "InterfacesRemoved",
                "oas",
                [path, removed_interfaces],
            )
        )

    def _introspect_export_path(self, path: str) -> intr.Node:
        node: intr.Node = super()._introspect_export_path(path)
        if path != self.manager_path:
            node.interfaces = [i for i in node.interfaces if i.name != OBJECT_MANAGER]
        return node

    # ---- errors by the conventions ------------------------------------------------------
    def check_call(self, msg: Message) -> Message | None:
        """A message handler: answer calls dbus-fast would answer with the wrong error."""
        if msg.message_type is not MessageType.METHOD_CALL or msg.path is None:
            return None
        interfaces: dict[str, ServiceInterface] | None = self._path_exports.get(msg.path)
        if interfaces is None:
            if msg.interface in STANDARD_METHODS and msg.interface != PROPERTIES:
                return None  # Introspect and Ping answer on any path, as dbus-fast does
            raise DBusError(ErrorType.UNKNOWN_OBJECT, f"no object at {echoed(msg.path)}")
        if msg.interface == OBJECT_MANAGER and msg.path != self.manager_path:
            raise DBusError(
                ErrorType.UNKNOWN_INTERFACE,
                f"the object manager is {self.manager_path}, not {echoed(msg.path)}",
            )
        wanted = self._signature_of(interfaces, msg.interface, msg.member)
        if wanted is not None and wanted != msg.signature:
            raise DBusError(
                ErrorType.INVALID_ARGS,
                f"{msg.member} takes ({wanted}), not ({echoed(msg.signature)})",
            )
        return None

    @staticmethod
    def _signature_of(
        interfaces: dict[str, ServiceInterface], interface: str | None, member: str | None
    ) -> str | None:
        """The in-signature of `interface.member` on this object; None if there is none."""
        if interface is not None and interface.startswith(STANDARD):
            return STANDARD_METHODS.get(interface, {}).get(member or "")
        found = [
            m.in_signature
            for name, iface in interfaces.items()
            if interface in (None, name)
            for m in ServiceInterface._get_methods(iface)
            if m.name == member and not m.disabled
        ]
        return found[0] if len(found) == 1 else None
