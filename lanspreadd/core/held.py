"""Which chunks of a file list a peer holds, as peers tell each other.

Chunks are numbered in canonical order: the list's files sorted by path, each file's
chunks in order. Two peers with the same file list (the same root hash) number the
same chunk alike whatever order their lists came in. A map is a bitfield over those
numbers, most significant bit first; later chunks come as lists of numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from lanspreadd.protocol.messages import FileEntry

ChunkKey = tuple[int, int]  # (file index, chunk index) in one file list's order


class ChunkNumbers:
    """The canonical numbers of one file list's chunks."""

    def __init__(self, files: tuple[FileEntry, ...]) -> None:
        order = sorted(range(len(files)), key=lambda fi: files[fi].path)
        self.keys: list[ChunkKey] = [
            (fi, ci) for fi in order for ci in range(len(files[fi].hashes))
        ]
        self.number: dict[ChunkKey, int] = {key: n for n, key in enumerate(self.keys)}

    @property
    def count(self) -> int:
        return len(self.keys)

    def bits(self, held: Iterable[ChunkKey]) -> bytes:
        field = bytearray((self.count + 7) // 8)
        for key in held:
            if (n := self.number.get(key)) is not None:
                field[n >> 3] |= 0x80 >> (n & 7)
        return bytes(field)

    def numbers(self, held: Iterable[ChunkKey]) -> list[int]:
        return sorted(self.number[k] for k in held if k in self.number)

    def keys_of(self, numbers: Iterable[int]) -> list[ChunkKey]:
        """The chunks these numbers name; numbers past the list are left out."""
        keys = self.keys
        return [keys[n] for n in numbers if 0 <= n < len(keys)]


def set_bits(field: bytes) -> list[int]:
    """The numbers whose bits are set in `field`."""
    return [
        (i << 3) + b for i, byte in enumerate(field) if byte for b in range(8) if byte & (0x80 >> b)
    ]


class HeldMap:
    """What one peer told us it holds of one game: its map and the deltas since.

    `numbers` lists every held chunk number in the order learnt, so a download can
    take in only what is new since it last looked (`generation` changes when a new map
    replaces the old one and everything must be read again)."""

    def __init__(self, version: str, fingerprint: str, chunks: int, bits: bytes) -> None:
        self.version = version
        self.fingerprint = fingerprint
        self.chunks = chunks
        self.bits = bytearray(bits)
        self.numbers = set_bits(bits)
        self.generation = 0

    def replaced_by(self, newer: HeldMap) -> HeldMap:
        newer.generation = self.generation + 1
        return newer

    def add(self, numbers: Iterable[int]) -> bool:
        """Take in a delta; numbers past the map or already held are ignored. True if
        anything was new."""
        new = False
        for n in numbers:
            if 0 <= n < self.chunks and not self.bits[n >> 3] & (0x80 >> (n & 7)):
                self.bits[n >> 3] |= 0x80 >> (n & 7)
                self.numbers.append(n)
                new = True
        return new
