"""The organiser's signed catalog spreading between seats: trust, adoption, forgeries.

The pure parts (whom to ask and when, the trust store, which catalog is used) in memory;
then real daemons on private buses over loopback, as tests/test_peers.py runs them.
Catalogs are signed here with core.signedcatalog directly, as the organiser's tool does.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbus_fast.aio import MessageBus

from lanspreadd.app.catalogs import CATALOG_FILE, TRUST_FILE, TrustedKeys, choose_catalog
from lanspreadd.app.config import Config, from_args
from lanspreadd.core.catalog import CatalogGame, Pin
from lanspreadd.core.catalogasks import CatalogAsks, Offer
from lanspreadd.core.signedcatalog import (
    MAX_DOCUMENT,
    catalog_object,
    fingerprint,
    key_text,
    sign_catalog,
)
from lanspreadd.errors import CatalogError, ConfigError, NotFound
from lanspreadd.protocol import PROTOCOL_VERSION
from lanspreadd.protocol.codec import FrameDecoder, encode
from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.identity import peer_id_of
from lanspreadd.protocol.messages import (
    MAX_CATALOG,
    CatalogAnnounce,
    CatalogDocument,
    Hello,
    Refuse,
)
from tests.scenarios.hostile_relay import RawSession
from tests.support import (
    ERR,
    Daemon,
    call,
    disconnect,
    wait_for,
)

MakePeer = Callable[..., Daemon]
SAMPLE = "sample-game"
NEW = "new-game"
ADOPT_WITHIN = 30.0  # seconds: "within a minute" at a party, with room for a busy machine


# ---- signing, as the organiser's tool does ------------------------------------------------
def public(key: Ed25519PrivateKey) -> str:
    return key_text(key.public_key().public_bytes_raw())


def fp(key: Ed25519PrivateKey) -> str:
    return fingerprint(key.public_key().public_bytes_raw())


def game(game_id: str, version: str, pin: Pin | None = None) -> CatalogGame:
    return CatalogGame(game_id, game_id.replace("-", " ").title(), "", 1 << 20, version, pin=pin)


def signed(key: Ed25519PrivateKey, revision: int, *games: CatalogGame) -> bytes:
    return sign_catalog(catalog_object(revision, {g.id: g for g in games}), key)


def forged(document: bytes) -> bytes:
    """The document with its games' versions changed after signing."""
    outer = json.loads(document)
    assert outer["catalog"]["games"]
    for fields in outer["catalog"]["games"].values():
        fields["version"] += "-trojan"
    return json.dumps(outer).encode()


# ---- whom to ask, and when: in memory ----------------------------------------------------
def test_the_newest_trusted_offer_is_asked_for_first() -> None:
    asks = CatalogAsks(min_gap=0.5)
    offers = [
        Offer("a", 3, "trusted"),
        Offer("b", 5, "stranger"),  # newest, but nobody we trust signed it
        Offer("c", 4, "trusted"),
        Offer("d", 1, "trusted"),  # older than ours
    ]
    assert asks.due(offers, 2, {"trusted"}, now=0.0) == Offer("c", 4, "trusted")
    asks.asked(now=0.0)
    assert asks.due(offers, 2, {"trusted"}, now=0.1) is None, "one ask per gap"
    assert asks.wake_at(offers, 2, {"trusted"}, now=0.1) == 0.5
    assert asks.due(offers, 4, {"trusted"}, now=1.0) is None, "nothing newer than ours"
    assert asks.wake_at(offers, 4, {"trusted"}, now=1.0) is None
    assert asks.due(offers, 0, set(), now=1.0) is None, "a machine that trusts no key asks none"


