"""The organiser's catalog as a signed document: canonical JSON and an Ed25519 signature.

    {"catalog": {"format": 1, "revision": 2, "games": {"<id>": {...}}},
     "signer": "<base64 of the 32-byte Ed25519 public key>",
     "signature": "<base64 of the 64-byte signature>"}

The signature covers `SIGNED_PREFIX` + the canonical JSON of "catalog", so the same bytes
are signed whatever whitespace or key order a file was saved with. The organiser's
private key stays with `lanspread-catalog`; daemons only verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from lanspreadd.core.catalog import GAME_ID_RE, CatalogGame, Pin
from lanspreadd.core.escape import echoed
from lanspreadd.core.manifest import canonical_json
from lanspreadd.errors import CatalogError
from lanspreadd.protocol.text import MAX_NAME, first_unprintable

FORMAT = 1
SIGNED_PREFIX = b"lanspread catalog v1\n"
MAX_DOCUMENT = 8 << 20  # bytes; thousands of games with long descriptions fit
MAX_TEXT = 4096
HEX64 = frozenset("0123456789abcdef")
KEY_PREFIX = "ed25519:"


def key_text(public: bytes) -> str:
    """A public key as people pass it around: `ed25519:` and base64 of its 32 bytes."""
    return KEY_PREFIX + base64.b64encode(public).decode()


def parse_key(text: str) -> bytes:
    """The 32 raw bytes of a key written as `key_text` makes it (the prefix optional)."""
    body = text.strip().removeprefix(KEY_PREFIX)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise CatalogError(f"not an Ed25519 public key: {echoed(text)!r}")
    return raw


def fingerprint(public: bytes) -> str:
    """A short name for a key, to compare by eye: 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class SignedCatalog:
    revision: int
    games: dict[str, CatalogGame]
    signer: bytes  # the raw public key that signed it
    document: bytes  # the file as received, to pass on unchanged

    @property
    def signer_fingerprint(self) -> str:
        return fingerprint(self.signer)


def sign_catalog(catalog: dict[str, Any], private: Ed25519PrivateKey) -> bytes:
    """The signed document for a catalog object (checked by reading it back)."""
    body = canonical_json(catalog)
    public = private.public_key().public_bytes_raw()
    document = canonical_json(
        {
            "catalog": catalog,
            "signer": base64.b64encode(public).decode(),
            "signature": base64.b64encode(private.sign(SIGNED_PREFIX + body)).decode(),
        }
    )
    parse_signed(document)
    return document


def parse_signed(document: bytes, trusted: frozenset[bytes] | None = None) -> SignedCatalog:
    """A verified catalog; `trusted` (if given) the keys it must be signed with."""
    if len(document) > MAX_DOCUMENT:
        raise CatalogError(f"the catalog is {len(document)} bytes; at most {MAX_DOCUMENT}")
    try:
        outer = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogError(f"the catalog is not JSON: {exc}") from None
    if not isinstance(outer, dict) or "catalog" not in outer:
        raise CatalogError("not a lanspread catalog (no 'catalog' object)")
    if "signature" not in outer or "signer" not in outer:
        raise CatalogError("the catalog is not signed")
    signer = parse_key(str(outer["signer"]))
    if trusted is not None and signer not in trusted:
        raise CatalogError(
            f"the catalog is signed by key {fingerprint(signer)}, which is not trusted"
        )
    try:
        signature = base64.b64decode(str(outer["signature"]), validate=True)
        body = canonical_json(outer["catalog"])
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, SIGNED_PREFIX + body)
    except (binascii.Error, ValueError, InvalidSignature):
        raise CatalogError(
            f"the catalog's signature does not verify (signer {fingerprint(signer)})"
        ) from None
    revision, games = parse_catalog(outer["catalog"])
    return SignedCatalog(revision, games, signer, document)


def parse_catalog(catalog: object) -> tuple[int, dict[str, CatalogGame]]:
    """The revision and games of a catalog object; every field checked."""
    if not isinstance(catalog, dict) or catalog.get("format") != FORMAT:
        raise CatalogError(f"the catalog's format is not {FORMAT}")
    revision = catalog.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise CatalogError("the catalog's revision must be a whole number from 1")
    games = catalog.get("games")
    if not isinstance(games, dict):
        raise CatalogError("the catalog has no 'games' object")
    return revision, {gid: _game(gid, fields) for gid, fields in sorted(games.items())}


def catalog_object(revision: int, games: dict[str, CatalogGame]) -> dict[str, Any]:
    """What `parse_catalog` reads back: the form the organiser's tool signs."""
    return {
        "format": FORMAT,
        "revision": revision,
        "games": {gid: _fields(game) for gid, game in sorted(games.items())},
    }


def _fields(game: CatalogGame) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": game.name,
        "description": game.description,
        "version": game.version,
        "genre": game.genre,
        "players": game.max_players,
        "size": game.size,
    }
    if game.pin is not None:
        fields["pin"] = {
            "manifest": game.pin.manifest,
            "chunk_size": game.pin.chunk_size,
            "tree": game.pin.tree,
        }
    return fields


def _game(game_id: str, fields: object) -> CatalogGame:
    if not GAME_ID_RE.fullmatch(game_id):
        raise CatalogError(f"invalid game id {echoed(game_id)!r} in the catalog")
    if not isinstance(fields, dict):
        raise CatalogError(f"game {game_id}: not an object")

    def text(name: str, required: bool = False, limit: int = MAX_TEXT) -> str:
        """Text every sink shows as itself (newlines only in a description)."""
        value = fields.get(name, "")
        if not isinstance(value, str) or len(value) > limit or (required and not value):
            raise CatalogError(f"game {game_id}: '{name}' must be text of 1 to {limit}")
        if first_unprintable(value.replace("\n", " ") if name == "description" else value):
            raise CatalogError(f"game {game_id}: '{name}' holds an unprintable character")
        return value

    version = text("version", required=True, limit=MAX_NAME)
    if version != version.strip() or "\n" in version:
        raise CatalogError(f"game {game_id}: the version cannot begin or end with spaces")

    def number(name: str) -> int:
        value = fields.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CatalogError(f"game {game_id}: '{name}' must be a whole number")
        return value

    return CatalogGame(
        id=game_id,
        name=text("name", required=True),
        description=text("description"),
        size=number("size"),
        version=version,
        genre=text("genre"),
        max_players=number("players"),
        pin=_pin(game_id, fields.get("pin")),
    )


def _pin(game_id: str, pin: object) -> Pin | None:
    if pin is None:
        return None
    if not isinstance(pin, dict):
        raise CatalogError(f"game {game_id}: 'pin' must be an object")
    roots = {}
    for name in ("manifest", "tree"):
        value = pin.get(name)
        if not isinstance(value, str) or len(value) != 64 or not set(value) <= HEX64:
            raise CatalogError(f"game {game_id}: pin '{name}' must be 64 hex digits")
        roots[name] = value
    chunk = pin.get("chunk_size")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 4096 <= chunk <= 1 << 30:
        raise CatalogError(f"game {game_id}: pin 'chunk_size' is out of range")
    return Pin(manifest=roots["manifest"], chunk_size=chunk, tree=roots["tree"])
