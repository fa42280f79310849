"""Protocol messages as frozen dataclasses, each with a strict JSON schema."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.text import MAX_NAME, MAX_TEXT, check_peer_id, check_text, printable

MAX_GAMES = 10_000
MAX_FILES = 10_000
MAX_CHUNKS_PER_FILE = 1 << 20
MAX_PATH = 4096
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The organiser's signed catalog (core.signedcatalog.MAX_DOCUMENT, kept equal by a test)
# travels whole in one frame: base64 of it, and a few fields, fit CatalogDocument.MAX_SIZE.
MAX_CATALOG = 8 << 20
KEY_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise RemoteProtocolError(f"missing field {key!r}")
    value: Any = data[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RemoteProtocolError(f"field {key!r} must be an integer")
    if not isinstance(value, kind):
        raise RemoteProtocolError(f"field {key!r} must be {kind.__name__}")
    if isinstance(value, int) and not 0 <= value < 1 << 63:
        raise RemoteProtocolError(f"field {key!r} is out of range")
    return value


def _str(data: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    """A string field: bounded and printable (see `text`), else refused."""
    value: str = _field(data, key, str)
    return check_text(value, key, limit)


def _b64(data: dict[str, Any], key: str, limit: int) -> bytes:
    text = _field(data, key, str)
    if len(text) > 2 * limit:
        raise RemoteProtocolError(f"field {key!r} is too long")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteProtocolError(f"field {key!r} is not base64") from exc
    if len(raw) > limit:
        raise RemoteProtocolError(f"field {key!r} is too long")
    return raw


def _versions(data: dict[str, Any], key: str) -> dict[str, str]:
    games = _field(data, key, dict)
    if len(games) > MAX_GAMES:
        raise RemoteProtocolError(f"field {key!r} lists too many games")
    for game_id, version in games.items():
        if not isinstance(version, str):
            raise RemoteProtocolError(f"field {key!r} has a bad entry")
        check_text(game_id, f"{key} id", MAX_NAME)
        check_text(version, f"{key} version", MAX_NAME)
    return dict(games)


def _text(value: str) -> str:
    return printable(value, MAX_TEXT)


class Message:
    TYPE: ClassVar[int]
    MAX_SIZE: ClassVar[int] = 4096

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    TYPE = 1
    MAX_SIZE = 8192
    version: int
    peer_id: str
    name: str
    data_port: int
    cert: bytes
    challenge: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "peer_id": self.peer_id,
            "name": self.name,
            "data_port": self.data_port,
            "cert": base64.b64encode(self.cert).decode(),
            "challenge": base64.b64encode(self.challenge).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hello:
        port = _field(data, "data_port", int)
        if not 0 < port < 65536:
            raise RemoteProtocolError("data_port is out of range")
        challenge = _b64(data, "challenge", 64)
        if len(challenge) < 16:
            raise RemoteProtocolError("challenge is too short")
        return cls(
            version=_field(data, "version", int),
            peer_id=check_peer_id(_field(data, "peer_id", str)),
            name=_str(data, "name", MAX_NAME),
            data_port=port,
            cert=_b64(data, "cert", 4096),
            challenge=challenge,
        )


@dataclass(frozen=True)
class Auth(Message):
    TYPE = 2
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"signature": base64.b64encode(self.signature).decode()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Auth:
        return cls(signature=_b64(data, "signature", 512))


@dataclass(frozen=True)
class Refuse(Message):
    TYPE = 3
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": _text(self.reason)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refuse:
        return cls(reason=_str(data, "reason"))


@dataclass(frozen=True)
class Snapshot(Message):
    """The games this peer serves right now, with their versions."""

    TYPE = 4
    MAX_SIZE = 1 << 20
    games: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"games": self.games}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(games=_versions(data, "games"))


@dataclass(frozen=True)
class Delta(Message):
    TYPE = 5
    MAX_SIZE = 1 << 20
    changed: dict[str, str]
    removed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"changed": self.changed, "removed": list(self.removed)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delta:
        removed = _field(data, "removed", list)
        if len(removed) > MAX_GAMES or not all(isinstance(g, str) for g in removed):
            raise RemoteProtocolError("field 'removed' has a bad entry")
        for game_id in removed:
            check_text(game_id, "removed", MAX_NAME)
        return cls(changed=_versions(data, "changed"), removed=tuple(removed))


@dataclass(frozen=True)
class GameRequest(Message):
    """A request about one game at one version; the type says what is asked."""

    request_id: int
    game_id: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "game_id": self.game_id, "version": self.version}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GameRequest:
        return cls(
            request_id=_field(data, "request_id", int),
            game_id=_str(data, "game_id", MAX_NAME),
            version=_str(data, "version", MAX_NAME),
        )


@dataclass(frozen=True)
class FileListRequest(GameRequest):
    TYPE = 6


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    hashes: tuple[str, ...]


@dataclass(frozen=True)
class FileList(Message):
    """A game's files with per-chunk SHA-256, and a token for the bulk data channel."""

    TYPE = 7
    MAX_SIZE = 16 << 20
    request_id: int
    game_id: str
    version: str
    chunk_size: int
    files: tuple[FileEntry, ...]
    token: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "game_id": self.game_id,
            "version": self.version,
            "chunk_size": self.chunk_size,
            "files": [
                {"path": f.path, "size": f.size, "hashes": list(f.hashes)} for f in self.files
            ],
            "token": base64.b64encode(self.token).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileList:
        chunk_size = _field(data, "chunk_size", int)
        if not 64 * 1024 <= chunk_size <= 64 << 20:
            raise RemoteProtocolError("chunk_size is out of range")
        raw_files = _field(data, "files", list)
        if len(raw_files) > MAX_FILES:
            raise RemoteProtocolError("too many files")
        files = []
        for item in raw_files:
            if not isinstance(item, dict):
                raise RemoteProtocolError("file entries must be objects")
            size = _field(item, "size", int)
            hashes = _field(item, "hashes", list)
            expected = max(1, -(-size // chunk_size))
            if len(hashes) != expected or len(hashes) > MAX_CHUNKS_PER_FILE:
                raise RemoteProtocolError("a file's chunk hashes do not match its size")
            if not all(isinstance(h, str) and SHA256_HEX.fullmatch(h) for h in hashes):
                raise RemoteProtocolError("chunk hashes must be SHA-256 hex digests")
            files.append(FileEntry(_str(item, "path", MAX_PATH), size, tuple(hashes)))
        token = _b64(data, "token", 64)
        return cls(
            request_id=_field(data, "request_id", int),
            game_id=_str(data, "game_id", MAX_NAME),
            version=_str(data, "version", MAX_NAME),
            chunk_size=chunk_size,
            files=tuple(files),
            token=token,
        )


@dataclass(frozen=True)
class ErrorReply(Message):
    TYPE = 8
    request_id: int
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "code": self.code, "message": _text(self.message)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorReply:
        return cls(
            request_id=_field(data, "request_id", int),
            code=_str(data, "code", MAX_NAME),
            message=_str(data, "message"),
        )


@dataclass(frozen=True)
class Ping(Message):
    """Liveness, from the side that dialled; `every` is the seconds until its next ping
    (slower on an idle connection), so that the other side knows when to give up."""

    TYPE = 9
    MAX_EVERY = 600
    nonce: int
    every: int = 5

    def to_json(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "every": self.every}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ping:
        every = _field(data, "every", int) if "every" in data else 5
        if not 1 <= every <= cls.MAX_EVERY:
            raise RemoteProtocolError(f"field 'every' must be 1-{cls.MAX_EVERY} seconds")
        return cls(nonce=_field(data, "nonce", int), every=every)


@dataclass(frozen=True)
class Pong(Message):
    TYPE = 10
    nonce: int

    def to_json(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pong:
        return cls(nonce=_field(data, "nonce", int))


@dataclass(frozen=True)
class Goodbye(Message):
    TYPE = 11
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": _text(self.reason)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Goodbye:
        return cls(reason=_str(data, "reason"))


@dataclass(frozen=True)
class StreamInstallRequest(GameRequest):
    TYPE = 12


@dataclass(frozen=True)
class StreamInstallGrant(Message):
    """Permission to pull one game's installed tree over the data channel."""

    TYPE = 13
    request_id: int
    total_bytes: int
    token: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "total_bytes": self.total_bytes,
            "token": base64.b64encode(self.token).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamInstallGrant:
        return cls(
            request_id=_field(data, "request_id", int),
            total_bytes=_field(data, "total_bytes", int),
            token=_b64(data, "token", 64),
        )


@dataclass(frozen=True)
class CatalogAnnounce(Message):
    """Which catalog this peer uses: after the handshake and whenever it adopts one.

    `signer` is the fingerprint of the organiser key that signed it, "" (and revision
    0) for a catalog nobody signed."""

    TYPE = 14
    revision: int
    signer: str

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "signer": self.signer}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CatalogAnnounce:
        signer = _field(data, "signer", str)
        if signer and not KEY_FINGERPRINT.fullmatch(signer):
            raise RemoteProtocolError("field 'signer' is not a key fingerprint")
        return cls(revision=_field(data, "revision", int), signer=signer)


@dataclass(frozen=True)
class CatalogRequest(Message):
    """Ask a peer for its signed catalog, at `revision` (the one it announced) or newer."""

    TYPE = 15
    request_id: int
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "revision": self.revision}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CatalogRequest:
        return cls(
            request_id=_field(data, "request_id", int), revision=_field(data, "revision", int)
        )


@dataclass(frozen=True)
class CatalogDocument(Message):
    """A signed catalog, as its organiser signed it: the receiver verifies it itself."""

    TYPE = 16
    MAX_SIZE = 4 * MAX_CATALOG // 3 + 4096
    request_id: int
    document: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "document": base64.b64encode(self.document).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CatalogDocument:
        return cls(
            request_id=_field(data, "request_id", int),
            document=_b64(data, "document", MAX_CATALOG),
        )


MAX_BITFIELD = 1 << 20  # bytes: 8 Mi chunks, 32 TiB of game at 4 MiB chunks
MAX_DELTA = 4096  # chunk numbers in one ChunkDelta


@dataclass(frozen=True)
class ChunkMap(Message):
    """Which chunks of a game's file list this peer holds verified while downloading it.

    Bit i (most significant bit first) is chunk i in canonical order: the file list's
    files sorted by path, each file's chunks in order (`core.held`). Sent when a download
    starts serving and to every peer that connects; `chunks` 0 withdraws the map."""

    TYPE = 17
    MAX_SIZE = 4 * MAX_BITFIELD // 3 + 4096
    game_id: str
    version: str
    fingerprint: str
    chunks: int
    bits: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "game_id": self.game_id,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "chunks": self.chunks,
            "bits": base64.b64encode(self.bits).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkMap:
        fingerprint = _field(data, "fingerprint", str)
        chunks = _field(data, "chunks", int)
        if (fingerprint or chunks) and not SHA256_HEX.fullmatch(fingerprint):
            raise RemoteProtocolError("field 'fingerprint' is not a file list root")
        bits = _b64(data, "bits", MAX_BITFIELD)
        if len(bits) != (chunks + 7) // 8:
            raise RemoteProtocolError(f"a map of {chunks} chunks cannot have {len(bits)} bytes")
        if chunks % 8 and bits[-1] & (0xFF >> (chunks % 8)):
            raise RemoteProtocolError("the map sets bits past its last chunk")
        return cls(
            game_id=_str(data, "game_id", MAX_NAME),
            version=_str(data, "version", MAX_NAME),
            fingerprint=fingerprint,
            chunks=chunks,
            bits=bits,
        )


@dataclass(frozen=True)
class ChunkDelta(Message):
    """Chunks newly verified since the last map or delta, sent a few times a second."""

    TYPE = 18
    MAX_SIZE = 16 * MAX_DELTA + 4096
    game_id: str
    fingerprint: str
    added: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"game_id": self.game_id, "fingerprint": self.fingerprint, "added": self.added}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkDelta:
        fingerprint = _field(data, "fingerprint", str)
        if not SHA256_HEX.fullmatch(fingerprint):
            raise RemoteProtocolError("field 'fingerprint' is not a file list root")
        added = _field(data, "added", list)
        if len(added) > MAX_DELTA or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 8 * MAX_BITFIELD
            for n in added
        ):
            raise RemoteProtocolError("field 'added' must be at most 4096 chunk numbers")
        return cls(
            game_id=_str(data, "game_id", MAX_NAME), fingerprint=fingerprint, added=tuple(added)
        )