def test_a_failed_peer_is_not_asked_for_the_same_revision_again() -> None:
    asks = CatalogAsks(min_gap=0.0, backoff=1.0, max_backoff=8.0)
    liar, honest = Offer("liar", 7, "k"), Offer("honest", 7, "k")
    assert asks.due([liar], 2, {"k"}, 0.0) == liar
    asks.failed(liar, 0.0)
    assert asks.due([liar], 2, {"k"}, 100.0) is None
    assert asks.wake_at([liar], 2, {"k"}, 100.0) is None
    # Another peer with the same revision is asked at once.
    assert asks.due([liar, honest], 2, {"k"}, 0.0) == honest
    # A new revision from the liar waits out a backoff that doubles with each failure.
    waits = []
    now = 0.0
    for revision in range(8, 13):
        offer = Offer("liar", revision, "k")
        at = asks.wake_at([offer], 2, {"k"}, now)
        assert at is not None
        waits.append(at - now)
        assert asks.due([offer], 2, {"k"}, at - 0.01) is None
        assert asks.due([offer], 2, {"k"}, at) == offer
        now = at
        asks.failed(offer, now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    asks.succeeded(Offer("liar", 13, "k"))
    assert asks.due([Offer("liar", 14, "k")], 2, {"k"}, now) is not None
    # A peer that left while asked may be asked for the same revision once it is back.
    gone = Offer("gone", 7, "k")
    asks.failed(gone, 0.0, final=False)
    assert asks.due([gone], 2, {"k"}, 0.5) is None
    assert asks.due([gone], 2, {"k"}, 1.0) == gone


def test_failures_are_remembered_for_a_bounded_number_of_peers() -> None:
    asks = CatalogAsks(min_gap=0.0, remembered=3)
    for i in range(10):
        asks.failed(Offer(f"p{i}", 5, "k"), 0.0)
    assert asks.due([Offer("p9", 5, "k")], 1, {"k"}, 10.0) is None
    assert asks.due([Offer("p0", 5, "k")], 1, {"k"}, 10.0) is not None  # forgotten


# ---- trust and the catalog at start: in memory ----------------------------------------------
def config_for(tmp_path: Path, *flags: str) -> Config:
    toml = tmp_path / "lanspreadd.toml"
    toml.touch()
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return from_args(["--config", str(toml), "--state-dir", str(state), *flags])


def test_trusted_keys_are_the_union_and_untrust_leaves_the_configuration(tmp_path: Path) -> None:
    configured, managed, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    config = config_for(tmp_path, "--trust-key", public(configured))
    trust = TrustedKeys.of(config)
    assert trust.texts() == [public(configured)]

    async def scenario() -> None:
        assert await trust.trust(managed.public_key().public_bytes_raw())
        assert not await trust.trust(managed.public_key().public_bytes_raw())
        with pytest.raises(CatalogError, match=r"trusted by lanspreadd\.toml"):
            await trust.untrust(configured.public_key().public_bytes_raw())
        with pytest.raises(NotFound, match="not trusted"):
            await trust.untrust(stranger.public_key().public_bytes_raw())

    asyncio.run(scenario())
    assert trust.texts() == sorted([public(configured), public(managed)])
    assert trust.fingerprints() == {fp(configured), fp(managed)}
    # Kept across restarts, one key a line; a line that is no key is skipped, not fatal.
    path = config.state_dir / TRUST_FILE
    assert path.read_text() == f"{public(managed)}\n"
    path.write_text(f"# the party's organiser\n{public(managed)}\nnot-a-key\n")
    assert TrustedKeys.of(config).texts() == sorted([public(configured), public(managed)])


def test_a_bad_trusted_key_in_the_configuration_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trusted_keys: not an Ed25519 public key"):
        config_for(tmp_path, "--trust-key", "ed25519:AAAA")
    toml = tmp_path / "lanspreadd.toml"
    key = Ed25519PrivateKey.generate()
    toml.write_text(f'trusted_keys = ["{public(key)}"]\n')
    assert config_for(tmp_path).trusted_keys == (public(key),)


def test_the_kept_catalog_is_used_while_it_verifies(tmp_path: Path) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    config = config_for(tmp_path)
    embedded = choose_catalog(config, frozenset())
    assert (embedded.signed, embedded.catalog.revision, embedded.catalog.signer) == (None, 0, "")
    (config.state_dir / CATALOG_FILE).write_bytes(signed(key, 4, game(NEW, "1.0")))
    raw = key.public_key().public_bytes_raw()
    chosen = choose_catalog(config, frozenset({raw}))
    assert (chosen.catalog.revision, chosen.catalog.signer) == (4, fp(key))
    assert list(chosen.catalog.games) == [NEW]
    # Untrusted, or trusting no key at all: the configured (here embedded) catalog.
    other_raw = other.public_key().public_bytes_raw()
    assert choose_catalog(config, frozenset({other_raw})).catalog.revision == 0
    assert choose_catalog(config, frozenset()).catalog.games.keys() == embedded.catalog.games.keys()
    (config.state_dir / CATALOG_FILE).write_bytes(forged(signed(key, 5, game(NEW, "1.0"))))
    assert choose_catalog(config, frozenset({raw})).catalog.revision == 0


def test_a_whole_catalog_fits_one_frame_and_fingerprints_are_checked() -> None:
    assert MAX_CATALOG == MAX_DOCUMENT
    frame = encode(CatalogDocument(7, b"\xff" * MAX_CATALOG))
    (message,) = FrameDecoder().feed(frame)
    assert message == CatalogDocument(7, b"\xff" * MAX_CATALOG)
    assert FrameDecoder().feed(encode(CatalogAnnounce(3, "0123456789abcdef"))) == [
        CatalogAnnounce(3, "0123456789abcdef")
    ]
    with pytest.raises(RemoteProtocolError, match="fingerprint"):
        CatalogAnnounce.from_json({"revision": 3, "signer": "\x1b[2J"})
    with pytest.raises(RemoteProtocolError, match="too long"):
        CatalogDocument.from_json({"request_id": 1, "document": "QUFB" * (MAX_CATALOG // 2)})


# ---- real daemons ----------------------------------------------------------------------
def refusals(peer: Daemon) -> dict[str, int]:
    result: dict[str, int] = peer.ctl_json("status")["refusals"]
    return result


def test_a_peer_of_the_previous_protocol_is_refused_with_a_reason(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    from aioquic.asyncio.client import connect as quic_connect

    from lanspreadd.core.identity import load_or_create
    from lanspreadd.net.transport import quic_configuration

    target = make_peer("target").start()
    identity = load_or_create(tmp_path / "old", "old")

    async def say_hello_as_version_2() -> str:
        config = quic_configuration(identity, is_client=True)
        async with quic_connect(
            "127.0.0.1", target.port, configuration=config, create_protocol=RawSession
        ) as conn:
            assert isinstance(conn, RawSession)
            conn.send(
                Hello(2, peer_id_of(identity.cert_der), "old", 1, identity.cert_der, os.urandom(32))
            )
            answer = await conn.next(Refuse)
            # The Refuse frame, or the close it rides with (aioquic may close first).
            return answer.reason if isinstance(answer, Refuse) else str(answer)

    assert PROTOCOL_VERSION == 3
    reason = asyncio.run(say_hello_as_version_2()).removeprefix("closed: ")
    assert reason == "protocol version 2 is not supported; this peer speaks version 3"
    wait_for(lambda: refusals(target).get("peer-handshake") == 1, 10, "the refusal counted")


def test_named_errors_for_bad_catalog_calls(daemon: Daemon) -> None:
    daemon.start()

    async def calls() -> list[str | None]:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        try:
            replies = [
                await call(bus, "PublishCatalog", "ay", [b"\xff" * (MAX_DOCUMENT + 1)]),
                await call(bus, "PublishCatalog", "ay", [b""]),
                await call(bus, "TrustKey", "s", ["ed25519:" + "A" * 10_000]),
                await call(bus, "UntrustKey", "s", ["\x1b[2J"]),
            ]
            return [r.error_name for r in replies]
        finally:
            await disconnect(bus)

    assert asyncio.run(calls()) == [ERR + "CatalogError"] * 4
    assert daemon.ctl("status").returncode == 0
