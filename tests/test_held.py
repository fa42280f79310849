"""Chunk numbers peers use to say which chunks they hold (core.held)."""

from __future__ import annotations

from lanspreadd.core.held import ChunkNumbers, set_bits
from lanspreadd.core.library import VERSION_INI
from lanspreadd.protocol.messages import FileEntry


def entry(path: str, chunks: int) -> FileEntry:
    return FileEntry(path, chunks * 10, tuple("h" * 64 for _ in range(chunks)))


GAME = (entry("b.rar", 3), entry(VERSION_INI, 1), entry("a.rar", 2), entry("c/d.rar", 4))


def named(files: tuple[FileEntry, ...], keys: list[tuple[int, int]]) -> list[tuple[str, int]]:
    return [(files[fi].path, ci) for fi, ci in keys]


def test_peers_number_chunks_alike_whatever_order_their_lists_came_in() -> None:
    shuffled = (GAME[3], GAME[1], GAME[0], GAME[2])
    ours, theirs = ChunkNumbers(GAME), ChunkNumbers(shuffled)
    assert ours.count == theirs.count == 10
    assert named(GAME, ours.keys) == named(shuffled, theirs.keys)
    assert named(GAME, ours.keys)[:6] == [
        ("a.rar", 0),
        ("a.rar", 1),
        ("b.rar", 0),
        ("b.rar", 1),
        ("b.rar", 2),
        ("c/d.rar", 0),
    ]
    # What we hold, sent as a map, names the same chunks in their list.
    held = [(0, 1), (3, 0), (3, 3), (2, 0)]
    received = theirs.keys_of(set_bits(ours.bits(held)))
    assert sorted(named(shuffled, received)) == sorted(named(GAME, held))


def test_bits_and_numbers_round_trip() -> None:
    numbers = ChunkNumbers(GAME)
    held = [(2, 1), (0, 0), (3, 3), (0, 2)]
    field = numbers.bits(held)
    # Most significant bit first: a.rar's chunks are 0 and 1, b.rar's 2 to 4, c/d.rar's
    # 5 to 8; ten chunks fit two bytes.
    assert field == bytes([0b0110_1000, 0b1000_0000])
    assert set_bits(field) == [1, 2, 4, 8]
    assert sorted(numbers.keys_of(set_bits(field))) == sorted(held)
    assert numbers.numbers(held) == [1, 2, 4, 8]
    assert sorted(numbers.keys_of(numbers.numbers(held))) == sorted(held)
    assert numbers.bits([]) == b"\0\0"


def test_version_ini_is_numbered_like_any_file() -> None:
    """A partial holder serves a verified version.ini from memory (it is written last)."""
    numbers = ChunkNumbers(GAME)
    ini = (1, 0)
    assert numbers.numbers([ini, (0, 0)]) == sorted([numbers.number[ini], numbers.number[(0, 0)]])
    assert numbers.keys_of(set_bits(numbers.bits([ini]))) == [ini]


def test_numbers_past_the_end_and_unknown_chunks_are_left_out() -> None:
    numbers = ChunkNumbers(GAME)
    assert numbers.keys_of([0, 10, 11, 1 << 40, -1]) == [(2, 0)]
    assert numbers.numbers([(0, 3), (9, 0), (2, 1)]) == [1]
    assert numbers.bits([(0, 3), (9, 0)]) == b"\0\0"


def test_set_bits() -> None:
    assert set_bits(b"") == []
    assert set_bits(b"\x80\x01") == [0, 15]
    assert set_bits(b"\0\xff\0") == list(range(8, 16))
    assert set_bits(bytes([0b1010_0101])) == [0, 2, 5, 7]