MAX_EXCHANGED = 32  # peers in one PeerExchange
MAX_EXCHANGED_GAMES = 16  # games named per exchanged peer


@dataclass(frozen=True)
class ExchangedPeer:
    peer_id: str
    host: str
    port: int
    games: tuple[str, ...]  # what it serves or downloads, of the sender's catalog


@dataclass(frozen=True)
class PeerExchange(Message):
    """Some of the peers the sender is connected to, and what they hold: how a daemon in a
    bounded mesh learns of peers beyond its own connections, and finds a game's holders.
    Sent when a connection starts and, at most every few seconds, when it changed."""

    TYPE = 19
    MAX_SIZE = MAX_EXCHANGED * (MAX_EXCHANGED_GAMES * (MAX_NAME + 4) + 256) + 4096
    peers: tuple[ExchangedPeer, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "peers": [
                {"peer_id": p.peer_id, "host": p.host, "port": p.port, "games": list(p.games)}
                for p in self.peers
            ]
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerExchange:
        entries = _field(data, "peers", list)
        if len(entries) > MAX_EXCHANGED:
            raise RemoteProtocolError(f"field 'peers' lists more than {MAX_EXCHANGED} peers")
        peers = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise RemoteProtocolError("field 'peers' has a bad entry")
            port = _field(entry, "port", int)
            if not 0 < port < 65536:
                raise RemoteProtocolError("an exchanged peer's port is out of range")
            host = _str(entry, "host", 64)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise RemoteProtocolError(
                    f"an exchanged peer's host is not an address: {host!r}"
                ) from None
            games = _field(entry, "games", list)
            if len(games) > MAX_EXCHANGED_GAMES or not all(isinstance(g, str) for g in games):
                raise RemoteProtocolError(
                    f"an exchanged peer names more than {MAX_EXCHANGED_GAMES} games, or not names"
                )
            peers.append(
                ExchangedPeer(
                    check_peer_id(_field(entry, "peer_id", str)),
                    host,
                    port,
                    tuple(check_text(g, "games id", MAX_NAME) for g in games),
                )
            )
        return cls(tuple(peers))


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Auth,
        Refuse,
        Snapshot,
        Delta,
        FileListRequest,
        FileList,
        ErrorReply,
        Ping,
        Pong,
        Goodbye,
        StreamInstallRequest,
        StreamInstallGrant,
        CatalogAnnounce,
        CatalogRequest,
        CatalogDocument,
        ChunkMap,
        ChunkDelta,
        PeerExchange,
    )
}
