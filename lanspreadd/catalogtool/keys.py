"""The organiser's Ed25519 key file: made once, read by every command that signs."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanspreadd.catalogtool.document import file_error
from lanspreadd.errors import InvalidArgument, NotFound

MAX_KEY_FILE = 64 << 10  # a PEM Ed25519 key is 119 bytes; anything this big is not one


def create_key(path: Path) -> Ed25519PrivateKey:
    """A new key in a new file, 0600: an existing file is never overwritten (it may be
    the only copy of the key every seat trusts)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise InvalidArgument(
            f"{path} already exists: lanspread-catalog never overwrites a key file"
        ) from None
    except OSError as exc:
        raise file_error(path, exc, "create key file") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key


def load_key(path: Path) -> Ed25519PrivateKey:
    """The private key in `path` (PEM, PKCS8, unencrypted), or a named error."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"key file {path} does not exist") from None
    except OSError as exc:
        raise file_error(path, exc, "read key file") from None
    try:
        if len(data) > MAX_KEY_FILE:
            raise ValueError("too big")
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidArgument(
            f"key file {path} is encrypted; lanspread-catalog reads unencrypted keys "
            "(keep the file on the organiser's machine, mode 0600)"
        ) from None
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(
            f"{path} is not an Ed25519 private key in PEM "
            "(make one with: lanspread-catalog keygen KEYFILE)"
        )
    return key
