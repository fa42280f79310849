"""The organiser's catalog at every seat: trusted keys, adoption, and passing it on.

Trust: the keys of lanspreadd.toml (`trusted_keys`, or `--trust-key`) and those trusted
at run time (`trusted-keys` in the state directory, one key a line); the union counts.
`untrust` removes only run-time keys: the configuration is the administrator's.

Which catalog is used: `catalog.json` in the state directory while it verifies against
a trusted key, else the configured `game.db` (or the embedded sample). A machine that
trusts no key keeps its configured catalog whatever its peers say.

Adoption: a signed catalog with a higher revision than ours (any trusted one beats an
unsigned one) is written to the state directory, then applied like a reload: games
whose version changed become Outdated. Refused catalogs are counted and logged once a
minute (`RefusalTally`, cause "catalog"). Peers tell each other their revision and
signer; a newer one from a trusted signer is asked for (`core.catalogasks` says whom
and when), verified, adopted and told on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lanspreadd.app.config import Config
from lanspreadd.app.games import Games
from lanspreadd.core.catalog import Catalog
from lanspreadd.core.catalogasks import CatalogAsks, Offer
from lanspreadd.core.install import atomic_write
from lanspreadd.core.refusals import RefusalTally
from lanspreadd.core.signedcatalog import (
    MAX_DOCUMENT,
    SignedCatalog,
    fingerprint,
    key_text,
    parse_key,
    parse_signed,
)
from lanspreadd.errors import Busy, CatalogError, NotFound
from lanspreadd.net.peers import Peer, PeerManager
from lanspreadd.protocol.messages import CatalogAnnounce, CatalogDocument, CatalogRequest

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"
TRUST_FILE = "trusted-keys"
ASK_TIMEOUT = 20.0  # 8 MiB cross a LAN in well under a second
SERVE_GAP = 10.0  # one peer gets the same document at most once in this while
MAX_SERVED = 1024  # peers whose last ask we remember
MAX_REVISION = (1 << 32) - 1  # D-Bus tells it as a u


class TrustedKeys:
    """The organiser keys whose catalogs we adopt: configured ones and run-time ones."""

    def __init__(self, configured: tuple[str, ...], path: Path) -> None:
        self.configured = frozenset(parse_key(text) for text in configured)
        self.path = path
        self.managed: tuple[bytes, ...] = self._read()

    @classmethod
    def of(cls, config: Config) -> TrustedKeys:
        return cls(config.trusted_keys, config.state_dir / TRUST_FILE)

    def _read(self) -> tuple[bytes, ...]:
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return ()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s, trusting only configured keys: %s", self.path, exc)
            return ()
        keys: list[bytes] = []
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                keys.append(parse_key(line))
            except CatalogError as exc:
                log.warning("%s line %d is skipped: %s", self.path, number, exc)
        return tuple(dict.fromkeys(keys))

    def keys(self) -> frozenset[bytes]:
        return self.configured | frozenset(self.managed)

    def fingerprints(self) -> frozenset[str]:
        return frozenset(fingerprint(key) for key in self.keys())

    def texts(self) -> list[str]:
        return sorted(key_text(key) for key in self.keys())

    async def trust(self, key: bytes) -> bool:
        """Trust `key` from now on and across restarts; False if it was trusted already."""
        if key in self.managed:
            return False
        await self._save((*self.managed, key))
        return True

    async def untrust(self, key: bytes) -> None:
        if key not in self.managed:
            if key in self.configured:
                raise CatalogError(
                    f"key {fingerprint(key)} is trusted by lanspreadd.toml (trusted_keys or "
                    "--trust-key); untrust removes only keys trusted with `catalog trust`: "
                    "remove it there and restart lanspreadd"
                )
            raise NotFound(f"key {fingerprint(key)} is not trusted")
        await self._save(tuple(k for k in self.managed if k != key))

    async def _save(self, keys: tuple[bytes, ...]) -> None:
        text = "".join(f"{key_text(key)}\n" for key in keys)
        try:
            await asyncio.to_thread(atomic_write, self.path, text.encode())
        except OSError as exc:
            raise CatalogError(f"cannot write {self.path}: {exc}") from exc
        self.managed = keys


@dataclass(frozen=True)
class Choice:
    catalog: Catalog
    signed: SignedCatalog | None  # the organiser's document behind it, if any


def as_catalog(signed: SignedCatalog, path: Path) -> Catalog:
    return Catalog(dict(signed.games), path, signed.revision, signed.signer_fingerprint)


def choose_catalog(config: Config, trusted: frozenset[bytes]) -> Choice:
    """The state directory's signed catalog while it verifies, else the configured one."""
    path = config.state_dir / CATALOG_FILE
    try:
        with path.open("rb") as fh:
            document = fh.read(MAX_DOCUMENT + 1)
    except FileNotFoundError:
        return Choice(Catalog.load(config.catalog), None)
    except OSError as exc:
        log.warning("cannot read %s, using the configured catalog: %s", path, exc)
        return Choice(Catalog.load(config.catalog), None)
    try:
        signed = parse_signed(document, trusted)
    except CatalogError as exc:
        configured = Catalog.load(config.catalog)
        log.warning("%s is not used (%s): using %s", path, exc, configured.source)
        return Choice(configured, None)
    return Choice(as_catalog(signed, path), signed)


