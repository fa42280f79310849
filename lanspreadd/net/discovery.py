"""mDNS discovery of `_lanspread._udp.local.` with zeroconf's asyncio API.

Discovery only proposes peers (id, address, port); the PeerManager connects and
the authenticated session decides. zeroconf keeps a killed peer's record for a
long time, so liveness is the session's pings, never the mDNS cache.

The DNS-SD instance name is for people (RFC 6763 section 4.1.1): avahi-browse and
desktop browsers show it. It is the daemon's name, "Name (2)", "Name (3)"... when
another service holds it; the peer id travels in TXT. So an instance name says
nothing about who is behind it: a withdrawal (a name, nothing more) is mapped
through the ids learnt when that name was resolved (`Instances`).

zeroconf probes a name before taking it, but renames as "Name-2", fails on a
63-byte name and never looks again once it announced: we number names ourselves
and settle the conflicts found later (`Conflicts`, RFC 6762 section 9).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from zeroconf import (  # type: ignore[attr-defined]
    DNSOutgoing,
    DNSQuestion,
    DNSText,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
    get_all_addresses,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from lanspreadd.errors import PeerError
from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.text import MAX_NAME, check_peer_id, check_text, printable

log = logging.getLogger(__name__)

SERVICE_TYPE = "_lanspread._udp.local."
SUFFIX = f".{SERVICE_TYPE}"
RESOLVE_TIMEOUT_MS = 3000
MAX_LABEL = 63  # bytes in a DNS label, so in an instance name (RFC 6763 section 4.1.1)
MAX_TXT_STRING = 255  # bytes in one TXT string, `name=` included
MAX_INSTANCE_NUMBER = 100  # "Name (100)": past that the LAN is hostile, not crowded
MAX_INSTANCES = 1024  # instance names remembered for withdrawals, newest kept
MAX_IDS_PER_INSTANCE = 4  # ids one name was seen to carry (two while a conflict lasts)
MAX_CONFLICTS_QUEUED = 16  # TXT records claiming our name, waiting to be settled
DEFEND_INTERVAL = 1.0  # seconds between re-announcements of our name
VERIFY_FIRST, VERIFY_MAX = 1.0, 60.0  # seconds between questions for our own name
TYPE_TXT, CLASS_IN, FLAGS_QUERY = 16, 1, 0  # RFC 1035 section 3.2


class Record(NamedTuple):
    """What a resolved service says about the peer behind it."""

    peer_id: str
    name: str
    version: str
    host: str | None
    port: int


Found = Callable[[str, str, int], None]
Lost = Callable[[str], None]


def cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-8 bytes: never half a character."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def instance_label(name: str, number: int = 1) -> str:
    """The instance name for a daemon called `name`, on the `number`-th try.

    RFC 6763 section 4.1.1 asks for the user's own text in at most 63 bytes, and
    "Name (2)" after a conflict (RFC 6762 section 9): the name is cut to leave room
    for the number. zeroconf writes a dot as a label break, so dots become dashes.
    """
    suffix = "" if number == 1 else f" ({number})"
    base = name.replace(".", "-")
    room = MAX_LABEL - len(suffix)
    if len(base.encode()) > room:
        base = cut_utf8(base, room).rstrip()
    return base + suffix


class Instances:
    """Which peer ids each instance name was seen to carry when resolved.

    A withdrawal names an instance, nothing more: the ids learnt for it are lost,
    unless another announced name still carries them (a peer that moved to
    "Name (2)" after a conflict keeps being dialled). Names compare as DNS does,
    ignoring case. Bounded: anyone on the LAN may announce names.
    """

    def __init__(self, limit: int = MAX_INSTANCES) -> None:
        self.limit = limit
        self._ids: dict[str, dict[str, None]] = {}  # insertion-ordered: oldest first

    def __len__(self) -> int:
        return len(self._ids)

    def learnt(self, name: str, peer_id: str) -> None:
        key = name.lower()
        ids = self._ids.pop(key, {})
        ids.pop(peer_id, None)
        ids[peer_id] = None
        while len(ids) > MAX_IDS_PER_INSTANCE:
            del ids[next(iter(ids))]
        self._ids[key] = ids
        while len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]

    def withdrawn(self, name: str) -> list[str]:
        """Forget `name`; the ids no other name carries, which are gone with it."""
        ids = self._ids.pop(name.lower(), {})
        if not ids:
            return []
        carried = {peer_id for other in self._ids.values() for peer_id in other}
        return [peer_id for peer_id in ids if peer_id not in carried]


def txt_peer_id(text: bytes) -> str | None:
    """The peer id a TXT record's `id=` string claims, if it is one."""
    i = 0
    while i < len(text):
        string = text[i + 1 : i + 1 + text[i]]
        if len(string) < text[i]:
            return None  # a string running past the record: malformed
        i += 1 + text[i]
        if string.startswith(b"id="):
            try:
                return check_peer_id(string[3:].decode("ascii"), "id")
            except (UnicodeDecodeError, RemoteProtocolError):
                return None
    return None


