"""The sans-IO protocol core, pumped in memory: no sockets, explicit time."""

from __future__ import annotations

import itertools
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanspreadd.core.identity import Identity, load_or_create, verify_signature
from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.codec import HEADER, FrameDecoder, encode
from lanspreadd.protocol.errors import LocalProtocolError, RemoteProtocolError
from lanspreadd.protocol.messages import (
    MAX_BITFIELD,
    MAX_DELTA,
    MAX_EXCHANGED,
    MAX_EXCHANGED_GAMES,
    MESSAGE_TYPES,
    Auth,
    ChunkDelta,
    ChunkMap,
    Delta,
    ExchangedPeer,
    FileEntry,
    FileList,
    FileListRequest,
    Hello,
    PeerExchange,
    Ping,
    Pong,
    Snapshot,
)
from lanspreadd.protocol.session import (
    DEAD_AFTER,
    IDLE_AFTER,
    IDLE_PING_INTERVAL,
    PING_INTERVAL,
    Closed,
    Established,
    Event,
    LocalPeer,
    Received,
    Role,
    Session,
    State,
)


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Identity, Identity]:
    base = tmp_path_factory.mktemp("ids")
    return (
        load_or_create(base / "a", "alpha"),
        load_or_create(base / "b", "beta"),
        load_or_create(base / "c", "gamma"),
    )


def local(identity: Identity, name: str) -> LocalPeer:
    return LocalPeer(
        identity.peer_id, name, 41800, identity.cert_der, identity.sign, verify_signature
    )


class ConnectionPair:
    """Two sessions wired back to back, pumped until quiet."""

    def __init__(self, client: Session, server: Session) -> None:
        self.client = client
        self.server = server
        self.events: dict[Role, list[Event]] = {Role.CLIENT: [], Role.SERVER: []}

    def pump(self, now: float = 0.0) -> None:
        for _ in range(100):
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.events[Role.SERVER] += self.server.receive(to_server, now)
            if to_client:
                self.events[Role.CLIENT] += self.client.receive(to_client, now)
        raise AssertionError("sessions never went quiet")


def pair(ids: tuple[Identity, Identity, Identity], **client_kw: object) -> ConnectionPair:
    a, b, _ = ids
    client = Session(Role.CLIENT, local(a, "alpha"), 0.0, **client_kw)  # type: ignore[arg-type]
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    client.start(b.cert_der)  # TLS showed the server's own certificate
    p = ConnectionPair(client, server)
    p.pump()
    return p


def test_identity_is_persistent(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, "x")
    again = load_or_create(tmp_path, "x")
    assert first.peer_id == again.peer_id
    assert len(first.peer_id) == 32
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def test_mutual_handshake(identities: tuple[Identity, Identity, Identity]) -> None:
    p = pair(identities)
    a, b, _ = identities
    assert p.client.state is State.ESTABLISHED
    assert p.server.state is State.ESTABLISHED
    assert p.events[Role.CLIENT] == [Established(b.peer_id, "beta", 41800)]
    assert p.events[Role.SERVER] == [Established(a.peer_id, "alpha", 41800)]


def test_messages_flow_both_ways(identities: tuple[Identity, Identity, Identity]) -> None:
    p = pair(identities)
    p.client.send(Snapshot({"g": "1.0"}))
    p.server.send(Delta({"h": "2"}, ("g",)))
    p.pump()
    assert Received(Snapshot({"g": "1.0"})) in p.events[Role.SERVER]
    assert Received(Delta({"h": "2"}, ("g",))) in p.events[Role.CLIENT]


def test_expected_peer_id_is_checked(identities: tuple[Identity, Identity, Identity]) -> None:
    _, _, c = identities
    p = pair(identities, expected_peer_id=c.peer_id)
    assert p.client.state is State.CLOSED
    assert "expected peer" in (p.client.close_reason or "")
    closed = [e for e in p.events[Role.SERVER] if isinstance(e, Closed)]
    assert closed
    assert closed[0].by_peer