class Catalogs:
    """The catalog in use, who vouches for it, and how it spreads between peers."""

    def __init__(
        self,
        config: Config,
        trust: TrustedKeys,
        first: Choice,
        games: Games,
        peers: PeerManager,
        refusals: RefusalTally,
        status: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.trust = trust
        self.signed = first.signed
        self.library = games.library
        self.games = games
        self.peers = peers
        self.refusals = refusals
        self.observers = games.observers
        self.status = status  # the daemon's one-line status, told after a change
        self.clock = clock
        self.path = config.state_dir / CATALOG_FILE
        self.asks = CatalogAsks()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._served: dict[str, tuple[int, float]] = {}  # peer: revision sent, when

    @property
    def catalog(self) -> Catalog:
        return self.library.catalog

    # ---- what peers see -----------------------------------------------------------------
    def announcement(self) -> CatalogAnnounce:
        return CatalogAnnounce(self.catalog.revision, self.catalog.signer)

    def heard(self, peer: Peer) -> None:
        """A peer told us its catalog: worth a look if it is newer."""
        said = peer.catalog
        if said is None or said.revision <= self.catalog.revision:
            return
        if said.signer not in self.trust.fingerprints():
            who = f"{peer.name} ({peer.peer_id[:8]})"
            signer = f"key {said.signer}" if said.signer else "nobody"
            self.refusals.note(
                "catalog-untrusted",
                f"{who} uses catalog revision {said.revision} signed by {signer}, "
                "which we do not trust",
            )
            return
        self._wake.set()

    async def document(self, peer: Peer, request: CatalogRequest) -> CatalogDocument:
        """Our signed catalog for a peer that asked; the same one again only after a while
        (an honest peer never asks twice: it adopts it, or asks someone else)."""
        signed = self.signed
        if signed is None or signed.revision < request.revision:
            ours = signed.revision if signed else 0
            raise NotFound(f"no signed catalog at revision {request.revision} here ({ours})")
        now = self.clock()
        last = self._served.pop(peer.peer_id, None)
        self._served[peer.peer_id] = (signed.revision, now)
        while len(self._served) > MAX_SERVED:
            del self._served[next(iter(self._served))]
        if last is not None and last[0] == signed.revision and now - last[1] < SERVE_GAP:
            self.refusals.note("catalog-asked-again", f"{peer.name} ({peer.peer_id[:8]})")
            raise Busy(f"revision {signed.revision} was sent to you a moment ago")
        return CatalogDocument(request.request_id, signed.document)

    # ---- adopting -----------------------------------------------------------------------
    async def adopt(self, document: bytes, origin: str) -> SignedCatalog:
        """Verify, keep and apply a newer signed catalog; CatalogError (counted) if not."""
        async with self._lock:
            if self.signed is not None and document == self.signed.document:
                raise CatalogError(f"this catalog (revision {self.signed.revision}) is in use")
            try:
                signed = await self._verify(document)
            except CatalogError as exc:
                self.refusals.note("catalog", f"{origin}: {exc}")
                raise
            try:
                await asyncio.to_thread(atomic_write, self.path, document)
            except OSError as exc:
                raise CatalogError(f"cannot keep the catalog in {self.path}: {exc}") from exc
            self._apply(Choice(as_catalog(signed, self.path), signed))
        log.info(
            "adopted catalog revision %d signed by %s from %s: %d games",
            signed.revision,
            signed.signer_fingerprint,
            origin,
            len(signed.games),
        )
        self.observers.catalog_adopted(self.catalog)
        return signed

    async def _verify(self, document: bytes) -> SignedCatalog:
        trusted = self.trust.keys()
        if not trusted:
            raise CatalogError(
                "this machine trusts no organiser key (lanspreadctl catalog trust KEY)"
            )
        # Up to 8 MiB of JSON to parse and hash: not on the event loop.
        signed = await asyncio.to_thread(parse_signed, document, trusted)
        if signed.revision > MAX_REVISION:
            raise CatalogError(f"revision {signed.revision} is out of range (1-{MAX_REVISION})")
        if signed.revision <= self.catalog.revision:
            raise CatalogError(
                f"revision {signed.revision} is not newer than revision "
                f"{self.catalog.revision} in use"
            )
        return signed

    def reload(self) -> int:
        """Choose again (SIGHUP, ReloadCatalog): the signed catalog kept, else game.db."""
        choice = choose_catalog(self.config, self.trust.keys())
        self._apply(choice)
        count = len(choice.catalog.games)
        log.info("catalog reloaded from %s: %d games", choice.catalog.source, count)
        return count

    def _apply(self, choice: Choice) -> None:
        """Use `choice` from now on: games re-sorted, peers and observers told."""
        old = set(self.catalog.games)
        self.library.catalog = choice.catalog
        self.signed = choice.signed
        for game_id in old - set(choice.catalog.games):
            self.library.states.pop(game_id, None)
            self.games.notify(game_id)
        self.games.rescan(None)
        self.games.catalog_changed()
        self.peers.send_to_all(self.announcement())
        self.observers.status_changed(self.status())
        self._wake.set()

    # ---- trust ----------------------------------------------------------------------------
    async def trust_key(self, text: str) -> bool:
        """Trust a key at run time; the catalog kept here, or a peer's, may now apply."""
        added = await self.trust.trust(parse_key(text))
        self._reconsider()
        return added

    async def untrust_key(self, text: str) -> None:
        """Stop trusting a run-time key; a catalog it signed gives way to the configured one."""
        await self.trust.untrust(parse_key(text))
        self._reconsider()

    def _reconsider(self) -> None:
        choice = choose_catalog(self.config, self.trust.keys())
        kept = choice.signed.document if choice.signed else None
        if kept != (self.signed.document if self.signed else None):
            self._apply(choice)
        self._wake.set()

    # ---- spreading ----------------------------------------------------------------------
    async def spread(self) -> None:
        """Ask peers for newer catalogs they announce, one at a time; a service."""
        while True:
            self._wake.clear()
            now = self.clock()
            offers = self._offers()
            trusted = self.trust.fingerprints()
            offer = self.asks.due(offers, self.catalog.revision, trusted, now)
            if offer is not None:
                await self._fetch(offer)
                continue
            wake = self.asks.wake_at(offers, self.catalog.revision, trusted, now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wake is None else wake - now):
                    await self._wake.wait()

    def _offers(self) -> list[Offer]:
        return [
            Offer(p.peer_id, p.catalog.revision, p.catalog.signer)
            for p in self.peers.peers.values()
            if p.catalog is not None
        ]

    async def _fetch(self, offer: Offer) -> None:
        self.asks.asked(self.clock())
        peer = self.peers.peers.get(offer.peer_id)
        origin = f"peer {peer.name if peer else '?'} ({offer.peer_id[:8]})"
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                document = await self.peers.request_catalog(offer.peer_id, offer.revision)
        except Exception as exc:  # PeerError, TimeoutError, or a session closing under us
            # A peer that left may be asked again when it is back; one that answered
            # wrongly or not at all is not asked for this revision again.
            gone = offer.peer_id not in self.peers.peers
            self.asks.failed(offer, self.clock(), final=not gone)
            why = str(exc) or "no answer in time"
            self.refusals.note("catalog-ask-failed", f"{origin}: {why}")
            return
        try:
            signed = await self.adopt(document, origin)
        except CatalogError:
            self.asks.failed(offer, self.clock())
            return
        if signed.revision < offer.revision:  # it announced more than it gave
            self.asks.failed(offer, self.clock())
        else:
            self.asks.succeeded(offer)
