"""mDNS discovery of `_lanspread._udp.local.` with zeroconf's asyncio API.

Discovery only proposes peers (id, address, port); the PeerManager connects and
the authenticated session decides. zeroconf keeps a killed peer's record for a
long time, so liveness is the session's pings, never the mDNS cache.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from zeroconf import (  # type: ignore[attr-defined]
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    get_all_addresses,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.text import MAX_NAME, check_peer_id, check_text, printable

log = logging.getLogger(__name__)

SERVICE_TYPE = "_lanspread._udp.local."
SUFFIX = f".{SERVICE_TYPE}"
RESOLVE_TIMEOUT_MS = 3000

Found = Callable[[str, str, int], None]
Lost = Callable[[str], None]


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
        self._resolving: set[str] = set()

    def _addresses(self) -> list[bytes]:
        ips = self.interfaces or [ip for ip in get_all_addresses() if not ip.startswith("127.")]
        return [socket.inet_aton(ip) for ip in ips]

    async def run(self) -> None:
        azc = AsyncZeroconf(
            interfaces=self.interfaces or InterfaceChoice.All,
            ip_version=IPVersion.V4Only,
        )
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.peer_id}{SUFFIX}",
            port=self.port,
            properties={"id": self.peer_id, "v": str(PROTOCOL_VERSION), "name": self.name},
            addresses=self._addresses(),
            server=f"lanspread-{self.peer_id[:12]}.local.",
        )
        queue: asyncio.Queue[str] = asyncio.Queue()

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                queue.put_nowait(name)
            elif state_change is ServiceStateChange.Removed and name.endswith(SUFFIX):
                self.on_lost(name.removesuffix(SUFFIX))

        browser: AsyncServiceBrowser | None = None
        try:
            await (await azc.async_register_service(info))
            browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
            log.info("announcing %s on mDNS", info.name)
            async with asyncio.TaskGroup() as tg:
                while True:
                    name = await queue.get()
                    if name not in self._resolving:
                        self._resolving.add(name)
                        tg.create_task(self._resolve(azc, name))
        finally:
            if browser is not None:
                await browser.async_cancel()
            await azc.async_unregister_all_services()
            await azc.async_close()

    async def _resolve(self, azc: AsyncZeroconf, name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            props = {
                k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
                for k, v in info.properties.items()
            }
            peer_id = props.get("id", "")
            if peer_id == self.peer_id:
                return
            try:
                check_peer_id(peer_id, "id")
                peer_name = check_text(props.get("name", ""), "name", MAX_NAME)
                version = check_text(props.get("v", ""), "v", MAX_NAME)
            except RemoteProtocolError as exc:
                log.debug("ignoring the mDNS record %s: %s", printable(name), exc)
                return
            if version != str(PROTOCOL_VERSION):
                log.warning(
                    "ignoring peer %s: it speaks protocol %s, we speak %d",
                    peer_name or peer_id,
                    version,
                    PROTOCOL_VERSION,
                )
                return
            addresses = info.parsed_addresses(IPVersion.V4Only)
            if addresses and info.port:
                self.on_found(peer_id, addresses[0], info.port)
        except Exception:
            # One malformed record must not restart discovery for everyone else.
            log.warning("resolving the mDNS record %s failed", printable(name), exc_info=True)
        finally:
            self._resolving.discard(name)