class Conflicts(RecordUpdateListener):
    """Every TXT record for our instance name that is not ours: a conflict (RFC 6762
    section 9), told with the id of the peer that holds the name too."""

    def __init__(
        self, ours: Callable[[], AsyncServiceInfo | None], told: Callable[[str, str], None]
    ) -> None:
        self.ours = ours
        self.told = told

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        info = self.ours()
        if info is None:
            return
        for update in records:
            record = update.new
            if (
                isinstance(record, DNSText)
                and record.ttl > 0
                and record.name.lower() == info.name.lower()
                and record.text != info.text
            ):
                holder = txt_peer_id(record.text)
                if holder is not None:
                    self.told(info.name, holder)


class Discovery:
    def __init__(
        self,
        peer_id: str,
        name: str,
        port: int,
        interfaces: list[str],
        on_found: Found,
        on_lost: Lost,
    ) -> None:
        self.peer_id = peer_id
        self.name = name
        self.port = port
        self.interfaces = interfaces
        self.on_found = on_found
        self.on_lost = on_lost
        self.instances = Instances()
        self.number = 1  # which try at a unique instance name
        self.info: AsyncServiceInfo | None = None
        self._resolving: set[str] = set()
        self._again: set[str] = set()
        self._announced: set[str] = set()  # names the browser holds, lowercased
        self._conflicts: asyncio.Queue[tuple[str, str]] = asyncio.Queue(MAX_CONFLICTS_QUEUED)
        self._defended_at = float("-inf")
        self._renamed = False

    def _addresses(self) -> list[bytes]:
        ips = self.interfaces or [ip for ip in get_all_addresses() if not ip.startswith("127.")]
        return [socket.inet_aton(ip) for ip in ips]

    def _service_info(self, label: str) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{label}{SUFFIX}",
            port=self.port,
            properties={
                "id": self.peer_id,
                "v": str(PROTOCOL_VERSION),
                "name": cut_utf8(self.name, MAX_TXT_STRING - len("name=")),
            },
            addresses=self._addresses(),
            server=f"lanspread-{self.peer_id[:12]}.local.",
        )

    def _ours(self, name: str) -> bool:
        return self.info is not None and name.lower() == self.info.name.lower()

    async def run(self) -> None:
        azc = AsyncZeroconf(
            interfaces=self.interfaces or InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
        queue: asyncio.Queue[tuple[ServiceStateChange, str]] = asyncio.Queue()

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            queue.put_nowait((state_change, name))

        conflicts = Conflicts(lambda: self.info, self._told_conflict)
        browser: AsyncServiceBrowser | None = None
        try:
            azc.zeroconf.async_add_listener(conflicts, None)
            await self._register(azc)
            browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._settle_conflicts(azc))
                tg.create_task(self._verify(azc))
                while True:
                    state_change, name = await queue.get()
                    if state_change is ServiceStateChange.Removed:
                        self._announced.discard(name.lower())
                        if self._ours(name):
                            tg.create_task(self._defend(azc))
                        else:
                            self._withdrawn(name)
                        continue
                    self._announced.add(name.lower())
                    if name in self._resolving:
                        self._again.add(name)  # it changed while we resolved it
                    else:
                        self._resolving.add(name)
                        tg.create_task(self._resolve(azc, name))
        finally:
            if browser is not None:
                await browser.async_cancel()
            azc.zeroconf.async_remove_listener(conflicts)
            await azc.async_unregister_all_services()
            await azc.async_close()

    async def _register(self, azc: AsyncZeroconf) -> AsyncServiceInfo:
        """Announce ourselves under the first free name from `self.number` on."""
        while True:
            info = self._service_info(instance_label(self.name, self.number))
            try:
                await (await azc.async_register_service(info))
            except NonUniqueNameException:
                if self.number >= MAX_INSTANCE_NUMBER:
                    raise PeerError(
                        f"mDNS names {printable(self.name)!r} to number {self.number} "
                        "are all taken on this LAN"
                    ) from None
                self.number += 1
                continue
            self.info = info
            level = logging.DEBUG if self._renamed else logging.INFO
            log.log(level, "announcing %s on mDNS", printable(info.name))
            return info

    def _told_conflict(self, name: str, holder: str) -> None:
        if holder != self.peer_id and not self._conflicts.full():
            self._conflicts.put_nowait((name, holder))  # the rest would tell the same

    async def _settle_conflicts(self, azc: AsyncZeroconf) -> None:
        """Another peer holds our instance name too (RFC 6762 section 9). Both see the
        same two ids: the greater keeps the name and announces it again, the other
        takes the next. No goodbye for the name left: the holder's records share it,
        and a goodbye would take the holder out of every cache."""
        while True:
            name, holder = await self._conflicts.get()
            if self.info is None or not self._ours(name):
                continue  # we moved on meanwhile
            if holder < self.peer_id:
                await self._defend(azc)
                continue
            azc.zeroconf.registry.async_remove(self.info)
            self.info = None
            self.number += 1
            info = await self._register(azc)
            # Said once: anyone on the LAN may claim our names, one after another.
            log.log(
                logging.DEBUG if self._renamed else logging.WARNING,
                "mDNS name %s is held by peer %s too; we are %s now",
                printable(name.removesuffix(SUFFIX)),
                holder[:8],
                printable(info.name.removesuffix(SUFFIX)),
            )
            self._renamed = True

    async def _verify(self, azc: AsyncZeroconf) -> None:
        """Ask for our own name's TXT now and then: a peer that was out of reach while
        we probed (a cable plugged in later) answers, and the conflict shows."""
        delay = VERIFY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, VERIFY_MAX)
            if self.info is not None:
                out = DNSOutgoing(FLAGS_QUERY)
                out.add_question(DNSQuestion(self.info.name, TYPE_TXT, CLASS_IN))
                azc.zeroconf.async_send(out)

    async def _defend(self, azc: AsyncZeroconf) -> None:
        """Announce our records again so that caches hold ours, at most once a second."""
        now = time.monotonic()
        if self.info is None or now - self._defended_at < DEFEND_INTERVAL:
            return
        self._defended_at = now
        await (await azc.async_update_service(self.info))

    def _withdrawn(self, name: str) -> None:
        for peer_id in self.instances.withdrawn(name):
            # Debug only: a host that announces and withdraws made-up names would fill the log.
            log.debug(
                "peer %s withdrew its mDNS name %s",
                peer_id[:8],
                printable(name.removesuffix(SUFFIX)),
            )
            self.on_lost(peer_id)

    async def _resolve(self, azc: AsyncZeroconf, name: str) -> None:
        """Resolve `name` again if it changed while we resolved it."""
        try:
            while True:
                self._again.discard(name)
                record = await self._read(azc, name)
                if record is not None:
                    self._resolved(name, record)
                if name not in self._again:
                    return
        finally:
            self._resolving.discard(name)

    def _resolved(self, name: str, record: Record) -> None:
        if name.lower() not in self._announced:
            return  # withdrawn while we resolved it
        if record.version != str(PROTOCOL_VERSION):
            log.warning(
                "ignoring peer %s: it speaks protocol %s, we speak %d",
                record.name or record.peer_id,
                record.version,
                PROTOCOL_VERSION,
            )
            return
        if record.host is not None and record.port:
            self.instances.learnt(name, record.peer_id)
            log.debug(
                "peer %s announces itself as %s at %s:%d",
                record.peer_id[:8],
                printable(name.removesuffix(SUFFIX)),
                record.host,
                record.port,
            )
            self.on_found(record.peer_id, record.host, record.port)

    async def _read(self, azc: AsyncZeroconf, name: str) -> Record | None:
        """Another peer's record, its TXT checked as any peer's text; None if not one."""
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS):
                return None
            props = {
                k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
                for k, v in info.properties.items()
            }
            peer_id = props.get("id", "")
            if peer_id == self.peer_id:
                return None
            try:
                check_peer_id(peer_id, "id")
                peer_name = check_text(props.get("name", ""), "name", MAX_NAME)
                version = check_text(props.get("v", ""), "v", MAX_NAME)
            except RemoteProtocolError as exc:
                log.debug("ignoring the mDNS record %s: %s", printable(name), exc)
                return None
            addresses = info.parsed_addresses(IPVersion.V4Only)
            host = addresses[0] if addresses else None
            return Record(peer_id, peer_name, version, host, info.port or 0)
        except Exception:
            # One malformed record must not restart discovery for everyone else.
            log.warning("resolving the mDNS record %s failed", printable(name), exc_info=True)
            return None
