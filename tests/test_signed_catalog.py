"""The organiser's signed catalog and the root hashes that pin content, in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanspreadd.core.catalog import CatalogGame, Pin
from lanspreadd.core.manifest import check_tree, manifest_root, tree_entries, tree_root
from lanspreadd.core.signedcatalog import (
    catalog_object,
    fingerprint,
    key_text,
    parse_key,
    parse_signed,
    sign_catalog,
)
from lanspreadd.errors import CatalogError, CorruptData
from lanspreadd.protocol.messages import FileEntry

PIN = Pin(manifest="a" * 64, chunk_size=4 << 20, tree="b" * 64)
GAMES = {
    "quake": CatalogGame("quake", "Quake", "Into the slipgate", 300 << 20, "1.06", "FPS", 16, PIN),
    "doom-2": CatalogGame("doom-2", "Doom II", "Hell on Earth", 20 << 20, "1.9"),
}


def test_a_signed_catalog_reads_back_as_it_was_signed() -> None:
    key = Ed25519PrivateKey.generate()
    document = sign_catalog(catalog_object(3, GAMES), key)
    signed = parse_signed(document, frozenset({key.public_key().public_bytes_raw()}))
    assert signed.revision == 3
    assert signed.games == GAMES
    assert signed.signer_fingerprint == fingerprint(key.public_key().public_bytes_raw())
    # Whitespace and key order in the file do not matter: the canonical form is signed.
    pretty = json.dumps(json.loads(document), indent=4).encode()
    assert parse_signed(pretty).games == GAMES


def test_forged_and_foreign_catalogs_are_refused_by_name() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = frozenset({key.public_key().public_bytes_raw()})
    document = json.loads(sign_catalog(catalog_object(3, GAMES), key))
    document["catalog"]["games"]["quake"]["version"] = "6.66"
    with pytest.raises(CatalogError, match="signature does not verify"):
        parse_signed(json.dumps(document).encode(), trusted)
    foreign = sign_catalog(catalog_object(4, GAMES), other)
    with pytest.raises(CatalogError, match="which is not trusted"):
        parse_signed(foreign, trusted)
    del document["signature"]
    with pytest.raises(CatalogError, match="not signed"):
        parse_signed(json.dumps(document).encode(), trusted)
    with pytest.raises(CatalogError, match="not JSON"):
        parse_signed(b"\xff{", trusted)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"revision": 0}, "revision"),
        ({"format": 2}, "format"),
        ({"games": {"../etc": {"name": "x", "version": "1"}}}, "invalid game id"),
        ({"games": {"x": {"name": "", "version": "1"}}}, "'name'"),
        ({"games": {"x": {"name": "X", "version": "1", "size": -1}}}, "'size'"),
        ({"games": {"x": {"name": "X\x1b[2J", "version": "1"}}}, "unprintable"),
        ({"games": {"x": {"name": "X", "version": "1" * 65}}}, "'version'"),
        ({"games": {"x": {"name": "X", "version": " 1.0"}}}, "spaces"),
        ({"games": {"x": {"name": "X", "version": "1", "pin": {"manifest": "zz"}}}}, "pin"),
    ],
)
def test_every_field_is_checked(change: dict[str, object], message: str) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(CatalogError, match=message):
        sign_catalog(catalog_object(1, GAMES) | change, key)


def test_keys_are_text_people_can_paste() -> None:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert parse_key(key_text(raw)) == raw
    assert parse_key(key_text(raw).removeprefix("ed25519:")) == raw
    with pytest.raises(CatalogError, match="not an Ed25519 public key"):
        parse_key("ed25519:" + "A" * 100_000)


def test_manifest_and_tree_roots_depend_on_content_not_order(tmp_path: Path) -> None:
    files = [FileEntry("game.rar", 5, ("h1", "h2")), FileEntry("version.ini", 3, ("h3",))]
    root = manifest_root(4 << 20, files)
    assert manifest_root(4 << 20, reversed(files)) == root
    assert manifest_root(1 << 20, files) != root  # the chunk size is part of the pin
    assert manifest_root(4 << 20, [files[0], FileEntry("version.ini", 3, ("h4",))]) != root

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "game").write_bytes(b"\x7fELF")
    (tmp_path / "README").write_text("hi")
    (tmp_path / "run").symlink_to("bin/game")
    before = tree_root(tree_entries(tmp_path))
    (tmp_path / "bin" / "game").write_bytes(b"\x7fELG")
    assert tree_root(tree_entries(tmp_path)) != before


def test_a_tree_that_is_not_the_pinned_one_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "game").write_bytes(b"honest")
    pinned = tree_root(tree_entries(tmp_path))
    check_tree(tmp_path, pinned, "alpha")
    (tmp_path / "trojan").write_bytes(b"#!/bin/sh")
    with pytest.raises(CorruptData, match="the files mallory sent are not the content"):
        check_tree(tmp_path, pinned, "mallory")
