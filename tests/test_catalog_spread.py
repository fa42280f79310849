"""The organiser's signed catalog spreading between seats: trust, adoption, forgeries.

The pure parts (whom to ask and when, the trust store, which catalog is used) in memory;
then real daemons on private buses over loopback, as tests/test_peers.py runs them.
Catalogs are signed here with core.signedcatalog directly, as the organiser's tool does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadd.app.catalogs import CATALOG_FILE, TRUST_FILE, TrustedKeys, choose_catalog
from lanspreadd.app.config import Config, from_args
from lanspreadd.core.catalog import CatalogGame, Pin
from lanspreadd.core.catalogasks import CatalogAsks, Offer
from lanspreadd.core.hashes import CHUNK_SIZE, HashCache
from lanspreadd.core.manifest import manifest_root
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
from tests.scenarios.hostile import hostile_process
from tests.scenarios.hostile_relay import RawSession
from tests.support import (
    BUS_NAME,
    ERR,
    ROOT,
    Daemon,
    PrivateBus,
    bus_driver_call,
    call,
    disconnect,
    make_game,
    wait_for,
)
from tests.test_peers import downloads
from tests.test_polkit import PolkitMock

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


def pin_of(root: Path, hashes: Path) -> Pin:
    """The pin of a downloaded game's files (the tree root is not checked by a download)."""
    files = HashCache(hashes).file_entries(root.name, root)
    return Pin(manifest_root(CHUNK_SIZE, files), CHUNK_SIZE, "0" * 64)


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
def show(peer: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = peer.ctl_json("catalog", "show")
    return result


def games_of(peer: Daemon) -> dict[str, dict[str, Any]]:
    return {g["id"]: g for g in peer.ctl_json("games")}


def connect(a: Daemon, b: Daemon) -> None:
    a.ctl_json("connect", f"{b.listen}:{b.port}")


def refusals(peer: Daemon) -> dict[str, int]:
    result: dict[str, int] = peer.ctl_json("status")["refusals"]
    return result


def refused_times(peer: Daemon, count: int) -> Callable[[], bool]:
    return lambda: refusals(peer).get("catalog") == count


def revision_is(peer: Daemon, revision: int) -> Callable[[], bool]:
    return lambda: show(peer)["revision"] == revision


@pytest.mark.slow
def test_an_organisers_catalog_reaches_every_trusting_seat(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    organiser = make_peer("organiser")
    seat = make_peer("seat", extra_args=("--trust-key", public(key)))
    far = make_peer("far")  # trusts the key at run time; hears only through `seat`
    loner = make_peer("loner")  # trusts no key
    # The organiser trusts its key in lanspreadd.toml; it and `seat` start at revision 1.
    organiser.state_dir.mkdir(parents=True)
    (organiser.state_dir / "lanspreadd.toml").write_text(f'trusted_keys = ["{public(key)}"]\n')
    revision1 = signed(key, 1, game(SAMPLE, "1.0"))
    for peer in (organiser, seat):
        peer.state_dir.mkdir(parents=True, exist_ok=True)
        (peer.state_dir / CATALOG_FILE).write_bytes(revision1)
    make_game(organiser.game_dir, SAMPLE, "2.0")
    new_root = make_game(organiser.game_dir, NEW, "1.0")
    make_game(seat.game_dir, SAMPLE, "1.0")
    revision2 = tmp_path / "revision2.json"
    pin = pin_of(new_root, tmp_path / "hashes")
    revision2.write_bytes(signed(key, 2, game(SAMPLE, "2.0"), game(NEW, "1.0", pin)))

    for peer in (organiser, seat, far, loner):
        peer.start()
    assert seat.ctl_json("install", SAMPLE)["state"] == "finished"
    assert show(seat)["revision"] == 1 and show(seat)["signer"] == fp(key)
    connect(seat, organiser)
    connect(far, seat)
    connect(loner, organiser)
    assert show(far)["revision"] == 0
    trusted = far.ctl_json("catalog", "trust", public(key))
    assert trusted["added"] is True and trusted["fingerprint"] == fp(key)
    wait_for(revision_is(far, 1), ADOPT_WITHIN, "the far seat to take revision 1 from the seat")

    published = organiser.ctl_json("catalog", "publish", str(revision2))
    assert published == {"revision": 2, "signer": fp(key)}
    took = wait_for(revision_is(seat, 2), ADOPT_WITHIN, "the seat to adopt revision 2")
    took += wait_for(revision_is(far, 2), ADOPT_WITHIN, "the far seat to adopt it from the seat")
    print(f"revision 2 reached the far seat {took:.1f} s after it was published")
    assert f"adopted catalog revision 2 signed by {fp(key)} from peer seat" in far.stderr()

    # The changed game is Outdated where it was installed; the new game is there, pinned.
    games = games_of(seat)
    assert games[SAMPLE]["availability"] == "Outdated"
    assert games[SAMPLE]["catalog_version"] == "2.0"
    assert (games[NEW]["availability"], games[NEW]["pinned"]) == ("Absent", True)
    assert show(far)["pinned"] == [NEW]
    shown = far.ctl_json("show", NEW)
    assert (shown["catalog_revision"], shown["catalog_signer"], shown["pinned"]) == (
        2,
        fp(key),
        True,
    )

    # The far seat downloads the new game from the publisher, the only one who has it.
    connect(far, organiser)
    wait_for(lambda: far.ctl_json("show", NEW)["sources"] == 1, 30, "the publisher as source")
    assert far.ctl_json("download", NEW)["state"] == "finished"
    assert downloads(far.game_dir / NEW) == downloads(new_root)
    # The seat fetches version 2.0 of the game it had installed: an update is ready.
    wait_for(lambda: seat.ctl_json("show", SAMPLE)["sources"] == 1, 30, "version 2.0's source")
    assert seat.ctl_json("download", SAMPLE)["state"] == "finished"
    assert seat.ctl_json("show", SAMPLE)["update_ready"] is True
    assert "(update ready)" in seat.ctl("games").stdout

    # The machine that trusts no key keeps its catalog, and says why once.
    assert (show(loner)["revision"], show(loner)["signer"]) == (0, "")
    assert NEW not in games_of(loner)
    assert refusals(loner).get("catalog-untrusted", 0) >= 1
    assert "which we do not trust" in loner.stderr()

    # A restart keeps the adopted catalog.
    seat.stop()
    seat.start()
    assert (show(seat)["revision"], show(seat)["signer"]) == (2, fp(key))
    assert seat.ctl_json("show", SAMPLE)["update_ready"] is True
    assert "(update ready)" in seat.ctl("games").stdout
    status = seat.ctl("status").stdout
    assert f"revision 2, signed by {fp(key)}" in status


@contextmanager
def hostile_catalog_peer(state: Path, target: Daemon) -> Iterator[subprocess.Popen[str]]:
    with hostile_process("tests.scenarios.hostile_catalog", state, target) as proc:
        yield proc


@pytest.mark.slow  # the forger waits 1, 2, 4 and 8 s between asks, as any failed peer does
def test_forged_catalogs_from_a_hostile_peer_are_refused_and_counted(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    victim = make_peer("victim", extra_args=("--trust-key", public(key)))
    victim.state_dir.mkdir(parents=True)
    (victim.state_dir / CATALOG_FILE).write_bytes(signed(key, 2, game(SAMPLE, "1.0")))
    victim.start()
    forgeries = {
        "bad-signature": (5, forged(signed(key, 5, game(SAMPLE, "6.66")))),
        "older": (6, signed(key, 1, game(SAMPLE, "0.1"))),
        "another-key": (7, signed(other, 7, game(SAMPLE, "6.66"))),
        "unsigned": (8, json.dumps({"catalog": json.loads(signed(key, 8))["catalog"]}).encode()),
    }
    with hostile_catalog_peer(tmp_path / "forger", victim) as forger:
        assert forger.stdin is not None and forger.stdout is not None
        for count, (name, (revision, document)) in enumerate(forgeries.items(), 1):
            path = tmp_path / f"{name}.json"
            path.write_bytes(document)
            # Announced as signed by the key the victim trusts (its fingerprint is public).
            forger.stdin.write(f"offer {revision} {fp(key)} {path}\n")
            forger.stdin.flush()
            assert forger.stdout.readline().strip() == f"asked {revision}"
            wait_for(refused_times(victim, count), 20, f"the {name} catalog refused")
        # The same revision again from the same peer is not asked for a second time:
        # the next ask is for the revision after it.
        forger.stdin.write(f"offer 8 {fp(key)} {tmp_path / 'unsigned.json'}\n")
        forger.stdin.write(f"offer 9 {fp(key)} {tmp_path / 'another-key.json'}\n")
        forger.stdin.flush()
        assert forger.stdout.readline().strip() == "asked 9"
        wait_for(refused_times(victim, 5), 20, "revision 9 refused")
    log = victim.stderr()
    assert "signature does not verify" in log  # the first refusal is said at once
    assert log.count("refused (catalog)") == 1, "the others wait for the minute's summary"
    assert (show(victim)["revision"], show(victim)["signer"]) == (2, fp(key))
    assert games_of(victim)[SAMPLE]["catalog_version"] == "1.0"
    assert refusals(victim)["catalog"] == len(forgeries) + 1
    assert victim.ctl("status").returncode == 0


def test_a_peer_of_the_previous_protocol_is_refused_with_a_reason(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    from aioquic.asyncio.client import connect as quic_connect

    from lanspreadd.core.identity import load_or_create
    from lanspreadd.net.transport import quic_configuration

    target = make_peer("target").start()
    identity = load_or_create(tmp_path / "old", "old")

    async def say_hello_as_version_3() -> str:
        config = quic_configuration(identity, is_client=True)
        async with quic_connect(
            "127.0.0.1", target.port, configuration=config, create_protocol=RawSession
        ) as conn:
            assert isinstance(conn, RawSession)
            conn.send(
                Hello(3, peer_id_of(identity.cert_der), "old", 1, identity.cert_der, os.urandom(32))
            )
            answer = await conn.next(Refuse)
            # The Refuse frame, or the close it rides with (aioquic may close first).
            return answer.reason if isinstance(answer, Refuse) else str(answer)

    reason = asyncio.run(say_hello_as_version_3()).removeprefix("closed: ")
    assert reason == (
        f"protocol version 3 is not supported; this peer speaks version {PROTOCOL_VERSION}"
    )
    wait_for(lambda: refusals(target).get("peer-handshake") == 1, 10, "the refusal counted")


def test_trust_publish_and_untrust_through_lanspreadctl(daemon: Daemon, tmp_path: Path) -> None:
    key, configured = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    daemon.extra_args = ("--trust-key", public(configured))
    daemon.start()
    revision2 = tmp_path / "revision2.json"
    revision2.write_bytes(signed(key, 2, game(NEW, "1.0")))

    def refused(*args: str) -> str:
        result = daemon.ctl(*args)
        assert result.returncode != 0, result.stdout
        return f"{result.returncode}: {result.stderr.strip()}"

    assert "1: lanspreadctl: not an Ed25519 public key" in refused("catalog", "trust", "garbage")
    assert refused("catalog", "publish", str(tmp_path / "missing.json")).startswith("2: ")
    (tmp_path / "junk.json").write_bytes(b"\x00junk")
    assert "not JSON" in refused("catalog", "publish", str(tmp_path / "junk.json"))
    assert "signed by key" in refused("catalog", "publish", str(revision2))
    assert "is not trusted" in refused("catalog", "untrust", public(key))
    assert "trusted by lanspreadd.toml" in refused("catalog", "untrust", public(configured))

    assert daemon.ctl_json("catalog", "trust", public(key))["added"] is True
    assert sorted(show(daemon)["trusted_keys"]) == sorted([public(key), public(configured)])

    async def publish_and_hear_it(document: bytes) -> Message:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        heard: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def on_signal(msg: Message) -> None:
            if msg.member == "CatalogAdopted" and not heard.done():
                heard.set_result(msg)

        bus.add_message_handler(on_signal)
        rule = f"type='signal',sender='{BUS_NAME}',path='{ROOT}',member='CatalogAdopted'"
        await bus_driver_call(bus, "AddMatch", rule)
        try:
            reply = await call(bus, "PublishCatalog", "ay", [document])
            assert reply.message_type is MessageType.METHOD_RETURN, reply.body
            async with asyncio.timeout(20):
                return await heard
        finally:
            await disconnect(bus)

    adopted = asyncio.run(publish_and_hear_it(revision2.read_bytes()))
    assert (adopted.signature, adopted.body) == ("us", [2, fp(key)])
    assert (daemon.state_dir / CATALOG_FILE).read_bytes() == revision2.read_bytes()
    assert list(games_of(daemon)) == [NEW]
    assert "is in use" in refused("catalog", "publish", str(revision2))
    older = tmp_path / "older.json"
    older.write_bytes(signed(key, 1, game(SAMPLE, "1.0")))
    assert "not newer than revision 2" in refused("catalog", "publish", str(older))
    huge = tmp_path / "huge.json"
    huge.write_bytes(signed(key, 1 << 32, game(SAMPLE, "1.0")))  # D-Bus says it as a u
    assert "out of range" in refused("catalog", "publish", str(huge))

    # Untrusting the signer falls back to the configured catalog; the document is kept,
    # and trusting the key again brings it back.
    untrusted = daemon.ctl_json("catalog", "untrust", public(key))
    assert (untrusted["still_trusted"], untrusted["revision"]) == (False, 0)
    assert NEW not in games_of(daemon) and SAMPLE in games_of(daemon)
    assert (daemon.state_dir / CATALOG_FILE).exists()
    daemon.ctl_json("catalog", "trust", public(key))
    assert show(daemon)["revision"] == 2
    assert refusals(daemon)["catalog"] == 4  # junk, untrusted, older, huge; not "in use"
    assert daemon.ctl("status").returncode == 0


def test_catalog_changes_need_polkits_yes(
    daemon: Daemon, private_bus: PrivateBus, tmp_path: Path
) -> None:
    polkit = PolkitMock(private_bus)
    try:
        key = Ed25519PrivateKey.generate()
        daemon.extra_args = ("--polkit", "on")
        daemon.start()
        document = tmp_path / "catalog.json"
        document.write_bytes(signed(key, 3, game(NEW, "1.0")))
        for args in (("trust", public(key)), ("untrust", public(key)), ("publish", str(document))):
            result = daemon.ctl("catalog", *args)
            assert result.returncode == 4, args
            assert "org.lanspread.manage-catalog" in result.stderr
        assert show(daemon)["trusted_keys"] == []
        polkit.allow("org.lanspread.manage-catalog")
        daemon.ctl_json("catalog", "trust", public(key))
        assert daemon.ctl_json("catalog", "publish", str(document))["revision"] == 3
    finally:
        polkit.stop()


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
