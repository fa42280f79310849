"""The catalog file: read and verified, changed under a lock, re-signed, replaced atomically.

A change reads the signed file, refuses any key but its signer's, applies the edit,
bumps the revision and writes the new document in place of the old in one rename, so a
reader (a daemon, `lanspreadctl catalog publish`, a second organiser command) sees the
old catalog or the new one. Two commands changing the same file wait for each other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanspreadd.core.catalog import CatalogGame, check_game_id
from lanspreadd.core.escape import echoed
from lanspreadd.core.install import atomic_write
from lanspreadd.core.library import parse_version_ini
from lanspreadd.core.signedcatalog import (
    MAX_DOCUMENT,
    MAX_TEXT,
    SignedCatalog,
    catalog_object,
    fingerprint,
    parse_signed,
    sign_catalog,
)
from lanspreadd.errors import (
    CatalogError,
    DiskFull,
    InvalidArgument,
    LanspreadError,
    NotAuthorized,
    NotFound,
)
from lanspreadd.protocol.text import MAX_NAME, first_unprintable

Games = dict[str, CatalogGame]
Edit = Callable[[Games], Games]


def read_catalog(path: Path) -> SignedCatalog:
    """The signed catalog in `path`, its signature verified (by whatever key made it)."""
    try:
        with path.open("rb") as fh:
            document = fh.read(MAX_DOCUMENT + 1)
    except FileNotFoundError:
        raise NotFound(
            f"catalog {path} does not exist (make one with: lanspread-catalog init)"
        ) from None
    except OSError as exc:
        raise file_error(path, exc, "read") from None
    try:
        return parse_signed(document)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None


def create_catalog(path: Path, key: Ed25519PrivateKey, games: Games) -> SignedCatalog:
    """Revision 1 of a new catalog; an existing file is never replaced."""
    for game in games.values():
        check_game(game)
    document = sign_catalog(catalog_object(1, games), key)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    except OSError as exc:
        raise file_error(path, exc, "write") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # the catalog is public; the key is not in it
            fh.write(document)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if the name exists: no check-then-write race
    except FileExistsError:
        raise InvalidArgument(
            f"{path} already exists: change it with add, update, pin or remove"
        ) from None
    except OSError as exc:
        raise file_error(path, exc, "write") from None
    finally:
        os.unlink(tmp)
    return parse_signed(document)


def change_catalog(path: Path, key: Ed25519PrivateKey, edit: Edit) -> SignedCatalog:
    """Apply `edit` to the games of the catalog in `path` as its next revision."""
    with _locked(path):
        current = read_catalog(path)
        check_signer(path, current, key)
        games = edit(dict(current.games))
        for game_id, game in games.items():
            if current.games.get(game_id) != game:
                check_game(game)
        document = sign_catalog(catalog_object(current.revision + 1, games), key)
        try:
            atomic_write(path, document)
        except OSError as exc:
            raise file_error(path, exc, "write") from None
        return parse_signed(document)


def check_signer(path: Path, current: SignedCatalog, key: Ed25519PrivateKey) -> None:
    """Only the key that signed a catalog may sign its next revision: seats trust that key."""
    mine = key.public_key().public_bytes_raw()
    if mine != current.signer:
        raise NotAuthorized(
            f"{path} is signed by key {current.signer_fingerprint}, not by this key "
            f"({fingerprint(mine)}): only the key that signed a catalog may change it"
        )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the catalog file as it is now. A writer replaces the
    file, so a waiter that wakes on the old one opens the new one and locks again."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(
                f"catalog {path} does not exist (make one with: lanspread-catalog init)"
            ) from None
        except OSError as exc:
            raise file_error(path, exc, "open") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                yield
                return
        finally:
            os.close(fd)


def check_game(game: CatalogGame) -> CatalogGame:
    """What an organiser may sign for a game: text every sink shows as it is, and a
    version a `version.ini` can hold and peers can announce."""
    check_game_id(game.id)
    for field, value, limit, required in (
        ("name", game.name, MAX_TEXT, True),
        ("genre", game.genre, MAX_TEXT, False),
        ("description", game.description.replace("\n", " "), MAX_TEXT, False),
        ("version", game.version, MAX_NAME, True),
    ):
        if required and not value.strip():
            raise InvalidArgument(f"game {game.id}: the {field} must not be empty")
        if len(value) > limit:
            raise InvalidArgument(f"game {game.id}: the {field} is over {limit} characters")
        bad = first_unprintable(value)
        if bad is not None:
            raise InvalidArgument(
                f"game {game.id}: the {field} holds the unprintable character U+{ord(bad):04X}"
            )
    if parse_version_ini(game.version) != game.version:
        raise InvalidArgument(
            f"game {game.id}: version {echoed(game.version)!r} cannot be the first line of "
            "a version.ini (no spaces at its ends, no '=', not starting with '[', '#' or ';')"
        )
    if game.size < 0 or game.max_players < 0:
        raise InvalidArgument(f"game {game.id}: size and players must not be negative")
    return game


def file_error(path: Path, exc: OSError, verb: str) -> LanspreadError:
    """An OS error on one of the tool's files, named."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left to {verb} {path}")
    if exc.errno == errno.EISDIR:
        return InvalidArgument(f"{path} is a directory")
    return LanspreadError(f"cannot {verb} {path}: {exc.strerror or exc}")
