"""A small asyncio D-Bus client for lanspreadd, with errors mapped to exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from lanspreadctl.agent import TextAgent

BUS_NAME = "org.lanspread.Lanspread1"
ROOT_PATH = "/org/lanspread/Lanspread1"
MANAGER_IFACE = "org.lanspread.Lanspread1.Manager"
GAME_IFACE = "org.lanspread.Lanspread1.Game"
JOB_IFACE = "org.lanspread.Lanspread1.Job"
ERROR_PREFIX = "org.lanspread.Lanspread1.Error."
POLKIT_NAME = "org.freedesktop.PolicyKit1"
# Manager methods, and properties set with Properties.Set, that lanspreadd authorises
# through polkit.
MUTATING = frozenset(
    {
        "Cancel",
        "ConnectPeer",
        "Download",
        "DownloadLimit",
        "Install",
        "PublishCatalog",
        "ReloadCatalog",
        "RemoveDownload",
        "SetGameDir",
        "StreamInstall",
        "TrustKey",
        "Uninstall",
        "UntrustKey",
        "Update",
        "UploadLimit",
    }
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4

DAEMON_STOPPED = "daemon-stopped"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"

UNREACHABLE_ERRORS = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    # D-Bus activation of a disabled or masked unit: systemd's refusal, passed on by the bus.
    "org.freedesktop.systemd1.NoSuchUnit",
    "org.freedesktop.systemd1.UnitMasked",
}


class ClientError(Exception):
    """A failure with the exit code lanspreadctl should end with."""

    def __init__(self, message: str, code: int, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name


def exit_code_for(error_name: str) -> int:
    if error_name in UNREACHABLE_ERRORS:
        return EXIT_UNREACHABLE
    if error_name in (ERROR_PREFIX + "NotAuthorized", "org.freedesktop.DBus.Error.AccessDenied"):
        return EXIT_DENIED
    if error_name in (ERROR_PREFIX + "InvalidArgument", "org.freedesktop.DBus.Error.InvalidArgs"):
        return EXIT_USAGE
    return EXIT_FAILED


def unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def session_bus_address() -> str:
    """Find the session bus as libdbus and sd-bus do; dbus-fast skips $XDG_RUNTIME_DIR/bus."""
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and Path(runtime_dir, "bus").is_socket():
        return f"unix:path={Path(runtime_dir, 'bus')}"
    raise ClientError(
        "no session bus: DBUS_SESSION_BUS_ADDRESS is not set and there is no "
        "$XDG_RUNTIME_DIR/bus (lanspreadd runs on the system bus unless started with "
        "--bus session)",
        EXIT_UNREACHABLE,
    )


SignalHandler = Callable[[Message], None]
T = TypeVar("T")


class Client:
    def __init__(self, bus_spec: str, ask_password: bool | None = None) -> None:
        """`ask_password`: someone can answer polkit; by default when stdin is a terminal,
        as systemctl decides."""
        self.bus_spec = bus_spec
        if ask_password is None:
            ask_password = sys.stdin is not None and sys.stdin.isatty()
        self.ask_password = ask_password
        self.agent: TextAgent | None = None
        self._agent_tried = False
        self.address: str | None = None  # None: the system bus
        self.bus: MessageBus | None = None
        self._handlers: list[SignalHandler] = []
        self.daemon_gone: asyncio.Future[None] | None = None
        self.daemon_owner = ""  # the unique bus name of the lanspreadd that answered first

    @property
    def bus_label(self) -> str:
        return self.bus_spec if self.bus_spec in ("system", "session") else "given"

    async def connect(self) -> None:
        try:
            if self.bus_spec == "system":
                bus = MessageBus(bus_type=BusType.SYSTEM)
            elif self.bus_spec == "session":
                self.address = session_bus_address()
                bus = MessageBus(bus_address=self.address)
            else:
                self.address = self.bus_spec
                bus = MessageBus(bus_address=self.address)
            await asyncio.wait_for(bus.connect(), 10)
        except ClientError:
            raise
        except Exception as exc:  # dbus-fast raises its own kinds too, e.g. for a bad address
            raise ClientError(
                f"cannot connect to the {self.bus_label} bus: {exc}", EXIT_UNREACHABLE
            ) from exc
        bus.add_message_handler(self._dispatch)
        self.bus = bus

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.bus is not None:
            self.bus.disconnect()

    async def _start_agent(self) -> None:
        """Once, before the first mutating call: a text agent when polkit is in play,
        that is on the system bus or where polkit shares lanspreadd's bus."""
        if self._agent_tried:
            return
        self._agent_tried = True
        if self.address is not None:
            has_polkit = await self.call(
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                [POLKIT_NAME],
                destination="org.freedesktop.DBus",
            )
            if not has_polkit[0]:
                return
        self.agent = await TextAgent.start(self.address)

    def _dispatch(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL:
            for handler in list(self._handlers):
                handler(msg)

    async def call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        destination: str = BUS_NAME,
        interactive: bool = False,
    ) -> list[Any]:
        """`interactive`: the call is authorised by polkit, which may ask for a password
        when someone at the terminal can answer."""
        assert self.bus is not None
        flags = MessageFlag.NONE
        if interactive and self.ask_password:
            await self._start_agent()
            flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        reply = await self.bus.call(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
                flags=flags,
            )
        )
        if reply is None:
            raise ClientError("no reply from lanspreadd", EXIT_UNREACHABLE)
        if destination == BUS_NAME and reply.sender != "org.freedesktop.DBus":
            self.daemon_owner = self.daemon_owner or reply.sender or ""
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or ""
            text = reply.body[0] if reply.body else name
            if name in UNREACHABLE_ERRORS:
                text = f"lanspreadd is not running on the {self.bus_label} bus ({text})"
            raise ClientError(str(text), exit_code_for(name), name)
        return list(reply.body)

    async def manager(self, member: str, signature: str = "", *args: Any) -> Any:
        body = await self.call(
            ROOT_PATH, MANAGER_IFACE, member, signature, list(args), interactive=member in MUTATING
        )
        return unwrap(body[0]) if len(body) == 1 else unwrap(body)

    async def set_manager_property(self, name: str, signature: str, value: Any) -> None:
        await self.call(
            ROOT_PATH,
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            [MANAGER_IFACE, name, Variant(signature, value)],
            interactive=name in MUTATING,
        )

    async def get_all(self, path: str, interface: str) -> dict[str, Any]:
        body = await self.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", [interface])
        result: dict[str, Any] = unwrap(body[0])
        return result

    async def watch_daemon(self) -> None:
        """Resolve `daemon_gone` when the lanspreadd that answered us leaves the bus
        (stopped, killed, restarted): nothing else ends a wait on its signals. Call it
        after lanspreadd has answered once, so a bus-activated daemon counts as there."""
        if self.daemon_gone is not None:
            return
        gone = self.daemon_gone = asyncio.get_running_loop().create_future()

        def on_owner(msg: Message) -> None:
            left = msg.member == "NameOwnerChanged" and msg.body[:2] == [
                BUS_NAME,
                self.daemon_owner,
            ]
            if left and not gone.done():
                gone.set_result(None)

        await self.subscribe(
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            f"member='NameOwnerChanged',arg0='{BUS_NAME}'",
            on_owner,
        )
        try:  # it may have left, or been replaced, before the match rule was in place
            owner = await self.call(
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetNameOwner",
                "s",
                [BUS_NAME],
                destination="org.freedesktop.DBus",
            )
        except ClientError:
            owner = [""]
        self.daemon_owner = self.daemon_owner or owner[0]
        if (owner[0] != self.daemon_owner or not owner[0]) and not gone.done():
            gone.set_result(None)

    async def until_daemon_gone(self, waiting: Awaitable[T], what: str) -> T:
        """Await `waiting` unless the daemon leaves first (see `watch_daemon`)."""
        await self.watch_daemon()
        assert self.daemon_gone is not None
        task = asyncio.ensure_future(waiting)
        racing: set[asyncio.Future[Any]] = {task, self.daemon_gone}
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise ClientError(
            f"lanspreadd stopped while waiting for {what}", EXIT_UNREACHABLE, DAEMON_STOPPED
        )

    async def subscribe(self, rule: str, handler: SignalHandler) -> None:
        self._handlers.append(handler)
        await self.call(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [rule],
            destination="org.freedesktop.DBus",
        )
