"""A download's pure parts: the chunk plan, the majority file list and its checks."""

from __future__ import annotations

import pytest

from lanspreadd.core.plan import (
    MAX_CORRUPT,
    Chunk,
    DownloadPlan,
    fingerprint,
    majority,
    validate_file_list,
)
from lanspreadd.errors import InvalidArgument
from lanspreadd.protocol.messages import FileEntry, FileList

SIZE = 10  # bytes per chunk, to keep the arithmetic visible


def plan(*sizes: int, verified: tuple[tuple[int, int], ...] = ()) -> DownloadPlan:
    files = tuple(
        FileEntry(f"f{i}", size, tuple("h" for _ in range(max(1, -(-size // SIZE)))))
        for i, size in enumerate(sizes)
    )
    return DownloadPlan(files, SIZE, verified)


def drain(p: DownloadPlan, source: str) -> list[Chunk]:
    taken = []
    while (chunk := p.next_for(source)) is not None:
        taken.append(chunk)
    return taken


def test_every_chunk_is_handed_out_once_with_its_length() -> None:
    p = plan(25, 10)
    p.add_source("a")
    p.add_source("b")
    first = p.next_for("a")
    second = p.next_for("b")
    rest = drain(p, "a")
    chunks = [first, second, *rest]
    assert [(c.file_index, c.index, c.offset, c.length) for c in chunks if c] == [
        (0, 0, 0, 10),
        (0, 1, 10, 10),
        (0, 2, 20, 5),
        (1, 0, 0, 10),
    ]
    assert not p.finished, "chunks in flight are not done"
    for chunk in chunks:
        assert chunk is not None
        p.completed(chunk)
    assert p.finished
    assert p.bytes_done == p.total_bytes == 35


def test_a_resumed_plan_skips_verified_chunks() -> None:
    p = plan(30, verified=((0, 1),))
    p.add_source("a")
    assert [c.index for c in drain(p, "a")] == [0, 2]
    assert p.bytes_done == 10


def test_an_unknown_or_dropped_source_gets_nothing() -> None:
    p = plan(30)
    assert p.next_for("stranger") is None
    p.add_source("a")
    p.source_lost("a")
    assert p.next_for("a") is None


def test_a_corrupt_chunk_goes_to_another_source_first() -> None:
    p = plan(30)
    p.add_source("liar")
    p.add_source("honest")
    chunk = p.next_for("liar")
    assert chunk is not None
    assert p.corrupt(chunk, "liar") is False
    # The liar never gets that chunk again; the honest source gets it next.
    assert chunk not in drain(p, "liar")
    assert p.next_for("honest") == chunk


def test_repeated_corruption_drops_the_source_and_requeues_its_chunks() -> None:
    p = plan(40)
    p.add_source("liar")
    p.add_source("honest")
    taken = [p.next_for("liar") for _ in range(MAX_CORRUPT + 1)]
    assert all(taken)
    for chunk in taken[:MAX_CORRUPT]:
        assert chunk is not None
        dropped = p.corrupt(chunk, "liar")
    assert dropped is True
    assert "liar" not in p.sources
    # Everything the liar held, including the chunk it never answered, is back.
    again = drain(p, "honest")
    assert sorted(c.index for c in again) == [0, 1, 2, 3]


def test_a_lost_source_hands_its_chunks_back() -> None:
    p = plan(30)
    p.add_source("a")
    p.add_source("b")
    held = p.next_for("a")
    p.source_lost("a")
    assert p.next_for("b") == held


def test_a_chunk_no_remaining_source_may_send_is_reported() -> None:
    p = plan(10)
    p.add_source("a")
    chunk = p.next_for("a")
    assert chunk is not None
    assert p.unobtainable() is None
    p.corrupt(chunk, "a")
    p.add_source("b")
    assert p.unobtainable() is None, "b may still send it"
    again = p.next_for("b")
    assert again == chunk
    p.corrupt(chunk, "b")
    assert p.unobtainable() == chunk


def test_a_late_completion_after_a_requeue_is_not_counted_twice() -> None:
    p = plan(10)
    p.add_source("a")
    p.add_source("b")
    chunk = p.next_for("a")
    assert chunk is not None
    p.source_lost("a")
    p.completed(chunk)  # the lost source's answer arrives after all
    assert p.bytes_done == 0
    again = p.next_for("b")
    assert again == chunk
    p.completed(chunk)
    assert p.bytes_done == 10
    assert p.finished


def listing(*files: tuple[str, int]) -> FileList:
    entries = tuple(FileEntry(path, size, ("h" * 64,)) for path, size in files)
    return FileList(1, "g", "1.0", SIZE, entries, b"t" * 32)


def test_the_majority_file_list_wins_and_a_tie_is_no_majority() -> None:
    honest = listing(("g.rar", 9), ("version.ini", 4))
    liar = listing(("g.rar", 99), ("version.ini", 4))
    found = majority({"a": honest, "b": liar, "c": honest})
    assert found == (fingerprint(honest), ["a", "c"])
    assert majority({"a": honest, "b": liar}) is None
    other = listing(("g.rar", 7), ("version.ini", 4))
    assert majority({"a": honest, "b": liar, "c": other, "d": honest}) == (
        fingerprint(honest),
        ["a", "d"],
    )
    assert majority({"a": honest, "b": liar, "c": other, "d": honest, "e": liar}) is None


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ((("g.rar", 9),), "version.ini"),
        ((("g.rar", 9), ("version.ini", 1 << 20)), "version.ini"),
        ((("g.rar", 9), ("g.rar", 9), ("version.ini", 4)), "twice"),
        ((("../escape", 9), ("version.ini", 4)), "escape"),
        ((("local/game.exe", 9), ("version.ini", 4)), "local"),
    ],
)
def test_unusable_file_lists_are_refused(files: tuple[tuple[str, int], ...], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        validate_file_list(listing(*files))
