"""A hostile host that relays one peer's identity proof to another (protocol 1's hole).

`python -m tests.scenarios.hostile_relay STATE VICTIM_HOST:PORT HONEST_HOST:PORT`
connects to both over real QUIC with its own identity, says Hello to the victim as
the honest peer (certificates are public), passes the victim's challenge on to the
honest peer in a Hello as the victim, and hands the honest peer's signature to the
victim. It prints how the victim answered: `refused: REASON` or `accepted`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography.hazmat.primitives import serialization

from lanspreadd.core.identity import load_or_create
from lanspreadd.net.transport import quic_configuration
from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.codec import FrameDecoder, encode
from lanspreadd.protocol.identity import peer_id_of
from lanspreadd.protocol.messages import Auth, Hello, Message, Refuse, Snapshot

STEP_TIMEOUT = 15.0


class RawSession(QuicConnectionProtocol):
    """Frames in and out of one QUIC stream, with no session logic of ours."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = FrameDecoder()
        self.inbox: asyncio.Queue[Message | str] = asyncio.Queue()
        self.stream_id: int | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            for message in self.decoder.feed(event.data):
                self.inbox.put_nowait(message)
        elif isinstance(event, ConnectionTerminated):
            self.inbox.put_nowait(f"closed: {event.reason_phrase}")

    def server_cert(self) -> bytes:
        cert = self._quic.tls._peer_certificate
        assert cert is not None
        return cert.public_bytes(serialization.Encoding.DER)

    def send(self, message: Message) -> None:
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(self.stream_id, encode(message))
        self.transmit()

    async def next(self, kind: type[Message]) -> Message | str:
        """The next message of `kind`, or why the connection ended first."""
        while True:
            item = await asyncio.wait_for(self.inbox.get(), STEP_TIMEOUT)
            if isinstance(item, str | kind | Refuse):
                return item


async def relay(state: Path, victim: str, honest: str) -> str:
    config = quic_configuration(load_or_create(state, "mallory"), is_client=True)
    vhost, vport = victim.rsplit(":", 1)
    hhost, hport = honest.rsplit(":", 1)
    async with (
        connect(vhost, int(vport), configuration=config, create_protocol=RawSession) as to_v,
        connect(hhost, int(hport), configuration=config, create_protocol=RawSession) as to_h,
    ):
        assert isinstance(to_v, RawSession) and isinstance(to_h, RawSession)
        honest_cert, victim_cert = to_h.server_cert(), to_v.server_cert()
        to_v.send(
            Hello(
                PROTOCOL_VERSION, peer_id_of(honest_cert), "honest", 1, honest_cert, os.urandom(32)
            )
        )
        victim_hello = await to_v.next(Hello)
        if not isinstance(victim_hello, Hello):
            return f"refused: {victim_hello}"
        to_h.send(
            Hello(
                PROTOCOL_VERSION,
                peer_id_of(victim_cert),
                "victim",
                1,
                victim_cert,
                victim_hello.challenge,
            )
        )
        proof = await to_h.next(Auth)
        if not isinstance(proof, Auth):
            return f"the honest peer gave no proof: {proof}"
        to_v.send(proof)
        # An established session greets with its snapshot; a refusal ends it.
        answer = await to_v.next(Snapshot)
        if isinstance(answer, Refuse):
            return f"refused: {answer.reason}"
        if isinstance(answer, str):
            return f"refused: {answer}"
        return "accepted"


if __name__ == "__main__":
    print(asyncio.run(relay(Path(sys.argv[1]), sys.argv[2], sys.argv[3])), flush=True)
