"""The QUIC server, guarded against floods of connection attempts.

aioquic builds a whole connection (TLS state, keys, timers: about 50 KiB) for each
Initial that names a new connection id, and keeps it until the handshake times out:
6,000 Initials in 10 s took a core to 100 % and the daemon from 51 to 369 MiB, never
returned. So every new connection first proves its address with a Retry round trip
(measured on loopback: 11 ms to connect without, 15 ms with), and a forged source
address costs us one small packet and no state at all. A proven address then takes a
slot under per-address and total caps, given back when its connection ends. When
all are taken, the oldest connection that has not authenticated yet makes room: a
host with many addresses holding half-open connections cannot lock newcomers out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aioquic._buffer import Buffer
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from lanspreadd.core.admission import TOTAL as TOTAL_REFUSED
from lanspreadd.core.admission import ConnectionCaps
from lanspreadd.core.refusals import RefusalTally

# An honest peer holds one connection to us, two while a simultaneous connect
# settles; a 32-seat party needs 31 in all. Tests run many daemons on one address.
PER_ADDRESS = 32
TOTAL = 256


def address_of(addr: NetworkAddress) -> str:
    host = str(addr[0])
    return host.removeprefix("::ffff:") if "." in host else host


class GuardedQuicServer(QuicServer):
    """aioquic's server with Retry always on and connections counted against caps."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        create_protocol: Callable[..., QuicConnectionProtocol],
        caps: ConnectionCaps,
        refusals: RefusalTally,
        settled: Callable[[QuicConnectionProtocol], bool] = lambda protocol: False,
    ) -> None:
        super().__init__(configuration=configuration, create_protocol=self._admitted, retry=True)
        self.caps = caps
        self.refusals = refusals
        self.settled = settled  # an authenticated connection is never pushed out
        self._create = create_protocol
        self._admitting: str | None = None
        self._slots: dict[QuicConnectionProtocol, str] = {}

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if isinstance(data, str) or not self._opens_connection(data):
            super().datagram_received(data, addr)
            return
        address = address_of(addr)
        refused = self.caps.admit(address)
        if refused == TOTAL_REFUSED and self._push_out_oldest_unsettled():
            refused = self.caps.admit(address)
        if refused is not None:
            # Dropped unanswered: the client's own timer gives up, ours holds nothing.
            self.refusals.note(f"quic-{refused}", f"a QUIC connection from {address}")
            return
        self._admitting = address
        try:
            super().datagram_received(data, addr)
        finally:
            if self._admitting is not None:  # its token did not hold: no connection
                self._admitting = None
                self.caps.release(address)
                self.refusals.note("quic-bad-retry-token", f"a QUIC connection from {address}")

    def _opens_connection(self, data: bytes) -> bool:
        """An Initial with a Retry token for a connection id we do not know yet.

        Without a token aioquic only answers with a Retry; with one that holds, it
        builds a connection, which is what the caps count.
        """
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return False
        return (
            header.packet_type == QuicPacketType.INITIAL
            and bool(header.token)
            and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
            and header.destination_cid not in self._protocols
        )

    def _push_out_oldest_unsettled(self) -> bool:
        for protocol, address in self._slots.items():
            if not self.settled(protocol):
                del self._slots[protocol]
                self.caps.release(address)
                self.refusals.note("quic-pushed-out", f"a half-open connection from {address}")
                protocol.close(reason_phrase="too many connections")
                return True
        return False

    def _admitted(self, *args: Any, **kwargs: Any) -> QuicConnectionProtocol:
        """aioquic's hook for a new connection: the slot taken for it is now its own."""
        protocol = self._create(*args, **kwargs)
        if self._admitting is not None:
            self._slots[protocol] = self._admitting
            self._admitting = None
        return protocol

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        super()._connection_terminated(protocol)
        address = self._slots.pop(protocol, None)
        if address is not None:
            self.caps.release(address)

    def close(self) -> None:
        super().close()
        for address in self._slots.values():
            self.caps.release(address)
        self._slots.clear()


async def serve(
    host: str,
    port: int,
    *,
    configuration: QuicConfiguration,
    create_protocol: Callable[..., QuicConnectionProtocol],
    refusals: RefusalTally,
    settled: Callable[[QuicConnectionProtocol], bool] = lambda protocol: False,
    caps: ConnectionCaps | None = None,
) -> GuardedQuicServer:
    """Listen for peers on `host`:`port`, as aioquic's `serve` does, guarded."""
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: GuardedQuicServer(
            configuration=configuration,
            create_protocol=create_protocol,
            caps=caps or ConnectionCaps(PER_ADDRESS, TOTAL),
            refusals=refusals,
            settled=settled,
        ),
        local_addr=(host, port),
    )
    return server