def test_version_mismatch_is_refused_with_a_reason(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    a, b, _ = identities
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    hello = Hello(PROTOCOL_VERSION + 1, a.peer_id, "alpha", 1, a.cert_der, b"x" * 32)
    events = server.receive(encode(hello), 0.0)
    assert events == [Closed(events[0].reason, False)]  # type: ignore[union-attr]
    assert f"version {PROTOCOL_VERSION + 1} is not supported" in server.close_reason  # type: ignore[operator]
    reply = FrameDecoder().feed(server.data_to_send())
    assert type(reply[0]).__name__ == "Refuse"


def test_forged_identity_is_refused(identities: tuple[Identity, Identity, Identity]) -> None:
    a, b, c = identities
    # A client that claims a's id but holds c's certificate.
    forged = Hello(PROTOCOL_VERSION, a.peer_id, "alpha", 1, c.cert_der, b"x" * 32)
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    server.receive(encode(forged), 0.0)
    assert "does not match the certificate" in (server.close_reason or "")
    # A client presenting a's certificate without a's key cannot sign the challenge.
    client = Session(
        Role.CLIENT,
        LocalPeer(a.peer_id, "alpha", 1, a.cert_der, c.sign, verify_signature),
        0.0,
    )
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    client.start(b.cert_der)
    p = ConnectionPair(client, server)
    p.pump()
    assert server.state is State.CLOSED
    assert "bad signature" in (server.close_reason or "")


def test_out_of_order_messages(identities: tuple[Identity, Identity, Identity]) -> None:
    _, b, _ = identities
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    server.receive(encode(Snapshot({})), 0.0)
    assert server.state is State.CLOSED
    assert "not allowed in idle" in (server.close_reason or "")
    with pytest.raises(LocalProtocolError):
        Session(Role.SERVER, local(b, "beta"), 0.0).send(Snapshot({}))


def test_liveness_pings_and_timeout(identities: tuple[Identity, Identity, Identity]) -> None:
    p = pair(identities)
    now = 0.0
    for _ in range(20):
        now += 0.5
        p.client.handle_timer(now)
        p.server.handle_timer(now)
        p.pump(now)
    assert p.client.state is State.ESTABLISHED, "pings keep a healthy session alive"
    # The server goes silent (killed): the client notices within DEAD_AFTER.
    events: list[Event] = []
    t = now
    while t < now + DEAD_AFTER + 1 and not events:
        t += 0.5
        p.client.data_to_send()
        events = p.client.handle_timer(t)
    assert events
    assert isinstance(events[0], Closed)
    assert "silent" in events[0].reason
    assert t - now <= DEAD_AFTER + 0.5


def test_only_the_dialling_side_pings_and_a_silent_dialler_is_still_dropped(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    """One ping and one pong per interval and connection: what idle costs at a party."""
    p = pair(identities)
    sent: dict[Role, list[type]] = {Role.CLIENT: [], Role.SERVER: []}
    now = 0.0
    while now < 4 * PING_INTERVAL:
        now += 0.5
        for role, session in ((Role.CLIENT, p.client), (Role.SERVER, p.server)):
            session.handle_timer(now)
            data = session.data_to_send()
            sent[role] += [type(m) for m in FrameDecoder().feed(data)]
            other = p.server if role is Role.CLIENT else p.client
            other.receive(data, now)
    assert 3 <= sent[Role.CLIENT].count(Ping) <= 4
    assert Ping not in sent[Role.SERVER]
    assert sent[Role.SERVER].count(Pong) == sent[Role.CLIENT].count(Ping)
    assert p.server.state is State.ESTABLISHED and p.client.state is State.ESTABLISHED
    # The dialler goes silent: the other side drops it after DEAD_AFTER.
    events: list[Event] = []
    start = now
    while not events and now < start + DEAD_AFTER + 2:
        now += 0.5
        events = p.server.handle_timer(now)
    assert isinstance(events[0], Closed) and "silent" in events[0].reason
    assert now - start <= DEAD_AFTER + 0.5


def test_an_idle_connection_pings_at_a_third_of_the_pace_and_both_sides_agree(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    """Idle (nothing but pings for IDLE_AFTER), the dialler pings every 15 s and says so;
    the other side then waits three of those before it gives up, and a message brings
    the 5 s pace back."""
    p = pair(identities)
    pings: list[tuple[float, int]] = []
    now = 0.0

    def step(until: float) -> None:
        nonlocal now
        while now < until:
            now += 0.5
            for session, other in ((p.client, p.server), (p.server, p.client)):
                assert session.handle_timer(now) == []
                data = session.data_to_send()
                sent = FrameDecoder().feed(data)
                pings.extend((now, m.every) for m in sent if isinstance(m, Ping))
                if data:
                    other.receive(data, now)

    step(300.0)  # five minutes of an idle party: nobody is dropped
    assert p.client.state is State.ESTABLISHED and p.server.state is State.ESTABLISHED
    idle = [(t, every) for t, every in pings if t > IDLE_AFTER + PING_INTERVAL]
    assert {every for _, every in idle} == {IDLE_PING_INTERVAL}
    assert all(b - a == IDLE_PING_INTERVAL for (a, _), (b, _) in itertools.pairwise(idle))
    # Busy again (a download asks for a file list): 5 s pings within one idle interval.
    p.client.send(FileListRequest(1, "g", "1.0"))
    busy_from = len(pings)
    step(now + IDLE_PING_INTERVAL + 2 * PING_INTERVAL)
    assert pings[-1][1] == PING_INTERVAL and pings[-1][0] - pings[-2][0] == PING_INTERVAL
    assert len(pings) - busy_from >= 2
    # Idle again, then the dialler dies: the other side waits its three idle intervals.
    step(now + IDLE_AFTER + IDLE_PING_INTERVAL)
    last_ping = pings[-1][0]
    events: list[Event] = []
    while not events and now < last_ping + 3 * IDLE_PING_INTERVAL + 2:
        now += 0.5
        events = p.server.handle_timer(now)
    assert isinstance(events[0], Closed) and "silent for 45s" in events[0].reason
    assert now - last_ping <= 3 * IDLE_PING_INTERVAL + 0.5


def test_our_own_stall_does_not_kill_a_healthy_peer(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    p = pair(identities)
    for now in (0.5, 1.0, 1.5):
        p.client.handle_timer(now)
    # The host froze past DEAD_AFTER (say, behind disk writeback): the timer fires late.
    back = 1.5 + DEAD_AFTER + 3
    assert p.client.handle_timer(back) == []
    assert p.client.state is State.ESTABLISHED
    # But a peer that stays silent after we are back is still dropped.
    events: list[Event] = []
    now = back
    while not events and now < back + DEAD_AFTER + 2:
        now += 0.5
        events = p.client.handle_timer(now)
    assert isinstance(events[0], Closed)
    assert back + DEAD_AFTER - PING_INTERVAL <= now <= back + DEAD_AFTER + 0.5


def test_goodbye(identities: tuple[Identity, Identity, Identity]) -> None:
    p = pair(identities)
    p.client.close("shutting down")
    p.pump()
    assert p.server.state is State.CLOSED
    assert p.events[Role.SERVER][-1] == Closed("peer said goodbye: shutting down", True)


def test_handshake_timeout(identities: tuple[Identity, Identity, Identity]) -> None:
    a, _, _ = identities
    client = Session(Role.CLIENT, local(a, "alpha"), 0.0)
    client.start(b"server certificate")
    assert client.handle_timer(5.0) == []
    assert client.handle_timer(11.0) == [Closed("handshake timed out", False)]


def test_file_list_round_trip() -> None:
    files = (FileEntry("g.part1.rar", 5, ("a" * 64,)), FileEntry("version.ini", 0, ("b" * 64,)))
    msg = FileList(7, "g", "1.0", 1 << 20, files, b"t" * 32)
    assert FrameDecoder().feed(encode(msg)) == [msg]


@pytest.mark.parametrize(
    ("kind", "payload", "complaint"),
    [
        (FileListRequest.TYPE, b"[1,2]", "JSON object"),
        (FileListRequest.TYPE, b"{bad json", "not JSON"),
        (FileListRequest.TYPE, b'{"request_id": "1", "game_id": "g", "version": "1"}', "integer"),
        (FileListRequest.TYPE, b'{"request_id": -1, "game_id": "g", "version": "1"}', "range"),
        (FileListRequest.TYPE, b'{"game_id": "g", "version": "1"}', "missing field"),
        (Snapshot.TYPE, b'{"games": {"g": 1}}', "bad entry"),
        (200, b"{}", "unknown frame type"),
        (
            FileList.TYPE,
            json.dumps(
                {
                    "request_id": 1,
                    "game_id": "g",
                    "version": "1",
                    "chunk_size": 1 << 20,
                    "token": "",
                    "files": [{"path": "a", "size": 5 << 20, "hashes": ["a" * 64]}],
                }
            ).encode(),
            "do not match its size",
        ),
    ],
)
def test_malformed_frames_are_named(kind: int, payload: bytes, complaint: str) -> None:
    with pytest.raises(RemoteProtocolError, match=complaint):
        FrameDecoder().feed(HEADER.pack(len(payload), kind) + payload)


def test_oversized_frames_are_refused_before_buffering() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.feed(struct.pack("!IB", 1 << 30, Snapshot.TYPE))


ROOT = "0123456789abcdef" * 4  # a file list's root hash


def test_chunk_maps_and_deltas_round_trip() -> None:
    messages = [
        ChunkMap("g", "1.0", ROOT, 10, bytes([0b0110_1000, 0b1100_0000])),
        ChunkMap("g", "1.0", "", 0, b""),  # withdrawn
        ChunkDelta("g", ROOT, (0, 9, 4)),
        ChunkDelta("g", ROOT, ()),
    ]
    assert FrameDecoder().feed(b"".join(encode(m) for m in messages)) == messages


def test_the_largest_chunk_map_and_delta_fit_their_frames() -> None:
    """A map of the most chunks any game may have, and a full delta of the highest
    numbers, pass both ends' size bounds."""
    chunks = 8 * MAX_BITFIELD
    largest = [
        ChunkMap("g" * 64, "v" * 64, ROOT, chunks, b"\xff" * MAX_BITFIELD),
        ChunkDelta("g" * 64, ROOT, (chunks - 1,) * MAX_DELTA),
    ]
    for message in largest:
        assert FrameDecoder().feed(encode(message)) == [message]


def _map(**changes: object) -> dict[str, object]:
    """A map of 9 chunks holding chunks 0 and 8 (bits "gIA=": 0x80 0x80), with `changes`."""
    well_formed = {"game_id": "g", "version": "1.0", "fingerprint": ROOT, "chunks": 9}
    return well_formed | {"bits": "gIA="} | changes


def _delta(**changes: object) -> dict[str, object]:
    return {"game_id": "g", "fingerprint": ROOT, "added": [1, 2]} | changes


@pytest.mark.parametrize(
    ("kind", "obj", "complaint"),
    [
        (ChunkMap.TYPE, _map(), None),  # the well-formed one the others change
        (ChunkMap.TYPE, _map(chunks=17), "a map of 17 chunks cannot have 2 bytes"),
        (ChunkMap.TYPE, _map(chunks=0), "a map of 0 chunks cannot have 2 bytes"),
        (ChunkMap.TYPE, _map(bits="gMA="), "bits past its last chunk"),  # 0x80 0xc0: bit 9
        (ChunkMap.TYPE, _map(chunks=8, bits="gA=="), None),
        (ChunkMap.TYPE, _map(chunks=-1), "out of range"),
        (ChunkMap.TYPE, _map(chunks=True), "integer"),
        (ChunkMap.TYPE, _map(bits="not base64!"), "not base64"),
        (ChunkMap.TYPE, _map(fingerprint=ROOT.upper()), "fingerprint"),
        (ChunkMap.TYPE, _map(fingerprint=ROOT[:63]), "fingerprint"),
        (ChunkMap.TYPE, _map(fingerprint=ROOT + "\n"), "fingerprint"),
        (ChunkMap.TYPE, _map(fingerprint="g" * 64), "fingerprint"),
        (ChunkMap.TYPE, _map(fingerprint=7), "fingerprint"),
        (ChunkMap.TYPE, _map(version="v" * 65), "longer than 64"),
        (ChunkDelta.TYPE, _delta(), None),
        (ChunkDelta.TYPE, _delta(fingerprint=""), "fingerprint"),
        (ChunkDelta.TYPE, _delta(fingerprint=ROOT[1:] + "G"), "fingerprint"),
        (ChunkDelta.TYPE, _delta(added=list(range(MAX_DELTA + 1))), "added"),
        (ChunkDelta.TYPE, _delta(added=[1, True]), "added"),
        (ChunkDelta.TYPE, _delta(added=[-1]), "added"),
        (ChunkDelta.TYPE, _delta(added=[1.0]), "added"),
        (ChunkDelta.TYPE, _delta(added=["1"]), "added"),
        (ChunkDelta.TYPE, _delta(added=[8 * MAX_BITFIELD]), "added"),
        (ChunkDelta.TYPE, _delta(added={"1": 1}), "added"),
        (ChunkDelta.TYPE, _delta(added=None), "added"),
    ],
)
def test_chunk_maps_and_deltas_are_checked(kind: int, obj: object, complaint: str | None) -> None:
    if complaint is None:
        assert len(FrameDecoder().feed(_frame(kind, obj))) == 1
        return
    with pytest.raises(RemoteProtocolError, match=re.escape(complaint)):
        FrameDecoder().feed(_frame(kind, obj))


def test_chunk_frames_over_their_bound_are_refused_before_buffering() -> None:
    for cls in (ChunkMap, ChunkDelta):
        with pytest.raises(RemoteProtocolError, match=f"{cls.__name__} frame .* exceeds"):
            FrameDecoder().feed(HEADER.pack(cls.MAX_SIZE + 1, cls.TYPE))
    too_long = _map(chunks=8 * MAX_BITFIELD + 8, bits="A" * 4 * (MAX_BITFIELD // 3 + 2))
    with pytest.raises(RemoteProtocolError, match="'bits' is too long"):
        FrameDecoder().feed(_frame(ChunkMap.TYPE, too_long))


PEER = "ab" * 16  # a peer id


def _exchange(**changes: object) -> dict[str, object]:
    entry = {"peer_id": PEER, "host": "10.0.0.7", "port": 41800, "games": ["g"]} | changes
    return {"peers": [entry]}


def test_peer_exchange_round_trips_and_its_largest_fits() -> None:
    small = PeerExchange((ExchangedPeer(PEER, "fe80::1", 41800, ("g", "h")),))
    largest = PeerExchange(
        tuple(
            ExchangedPeer(f"{i:032x}", "255.255.255.255", 65535, ("g" * 64,) * MAX_EXCHANGED_GAMES)
            for i in range(MAX_EXCHANGED)
        )
    )
    assert FrameDecoder().feed(encode(small) + encode(largest)) == [small, largest]


@pytest.mark.parametrize(
    ("obj", "complaint"),
    [
        (_exchange(), None),
        (_exchange(host="peer.example"), "not an address"),
        (_exchange(host="10.0.0.7\n"), "host"),
        (_exchange(port=0), "port is out of range"),
        (_exchange(port=70000), "port is out of range"),
        (_exchange(peer_id="../etc"), "peer_id"),
        (_exchange(games=["g"] * (MAX_EXCHANGED_GAMES + 1)), "more than 16 games"),
        (_exchange(games=[1]), "not names"),
        (_exchange(games=["g" * 65]), "longer than 64"),
        ({"peers": [7]}, "bad entry"),
        ({"peers": [_exchange()["peers"][0]] * (MAX_EXCHANGED + 1)}, "more than 32 peers"),  # type: ignore[index]
        ({}, "missing field 'peers'"),
    ],
)
def test_peer_exchanges_are_checked(obj: object, complaint: str | None) -> None:
    """A neighbour's list of peers is bounded, and names addresses, not host names to look up."""
    if complaint is None:
        assert len(FrameDecoder().feed(_frame(PeerExchange.TYPE, obj))) == 1
        return
    with pytest.raises(RemoteProtocolError, match=re.escape(complaint)):
        FrameDecoder().feed(_frame(PeerExchange.TYPE, obj))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=2048))
def test_fuzz_garbage_after_handshake_closes_with_a_reason(
    identities: tuple[Identity, Identity, Identity], garbage: bytes
) -> None:
    p = pair(identities)
    events = p.server.receive(garbage, 1.0)
    if p.server.state is State.CLOSED:
        assert p.server.close_reason
        assert any(isinstance(e, Closed) for e in events)
    else:
        assert all(isinstance(e, Received) for e in events)


frames = st.builds(
    lambda kind, obj: HEADER.pack(len(obj), kind) + obj,
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(frames, max_size=6))
def test_fuzz_hostile_frames_never_crash_a_session(
    identities: tuple[Identity, Identity, Identity], stream: list[bytes]
) -> None:
    _, b, _ = identities
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    for frame in stream:
        server.receive(frame, 0.0)
        server.data_to_send()
    assert server.state in (State.IDLE, State.CLOSED)
    if server.state is State.CLOSED:
        assert server.close_reason


HOSTILE_STRINGS = [
    ("x\ud800", "U+D800"),  # a lone surrogate: valid JSON, not UTF-8
    ("x\x00y", "U+0000"),  # not a valid D-Bus string
    ("\x1b]0;pwned\x07", "U+001B"),  # sets a terminal's title
    ("evil\u202egnp.exe", "U+202E"),  # a bidi override
    ("row\nfake row", "U+000A"),  # a forged line in a table
    ("\x9b2J", "U+009B"),  # a C1 control sequence introducer
]


@pytest.mark.parametrize(("value", "named"), HOSTILE_STRINGS)
def test_hello_with_an_unprintable_name_is_refused_by_name(
    identities: tuple[Identity, Identity, Identity], value: str, named: str
) -> None:
    a, b, _ = identities
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    hello = Hello(PROTOCOL_VERSION, a.peer_id, "alpha", 1, a.cert_der, b"x" * 32)
    frame = hello.to_json() | {"name": value}
    payload = json.dumps(frame).encode()
    events = server.receive(HEADER.pack(len(payload), Hello.TYPE) + payload, 0.0)
    assert server.state is State.CLOSED
    assert [type(e) for e in events] == [Closed]
    assert "'name'" in server.close_reason and named in server.close_reason  # type: ignore[operator]
    # The refusal itself is printable: it is logged and may be shown to a user.
    assert server.close_reason.isprintable()  # type: ignore[union-attr]


def _frame(kind: int, obj: object) -> bytes:
    payload = json.dumps(obj).encode()
    return HEADER.pack(len(payload), kind) + payload


@pytest.mark.parametrize(("value", "named"), HOSTILE_STRINGS)
@pytest.mark.parametrize(
    ("kind", "template"),
    [
        (Snapshot.TYPE, lambda v: {"games": {"g": v}}),
        (Snapshot.TYPE, lambda v: {"games": {v: "1.0"}}),
        (Delta.TYPE, lambda v: {"changed": {}, "removed": [v]}),
        (FileListRequest.TYPE, lambda v: {"request_id": 1, "game_id": v, "version": "1"}),
        (8, lambda v: {"request_id": 1, "code": "NotServable", "message": v}),  # ErrorReply
        (11, lambda v: {"reason": v}),  # Goodbye
        (3, lambda v: {"reason": v}),  # Refuse
        (ChunkMap.TYPE, lambda v: _map(game_id=v)),
        (ChunkMap.TYPE, lambda v: _map(version=v)),
        (ChunkDelta.TYPE, lambda v: _delta(game_id=v)),
    ],
)
def test_every_peer_string_is_checked_at_the_boundary(
    kind: int, template: Any, value: str, named: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(named)):
        FrameDecoder().feed(_frame(kind, template(value)))


def test_names_and_ids_are_bounded_and_peer_ids_are_hex(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    a, _, _ = identities
    hello = Hello(PROTOCOL_VERSION, a.peer_id, "alpha", 1, a.cert_der, b"x" * 32).to_json()
    with pytest.raises(RemoteProtocolError, match="longer than 64"):
        FrameDecoder().feed(_frame(Hello.TYPE, hello | {"name": "n" * 65}))
    for bad_id in ("A" * 32, a.peer_id + "0", "x" * 32, ""):
        with pytest.raises(RemoteProtocolError, match="not a peer id"):
            FrameDecoder().feed(_frame(Hello.TYPE, hello | {"peer_id": bad_id}))
    # Names in other scripts and with spaces are fine.
    ok = FrameDecoder().feed(_frame(Hello.TYPE, hello | {"name": "Zoë's PC 🎮 ゲーム"}))
    assert isinstance(ok[0], Hello) and ok[0].name == "Zoë's PC 🎮 ゲーム"


def test_our_own_error_texts_are_sent_printable() -> None:
    """A daemon relays unar's output or a file name in an error: peers must not
    refuse it, so the sender escapes what the receiver would refuse."""
    from lanspreadd.protocol.messages import ErrorReply

    reply = ErrorReply(3, "ArchiveError", "unar said:\n\x1b[31mbad\x1b[0m \ud800")
    (decoded,) = FrameDecoder().feed(encode(reply))
    assert isinstance(decoded, ErrorReply)
    assert decoded.message.isprintable() and "unar said:" in decoded.message


def test_a_relayed_identity_proof_is_refused(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    """The attack that worked on protocol 1: mallory connects to victim claiming to be
    honest, connects to honest claiming to be victim, and relays victim's challenge to
    honest and honest's signature back. Each leg runs its own TLS handshake, so the
    proof honest signed is bound to mallory's connection with honest, not to victim's."""
    honest, victim, _mallory = identities
    # Leg 1: mallory (client) -> victim (server), sending honest's Hello (its cert is public).
    victim_side = Session(Role.SERVER, local(victim, "victim"), 0.0)
    to_victim = Hello(PROTOCOL_VERSION, honest.peer_id, "honest", 1, honest.cert_der, b"m" * 32)
    victim_side.receive(encode(to_victim), 0.0)
    victim_hello, _victim_auth = FrameDecoder().feed(victim_side.data_to_send())
    assert isinstance(victim_hello, Hello)
    # Leg 2: mallory (client) -> honest (server), as victim, passing on victim's challenge.
    honest_side = Session(Role.SERVER, local(honest, "honest"), 0.0)
    as_victim = Hello(
        PROTOCOL_VERSION, victim.peer_id, "victim", 1, victim.cert_der, victim_hello.challenge
    )
    honest_side.receive(encode(as_victim), 0.0)
    _honest_hello, honest_auth = FrameDecoder().feed(honest_side.data_to_send())
    assert isinstance(honest_auth, Auth)
    # Relay honest's signature to victim: refused, and honest is never listed.
    events = victim_side.receive(encode(honest_auth), 0.0)
    assert victim_side.state is State.CLOSED and victim_side.peer is None
    assert events == [Closed("identity proof failed: bad signature", False)]


def test_a_server_whose_tls_certificate_is_not_its_identity_is_refused(
    identities: tuple[Identity, Identity, Identity],
) -> None:
    a, b, c = identities
    client = Session(Role.CLIENT, local(a, "alpha"), 0.0)
    server = Session(Role.SERVER, local(b, "beta"), 0.0)
    client.start(c.cert_der)  # TLS presented someone else's certificate
    ConnectionPair(client, server).pump()
    assert client.state is State.CLOSED
    assert "TLS certificate does not match" in (client.close_reason or "")
