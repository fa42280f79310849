"""Length-prefixed frames: u32 payload length, u8 type, JSON payload; bounded per type."""

from __future__ import annotations

import json
import struct

from lanspreadd.protocol.errors import RemoteProtocolError
from lanspreadd.protocol.messages import MESSAGE_TYPES, Message

HEADER = struct.Struct("!IB")


def encode(message: Message) -> bytes:
    payload = json.dumps(message.to_json(), separators=(",", ":")).encode()
    if len(payload) > message.MAX_SIZE:
        raise ValueError(f"{type(message).__name__} of {len(payload)} bytes exceeds its bound")
    return HEADER.pack(len(payload), message.TYPE) + payload


class FrameDecoder:
    """Feed bytes in, take whole messages out; a bad frame raises RemoteProtocolError."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= HEADER.size:
            length, kind = HEADER.unpack_from(self._buffer)
            cls = MESSAGE_TYPES.get(kind)
            if cls is None:
                raise RemoteProtocolError(f"unknown frame type {kind}")
            if length > cls.MAX_SIZE:
                raise RemoteProtocolError(
                    f"{cls.__name__} frame of {length} bytes exceeds {cls.MAX_SIZE}"
                )
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            try:
                data_obj = json.loads(payload)
            except (ValueError, RecursionError) as exc:
                raise RemoteProtocolError(f"{cls.__name__} frame is not JSON") from exc
            if not isinstance(data_obj, dict):
                raise RemoteProtocolError(f"{cls.__name__} frame must be a JSON object")
            messages.append(cls.from_json(data_obj))
        return messages
