"""`lanspreadctl catalog ...`: the organiser's catalog as the daemon holds it, and trust.

The client signs nothing and verifies nothing: `publish` hands the file's bytes to the
daemon, which verifies them against the keys it trusts and passes them on to its peers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lanspreadctl.client import EXIT_OK, EXIT_USAGE, MANAGER_IFACE, ROOT_PATH, Client, ClientError
from lanspreadctl.terminal import escape

if TYPE_CHECKING:
    from lanspreadctl.cli import Output

KEY_PREFIX = "ed25519:"
MAX_DOCUMENT = 8 << 20  # what the daemon accepts (core.signedcatalog.MAX_DOCUMENT)


def key_text(text: str) -> str:
    """A key as the daemon lists it: `ed25519:` and its base64 (the prefix optional here)."""
    text = text.strip()
    return text if text.startswith(KEY_PREFIX) else KEY_PREFIX + text


def fingerprint(key: str) -> str:
    """The key's short name, as the daemon shows a catalog's signer: 16 hex digits of
    the SHA-256 of its 32 bytes; "?" for text that is no key."""
    try:
        raw = base64.b64decode(key.removeprefix(KEY_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return "?"
    return hashlib.sha256(raw).hexdigest()[:16]


def describe(props: dict[str, Any]) -> str:
    """'revision 2, signed by <fingerprint>' or what an unsigned catalog is."""
    if not props.get("CatalogSigner"):
        return "unsigned (no organiser catalog adopted)"
    return f"revision {props['CatalogRevision']}, signed by {props['CatalogSigner']}"


async def catalog_props(client: Client) -> dict[str, Any]:
    return await client.get_all(ROOT_PATH, MANAGER_IFACE)


async def cmd_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    props = await catalog_props(client)
    games = await client.manager("ListGames")
    pinned = sorted(g["Id"] for g in games if g.get("Pinned"))
    keys = props["TrustedKeys"]
    data = {
        "catalog": props["Catalog"],
        "revision": props["CatalogRevision"],
        "signer": props["CatalogSigner"],
        "trusted_keys": keys,
        "games": len(games),
        "pinned": pinned,
    }
    trusted = [f"{k} ({fingerprint(k)})" for k in keys] or ["none: this machine keeps its catalog"]
    text = "\n".join(
        [
            f"catalog:  {escape(props['Catalog'])} ({len(games)} games)",
            f"revision: {describe(props)}",
            "trusted:  " + "\n          ".join(trusted),
            f"pinned:   {', '.join(pinned) or 'none'}",
        ]
    )
    out.emit(data, text)
    return EXIT_OK


async def cmd_trust(client: Client, args: argparse.Namespace, out: Output) -> int:
    key = key_text(args.key)
    before = (await catalog_props(client))["TrustedKeys"]
    await client.manager("TrustKey", "s", key)
    props = await catalog_props(client)
    already = key in before
    verb = "was already trusted" if already else "is trusted from now on"
    out.emit(
        {"key": key, "fingerprint": fingerprint(key), "added": not already}
        | {"revision": props["CatalogRevision"], "signer": props["CatalogSigner"]},
        f"key {fingerprint(key)} {verb}; catalog in use: {describe(props)}",
    )
    return EXIT_OK


async def cmd_untrust(client: Client, args: argparse.Namespace, out: Output) -> int:
    key = key_text(args.key)
    await client.manager("UntrustKey", "s", key)
    props = await catalog_props(client)
    still = key in props["TrustedKeys"]
    text = f"key {fingerprint(key)} is no longer trusted"
    if still:
        text = (
            f"key {fingerprint(key)} was removed from the keys trusted here, and stays "
            "trusted by lanspreadd.toml (trusted_keys), which untrust does not change"
        )
    out.emit(
        {"key": key, "still_trusted": still, "revision": props["CatalogRevision"]},
        f"{text}; catalog in use: {describe(props)}",
    )
    return EXIT_OK


def read_document(path: Path) -> bytes:
    """The file's bytes, refused with a usage error when it cannot be a catalog."""
    try:
        with path.open("rb") as fh:
            document = fh.read(MAX_DOCUMENT + 1)
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
    if len(document) > MAX_DOCUMENT:
        raise ClientError(
            f"{path} is larger than a catalog may be ({MAX_DOCUMENT} bytes)", EXIT_USAGE
        )
    return document


async def cmd_publish(client: Client, args: argparse.Namespace, out: Output) -> int:
    document = await asyncio.to_thread(read_document, Path(args.file))
    await client.manager("PublishCatalog", "ay", document)
    props = await catalog_props(client)
    out.emit(
        {"revision": props["CatalogRevision"], "signer": props["CatalogSigner"]},
        f"published: the catalog in use is {describe(props)}; peers that trust its key "
        "will fetch it",
    )
    return EXIT_OK


def add_commands(sub: Any, add_common: Any) -> None:
    """`catalog show|trust|untrust|publish` under the top-level parser's subcommands."""
    catalog = sub.add_parser("catalog", help="the organiser's signed catalog and trusted keys")
    commands = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    add_common(commands, "show", cmd_show, "revision, signer, trusted keys and pinned games")
    add_common(commands, "trust", cmd_trust, "adopt catalogs signed by KEY").add_argument(
        "key", metavar="KEY", help="ed25519:<base64>, as the organiser's tool prints it"
    )
    add_common(
        commands, "untrust", cmd_untrust, "stop trusting KEY (a key trusted with `trust`)"
    ).add_argument("key", metavar="KEY")
    add_common(
        commands, "publish", cmd_publish, "hand a signed catalog to the daemon to adopt and spread"
    ).add_argument("file", metavar="FILE")
