"""Authorise mutating calls with polkit, on behalf of the calling bus name."""

from __future__ import annotations

import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from lanspreadd.errors import NotAuthorized

log = logging.getLogger(__name__)

ALLOW_USER_INTERACTION = 1
UNAVAILABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
}


async def check_authorization(
    bus: MessageBus, sender: str, action: str, interactive: bool = False
) -> None:
    """Raise NotAuthorized unless polkit says `sender` may perform `action`. Only an
    `interactive` caller (one that set ALLOW_INTERACTIVE_AUTHORIZATION) may be asked to
    authenticate: otherwise polkit would wait on an agent nobody is watching."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.PolicyKit1",
            path="/org/freedesktop/PolicyKit1/Authority",
            interface="org.freedesktop.PolicyKit1.Authority",
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", sender)}],
                action,
                {},
                ALLOW_USER_INTERACTION if interactive else 0,
                "",
            ],
        )
    )
    if reply is None or reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        log.warning("polkit check of %s for %s failed: %s", action, sender, detail)
        if reply is not None and reply.error_name in UNAVAILABLE:
            raise NotAuthorized(f"cannot authorise {action}: polkit is unavailable ({detail})")
        raise NotAuthorized(f"cannot authorise {action}: polkit refused to check ({detail})")
    authorized, challenge, _details = reply.body[0]
    if not authorized:
        hint = " (authentication is required)" if challenge else ""
        raise NotAuthorized(f"not authorised to perform {action}{hint}")
