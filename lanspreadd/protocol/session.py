"""The peer session state machine: handshake, identity proof, liveness, goodbye.

Both sides send Hello (certificate + random challenge) and then Auth (a signature
over the other side's challenge), so a session is mutually authenticated
whatever the transport below it checked. Every transition is in TRANSITIONS.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.codec import FrameDecoder, encode
from lanspreadd.protocol.errors import LocalProtocolError, RemoteProtocolError
from lanspreadd.protocol.identity import peer_id_of
from lanspreadd.protocol.messages import Auth, Goodbye, Hello, Message, Ping, Pong, Refuse

# Every connection pings at this pace whatever the party's size: at 1 s, 33 idle daemons
# in a full mesh spent 1.8 of 2 cores on pings, pongs and their QUIC acknowledgements.
PING_INTERVAL = 5.0
DEAD_AFTER = 15.0  # a silent peer is dropped after this; its sockets fail sooner if it crashed
# A timer handled this late means we (or our host) were stalled, not the peer.
STALL_GAP = 2 * PING_INTERVAL
# A connection that carried nothing but pings for IDLE_AFTER is idle: the dialler pings
# it at a third of the pace, and says so in each ping, so that the other side gives it
# three intervals too. An idle party then costs a third of the packets, while a peer we
# download from is still missed within 15 s.
IDLE_AFTER = 30.0
IDLE_PING_INTERVAL = 3 * PING_INTERVAL
MISSED_PINGS = 3  # DEAD_AFTER / PING_INTERVAL
HANDSHAKE_TIMEOUT = 10.0


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    IDLE = "idle"
    HELLO_SENT = "hello-sent"
    AUTH_WAIT = "auth-wait"
    ESTABLISHED = "established"
    CLOSED = "closed"


# (role, state, incoming message type) -> next state. Anything else is a protocol error.
TRANSITIONS: dict[tuple[Role, State, type[Message]], State] = {
    (Role.SERVER, State.IDLE, Hello): State.AUTH_WAIT,
    (Role.CLIENT, State.HELLO_SENT, Hello): State.AUTH_WAIT,
    (Role.SERVER, State.AUTH_WAIT, Auth): State.ESTABLISHED,
    (Role.CLIENT, State.AUTH_WAIT, Auth): State.ESTABLISHED,
}


@dataclass(frozen=True)
class LocalPeer:
    peer_id: str
    name: str
    data_port: int
    cert_der: bytes
    sign: Callable[[bytes], bytes]
    # (certificate, signature, data) -> whether the certificate's key signed the data
    verify: Callable[[bytes, bytes, bytes], bool]


@dataclass(frozen=True)
class Established:
    peer_id: str
    name: str
    data_port: int


@dataclass(frozen=True)
class Received:
    message: Message


@dataclass(frozen=True)
class Closed:
    reason: str
    by_peer: bool


Event = Established | Received | Closed


def auth_payload(
    server_cert: bytes, client_challenge: bytes, server_challenge: bytes, signer: str, verifier: str
) -> bytes:
    """What each side signs: bound to this connection, so it cannot be relayed.

    The server's TLS certificate as this connection saw it and both challenges of this
    handshake: a man in the middle who forwards a peer's proof to us runs a different
    TLS handshake with each side (he cannot present our certificate without our key),
    and the peer he asked chose its own challenge, not ours.
    """
    return b"".join(
        (
            b"lanspread-auth-2\0",
            hashlib.sha256(server_cert).digest(),
            len(client_challenge).to_bytes(1, "big"),
            client_challenge,
            len(server_challenge).to_bytes(1, "big"),
            server_challenge,
            signer.encode(),
            b"\0",
            verifier.encode(),
        )
    )


class Session:
    def __init__(
        self,
        role: Role,
        local: LocalPeer,
        now: float,
        expected_peer_id: str | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.role = role
        self.local = local
        self.expected_peer_id = expected_peer_id
        self.state = State.IDLE
        self.peer: Established | None = None
        self.close_reason: str | None = None
        self._challenge = random(32)
        self._peer_hello: Hello | None = None
        # The certificate the TLS handshake of this connection presented for the server:
        # ours when we serve, given by the transport to a client in start().
        self._server_cert = local.cert_der if role is Role.SERVER else b""
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._started = now
        self._last_received = now
        self._last_ping = now
        self._last_timer = now
        self._last_activity = now  # a message other than a ping or pong, either way
        self._busy = False  # such a message since the last timer (send has no clock)
        self._peer_every = PING_INTERVAL  # the dialler's pace, as its last ping said
        self._every = PING_INTERVAL  # ours, when we dialled: the gap to our next ping
        self._ping_nonce = 0

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # ---- sending ------------------------------------------------------------------------
    def _queue(self, message: Message) -> None:
        self._out += encode(message)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _hello(self) -> Hello:
        return Hello(
            version=PROTOCOL_VERSION,
            peer_id=self.local.peer_id,
            name=self.local.name,
            data_port=self.local.data_port,
            cert=self.local.cert_der,
            challenge=self._challenge,
        )

    def start(self, server_cert: bytes) -> None:
        """Begin as the client, once TLS has shown the server's certificate."""
        if self.role is not Role.CLIENT or self.state is not State.IDLE:
            raise LocalProtocolError("only an idle client starts a session")
        self._server_cert = server_cert
        self._queue(self._hello())
        self.state = State.HELLO_SENT

    def send(self, message: Message) -> None:
        if self.state is not State.ESTABLISHED:
            raise LocalProtocolError(f"cannot send {type(message).__name__} in {self.state.value}")
        self._queue(message)
        self._busy = True

    def close(self, reason: str) -> list[Event]:
        """Say goodbye; the caller flushes data_to_send() and closes the transport."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.ESTABLISHED:
            self._queue(Goodbye(reason))
        return self._closed(reason, by_peer=False)

    def transport_closed(self, reason: str) -> list[Event]:
        """The connection below ended; the reason is the one the peer gave, if any."""
        if self.closed:
            return []
        return self._closed(reason, by_peer=True)

    def _closed(self, reason: str, by_peer: bool) -> list[Event]:
        self.state = State.CLOSED
        self.close_reason = reason
        return [Closed(reason, by_peer)]

    def _refuse(self, reason: str) -> list[Event]:
        self._queue(Refuse(reason))
        return self._closed(reason, by_peer=False)

    # ---- receiving ----------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self._last_received = now
        try:
            messages = self._decoder.feed(data)
        except RemoteProtocolError as exc:
            return self._refuse(f"protocol error: {exc}")
        events: list[Event] = []
        for message in messages:
            events += self._handle(message)
            if self.closed:
                break
        return events

    def _handle(self, message: Message) -> list[Event]:
        if isinstance(message, Goodbye):
            return self._closed(f"peer said goodbye: {message.reason}", by_peer=True)
        if isinstance(message, Refuse):
            return self._closed(f"peer refused: {message.reason}", by_peer=True)
        if self.state is State.ESTABLISHED:
            if isinstance(message, Hello | Auth):
                return self._refuse(f"protocol error: unexpected {type(message).__name__}")
            if isinstance(message, Ping):
                # Never slower than our own idle pace: a peer saying "every 10 minutes"
                # would hold its connection for half an hour after it went silent.
                self._peer_every = min(float(message.every), IDLE_PING_INTERVAL)
                self._queue(Pong(message.nonce))
                return []
            if isinstance(message, Pong):
                return []
            self._busy = True
            return [Received(message)]
        next_state = TRANSITIONS.get((self.role, self.state, type(message)))
        if next_state is None:
            return self._refuse(
                f"protocol error: {type(message).__name__} not allowed in {self.state.value}"
            )
        if isinstance(message, Hello):
            return self._on_hello(message, next_state)
        assert isinstance(message, Auth)
        return self._on_auth(message, next_state)

    def _on_hello(self, hello: Hello, next_state: State) -> list[Event]:
        if hello.version != PROTOCOL_VERSION:
            return self._refuse(
                f"protocol version {hello.version} is not supported; "
                f"this peer speaks version {PROTOCOL_VERSION}"
            )
        if peer_id_of(hello.cert) != hello.peer_id:
            return self._refuse("peer id does not match the certificate")
        if self.expected_peer_id and hello.peer_id != self.expected_peer_id:
            return self._refuse(f"expected peer {self.expected_peer_id}, found {hello.peer_id}")
        if hello.peer_id == self.local.peer_id:
            return self._refuse("connected to itself")
        if self.role is Role.CLIENT and hello.cert != self._server_cert:
            return self._refuse("TLS certificate does not match the peer's identity")
        self._peer_hello = hello
        if self.role is Role.SERVER:
            self._queue(self._hello())
        signature = self.local.sign(
            self._payload(signer=self.local.peer_id, verifier=hello.peer_id)
        )
        self._queue(Auth(signature))
        self.state = next_state
        return []

    def _on_auth(self, auth: Auth, next_state: State) -> list[Event]:
        hello = self._peer_hello
        assert hello is not None
        payload = self._payload(signer=hello.peer_id, verifier=self.local.peer_id)
        if not self.local.verify(hello.cert, auth.signature, payload):
            return self._refuse("identity proof failed: bad signature")
        self.state = next_state
        self.peer = Established(hello.peer_id, hello.name, hello.data_port)
        return [self.peer]

    def _payload(self, signer: str, verifier: str) -> bytes:
        hello = self._peer_hello
        assert hello is not None
        ours, theirs = self._challenge, hello.challenge
        client, server = (ours, theirs) if self.role is Role.CLIENT else (theirs, ours)
        return auth_payload(self._server_cert, client, server, signer, verifier)

    # ---- time ---------------------------------------------------------------------------
    def timer_at(self) -> float | None:
        if self.state is State.CLOSED:
            return None
        if self.state is not State.ESTABLISHED:
            return self._started + HANDSHAKE_TIMEOUT
        # Both sides wake at the ping pace (a wake without a ping sends nothing): a
        # timer that fires late is how our own stalls are told from a silent peer.
        ping, dead = self._pace()
        return min(self._last_ping + ping, self._last_received + dead)

    def _pace(self) -> tuple[float, float]:
        """The ping interval and the silence that kills: the dialler's own, slower once
        the connection is idle; the other side's, from the dialler's last ping."""
        every = max(PING_INTERVAL, self._peer_every) if self.role is Role.SERVER else self._every
        return every, MISSED_PINGS * every

    def handle_timer(self, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if self.state is not State.ESTABLISHED:
            if now >= self._started + HANDSHAKE_TIMEOUT:
                return self._closed("handshake timed out", by_peer=False)
            return []
        if self._busy:
            self._busy = False
            self._last_activity = now
            self._every = PING_INTERVAL  # busy again: the next ping comes sooner than said
        ping, dead = self._pace()
        if now - self._last_timer > 2 * ping:
            # Our own stall must not count against the peer: its pings are probably
            # queued unread. Give it a fresh window from now.
            self._last_received = max(self._last_received, now - ping)
        self._last_timer = now
        if now >= self._last_received + dead:
            return self._closed(f"peer silent for {dead:.0f}s", by_peer=False)
        # Only the side that dialled pings; the other hears the pings and answers each:
        # one ping and one pong per interval and connection, not two of each.
        if now >= self._last_ping + ping:
            self._last_ping = now
            if self.role is Role.CLIENT:
                # The gap to the next ping, decided now and said in this one.
                idle = now - self._last_activity >= IDLE_AFTER
                self._every = IDLE_PING_INTERVAL if idle else PING_INTERVAL
                self._ping_nonce += 1
                self._queue(Ping(self._ping_nonce, round(self._every)))
        return []
