"""The bulk data channel's wire format (TCP): token greeting, chunk requests, replies.

Greeting: MAGIC + 32-byte token (issued over the authenticated QUIC session).
Request: u32 file index, u64 offset, u32 length. Reply: u8 status, u32 length,
then that many bytes (file data on OK, a UTF-8 reason otherwise).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.text import MAX_TEXT

MAGIC = b"LSD1"
TOKEN_LEN = 32
GREETING_LEN = len(MAGIC) + TOKEN_LEN
REQUEST = struct.Struct("!IQI")
REPLY = struct.Struct("!BI")
MAX_CHUNK = 64 << 20

OK = 0
NOT_SERVABLE = 1
BAD_REQUEST = 2
BUSY = 3  # every upload slot is taken: ask again later; the connection stays open
NOT_HELD = 4  # a peer still downloading does not hold that chunk yet; the connection stays


@dataclass(frozen=True)
class ChunkRequest:
    file_index: int
    offset: int
    length: int


def encode_greeting(token: bytes) -> bytes:
    if len(token) != TOKEN_LEN:
        raise ValueError("token must be 32 bytes")
    return MAGIC + token


def decode_greeting(data: bytes) -> bytes:
    if len(data) != GREETING_LEN or not data.startswith(MAGIC):
        raise RemoteProtocolError("not a lanspread data channel greeting")
    return data[len(MAGIC) :]


def encode_request(request: ChunkRequest) -> bytes:
    return REQUEST.pack(request.file_index, request.offset, request.length)


def decode_request(data: bytes) -> ChunkRequest:
    file_index, offset, length = REQUEST.unpack(data)
    if not 0 < length <= MAX_CHUNK:
        raise RemoteProtocolError(f"chunk length {length} is out of range")
    return ChunkRequest(file_index, offset, length)


def encode_reply_header(status: int, length: int) -> bytes:
    return REPLY.pack(status, length)


def decode_reply_header(data: bytes, requested: int) -> tuple[int, int]:
    status, length = REPLY.unpack(data)
    if status == OK and length != requested:
        raise RemoteProtocolError(f"peer answered {length} bytes for a {requested}-byte chunk")
    if status != OK and length > MAX_TEXT:
        raise RemoteProtocolError("error reason too long")
    return status, length
