"""aioquic adapter: pumps one sans-IO Session over one QUIC stream.

The protocol object only moves bytes and time between aioquic and the Session;
every decision is made by the Session or by the PeerManager that owns it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from cryptography.hazmat.primitives import serialization

from lanspreadd.core.identity import Identity
from lanspreadd.protocol import ALPN
from lanspreadd.protocol.messages import Message
from lanspreadd.protocol.session import Event, LocalPeer, Role, Session
from lanspreadd.protocol.text import MAX_TEXT, printable

IDLE_TIMEOUT = 30.0

EventSink = Callable[["PeerConnection", list[Event]], None]


def quic_configuration(identity: Identity, is_client: bool) -> QuicConfiguration:
    config = QuicConfiguration(
        alpn_protocols=[ALPN], is_client=is_client, idle_timeout=IDLE_TIMEOUT
    )
    if is_client:
        # Peers use self-signed certificates; the session's signed handshake and the
        # peer-id check below authenticate them instead of a CA.
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_cert_chain(identity.cert_path, identity.key_path)
    return config


def outgoing_host(listen: str) -> str:
    """The address our connections to peers leave from: the listen address when it is a
    specific one, so a peer knows us by one address (its grants, redials and per-address
    caps); "" for a wildcard, where the kernel picks by route as before."""
    try:
        unspecified = ipaddress.ip_address(listen).is_unspecified
    except ValueError:
        unspecified = not listen  # a host name is bound as given
    return "" if unspecified else listen


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    local_host: str,
    configuration: QuicConfiguration,
    create_protocol: Callable[..., QuicConnectionProtocol],
) -> AsyncIterator[QuicConnectionProtocol]:
    """aioquic's `connect`, its socket bound to `local_host` when one is given: aioquic's
    own binds ("::", 0), so a daemon listening on 127.0.0.2 dialled from 127.0.0.1.

    Yields before the handshake: the caller transmits and waits for its own event
    (aioquic's wait leaked an error when nobody took it)."""
    if not local_host:
        async with aioquic_connect(
            host,
            port,
            configuration=configuration,
            create_protocol=create_protocol,
            wait_connected=False,
        ) as protocol:
            yield protocol
        return
    loop = asyncio.get_running_loop()
    family, *_, local = (await loop.getaddrinfo(local_host, 0, type=socket.SOCK_DGRAM))[0]
    # The peer's address in our socket's family: an IPv4 listen address dials IPv4 only.
    remote = (await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM))[0][4]
    if configuration.server_name is None:
        configuration.server_name = host
    connection = QuicConnection(configuration=configuration)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(local)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: create_protocol(connection), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    try:
        protocol.connect(remote, transmit=False)
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()


class PeerConnection(QuicConnectionProtocol):
    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        local: LocalPeer,
        role: Role,
        sink: EventSink,
        expected_peer_id: str | None = None,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.session = Session(role, local, time.monotonic(), expected_peer_id)
        self.sink = sink
        self.stream_id: int | None = None
        self.closed = asyncio.Event()
        self.established: asyncio.Future[str] | None = None

    @property
    def remote_host(self) -> str:
        paths = self._quic._network_paths  # aioquic keeps the peer address only here
        host = str(paths[0].addr[0]) if paths else ""
        return host.removeprefix("::ffff:") if "." in host else host

    @property
    def smoothed_rtt(self) -> float | None:
        """QUIC's smoothed RTT (seconds) once sampled: what `core.locality` ranks by."""
        loss = self._quic._loss  # no public accessor in aioquic
        return loss._rtt_smoothed if loss._rtt_initialized else None

    def quic_event_received(self, event: QuicEvent) -> None:
        now = time.monotonic()
        if isinstance(event, HandshakeCompleted):
            if self.session.role is Role.CLIENT:
                self.stream_id = self._quic.get_next_available_stream_id()
                cert = self._quic.tls._peer_certificate  # no public accessor in aioquic
                if cert is None:
                    self._deliver(self.session.close("the server showed no TLS certificate"))
                    return
                self.session.start(cert.public_bytes(serialization.Encoding.DER))
                self.flush()
        elif isinstance(event, StreamDataReceived):
            if self.stream_id is None:
                self.stream_id = event.stream_id
            if event.stream_id != self.stream_id:
                self._deliver(self.session.close("protocol error: unexpected extra stream"))
                return
            self._deliver(self.session.receive(event.data, now))
        elif isinstance(event, ConnectionTerminated):
            # A clean close carries our peer's goodbye or refusal reason, which may
            # overtake the Goodbye frame itself.
            # The phrase is the peer's own words, unchecked by the session: escaped.
            phrase = printable(event.reason_phrase, MAX_TEXT)
            if event.error_code == 0 and phrase:
                reason = f"peer said goodbye: {phrase}"
            else:
                reason = phrase or f"connection closed (code {event.error_code})"
            events = self.session.transport_closed(reason)
            self.closed.set()
            if events:
                self.sink(self, events)

    def _deliver(self, events: list[Event]) -> None:
        self.flush()
        if events:
            self.sink(self, events)

    def flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.stream_id is not None:
            self._quic.send_stream_data(self.stream_id, data)
        if self.session.closed and not self.closed.is_set():
            self._quic.close(reason_phrase=(self.session.close_reason or "")[:200])
        self.transmit()

    def send_message(self, message: Message) -> None:
        self.session.send(message)
        self.flush()

    def say_goodbye(self, reason: str) -> None:
        self._deliver(self.session.close(reason))

    async def run_timer(self) -> None:
        """Drive the session's pings and liveness; ends with the connection."""
        while not self.closed.is_set():
            at = self.session.timer_at()
            if at is None:
                await self.closed.wait()
                return
            try:
                # asyncio.timeout: on 3.11 wait_for can swallow a cancel (see downloader).
                async with asyncio.timeout(max(0.0, at - time.monotonic())):
                    await self.closed.wait()
            except TimeoutError:
                self._deliver(self.session.handle_timer(time.monotonic()))
