"""A download's pure parts: the chunk plan, the majority file list and its checks."""

from __future__ import annotations

import random

import pytest

from lanspreadd.core.plan import (
    END_GAME_FETCHERS,
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


def plan(
    *sizes: int, verified: tuple[tuple[int, int], ...] = (), seed: int | None = None
) -> DownloadPlan:
    """Chunks come in an order shuffled per plan, as in a download: tests assert what is
    handed out, not when, unless they fix the seed."""
    files = tuple(
        FileEntry(f"f{i}", size, tuple("h" for _ in range(max(1, -(-size // SIZE)))))
        for i, size in enumerate(sizes)
    )
    return DownloadPlan(files, SIZE, verified, random.Random(seed))


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
    rest = [p.next_for("a") for _ in range(len(p.pending))]  # up to the end game
    assert not p.pending
    chunks = [first, second, *rest]
    assert sorted((c.file_index, c.index, c.offset, c.length) for c in chunks if c) == [
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
    assert sorted(c.index for c in drain(p, "a")) == [0, 2]
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
    assert p.next_for("liar") is None, "not even in the end game"


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
    assert held is not None
    p.source_lost("a")
    rest = drain(p, "b")
    assert held in rest
    assert sorted(c.index for c in rest) == [0, 1, 2]


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
    assert p.completed(chunk) is False  # the lost source's answer arrives after all
    assert p.bytes_done == 0
    again = p.next_for("b")
    assert again == chunk
    assert p.completed(chunk) is True
    assert p.bytes_done == 10
    assert p.finished


def test_a_partial_source_is_handed_only_the_chunks_it_holds() -> None:
    p = plan(50)
    p.add_source("partial", held=[(0, 1), (0, 3)])
    assert sorted(c.index for c in drain(p, "partial")) == [1, 3]
    assert len(p.pending) == 3, "the rest waits for a source that holds it"
    p.add_held("partial", [(0, 4)])
    again = p.next_for("partial")
    assert again is not None and again.index == 4
    assert p.next_for("partial") is None


@pytest.mark.parametrize("seed", range(8))
def test_the_rarest_chunk_goes_first(seed: int) -> None:
    """Copies spread: what fewer sources can send is asked for before what many hold."""
    p = plan(200, seed=seed)
    p.add_source("complete")
    p.add_source("p1", held=[(0, i) for i in range(16)])
    p.add_source("p2", held=[*((0, i) for i in range(10)), (0, 16)])
    first = p.next_for("complete")
    assert first is not None and first.index in (17, 18, 19), "no partial source holds it"
    from_p2 = p.next_for("p2")
    assert from_p2 is not None and from_p2.index == 16, "only p2 holds it"
    from_p1 = p.next_for("p1")
    assert from_p1 is not None and 10 <= from_p1.index < 16, "p2 lacks it"


def test_plans_break_ties_in_their_own_order() -> None:
    """Receivers that start together ask for different chunks first."""

    def first(seed: int) -> Chunk | None:
        p = plan(640, seed=seed)
        p.add_source("a")
        return p.next_for("a")

    assert first(1) != first(2)
    assert first(1) == first(1), "an injected generator gives a reproducible order"
    assert len({first(seed) for seed in range(8)}) > 1


def test_the_end_game_asks_a_second_source_for_a_chunk_in_flight() -> None:
    p = plan(20)
    sources = [f"s{i}" for i in range(END_GAME_FETCHERS + 1)]
    for source in sources:
        p.add_source(source)
    slow = drain(p, "s0")
    assert len(slow) == 2
    # Nothing is pending: each idle source takes a chunk s0 is still fetching, never one
    # it is fetching itself.
    duplicates = [p.next_for(s) for s in sources[1:] for _ in slow]
    assert sorted(c.index for c in duplicates if c) == sorted(
        c.index for c in slow for _ in range(END_GAME_FETCHERS - 1)
    )
    assert all(len(p.in_flight[c]) == END_GAME_FETCHERS for c in slow)
    assert p.next_for("s0") is None
    p.add_source("late")
    assert p.next_for("late") is None, f"at most {END_GAME_FETCHERS} fetchers a chunk"
    assert all(p.completed(chunk) for chunk in slow)
    assert p.bytes_done == 20 and p.finished
    for chunk in slow:
        assert p.completed(chunk) is False  # the slower copy arrives too
        p.released(chunk, "s1")
    assert p.bytes_done == 20 and p.finished and not p.pending


def test_the_end_game_waits_until_nothing_is_pending() -> None:
    p = plan(20)
    p.add_source("a")
    p.add_source("b")
    taken = p.next_for("a")
    other = p.next_for("b")
    assert taken is not None and other is not None and taken != other
    # A partial source that holds only a chunk in flight waits while another is pending.
    p = plan(20)
    p.add_source("complete")
    taken = p.next_for("complete")
    assert taken is not None
    p.add_source("partial", held=[taken.key])
    assert p.next_for("partial") is None
    assert p.next_for("complete") is not None
    assert p.next_for("partial") == taken


def test_a_release_requeues_only_when_no_other_fetcher_remains() -> None:
    p = plan(10)
    p.add_source("a")
    p.add_source("b")
    chunk = p.next_for("a")
    assert chunk is not None and p.next_for("b") == chunk  # the end game
    p.released(chunk, "a")  # busy: no blame
    assert chunk not in p.pending and p.in_flight[chunk] == {"b"}
    p.released(chunk, "a")  # twice, or from a source not fetching it: nothing
    p.released(chunk, "stranger")
    assert p.in_flight[chunk] == {"b"}
    p.released(chunk, "b")
    assert list(p.pending) == [chunk] and chunk not in p.in_flight
    assert not p.corrupt_count
    assert p.next_for("a") == chunk, "a release is no exclusion"
    assert p.in_flight[chunk] == {"a"}


def test_a_corrupt_chunk_from_a_partial_holder_is_requeued_for_others() -> None:
    p = plan(20)
    p.add_source("partial", held=[(0, 0), (0, 1)])
    chunk = p.next_for("partial")
    assert chunk is not None
    assert p.corrupt(chunk, "partial") is False
    assert chunk in p.pending
    rest = p.next_for("partial")
    assert rest is not None and rest != chunk
    assert p.next_for("partial") is None, "never the chunk it sent corrupt"
    p.add_source("complete")
    assert p.next_for("complete") == chunk


def test_unobtainable_counts_only_the_sources_that_hold_the_chunk() -> None:
    p = plan(10)
    p.add_source("complete")
    p.add_source("lacks-it", held=[])
    chunk = p.next_for("complete")
    assert chunk is not None
    p.corrupt(chunk, "complete")
    assert p.unobtainable() == chunk, "a source without the chunk cannot send it"
    p.add_source("holder", held=[chunk.key])
    assert p.unobtainable() is None, "the new holder may still send it"
    assert p.next_for("holder") == chunk
    p.corrupt(chunk, "holder")
    assert p.unobtainable() == chunk


def test_missing_names_a_chunk_no_remaining_source_holds() -> None:
    p = plan(20)
    p.add_source("p1", held=[(0, 0)])
    p.add_source("p2", held=[(0, 0)])
    missing = p.missing()
    assert missing is not None and missing.key == (0, 1)
    p.add_source("complete")
    assert p.missing() is None, "a complete source holds everything"
    p.source_lost("complete")
    assert p.missing() == missing
    p.add_held("p2", [(0, 1)])
    assert p.missing() is None


def test_a_lost_partial_source_no_longer_counts_as_a_copy() -> None:
    p = plan(20)
    p.add_source("complete")
    p.add_source("x1", held=[(0, 0)])
    p.add_source("x2", held=[(0, 0)])
    for source in ("y1", "y2", "y3"):
        p.add_source(source, held=[(0, 1)])
    first = p.next_for("complete")
    assert first is not None and first.key == (0, 0), "two copies against three"
    p.released(first, "complete")
    p.source_lost("y1")
    p.source_lost("y2")
    again = p.next_for("complete")
    assert again is not None and again.key == (0, 1), "now one copy against two"
    assert p.copies[(0, 1)] == 1


def test_a_partial_source_added_again_counts_once() -> None:
    """A fresh ChunkMap from a peer already in the plan (it reconnected) counts its chunks
    once: counting them twice hid them from `missing` once it left."""
    p = plan(10)
    p.add_source("p1", held=[(0, 0)])
    p.add_source("p1", held=[(0, 0)])
    assert p.copies[(0, 0)] == 1
    p.add_source("p2", held=[])
    p.source_lost("p1")
    missing = p.missing()
    assert missing is not None and missing.key == (0, 0)


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


def test_a_complete_source_is_kept_for_chunks_no_partial_holder_has() -> None:
    """A flash crowd waits on the source's upload: while partial holders keep us busy,
    it only sends what none of them holds; with nothing in flight it sends anything."""
    p = plan(30)
    p.add_source("complete")
    p.add_source("partial", held=[(0, 0), (0, 1)])
    taken = p.next_for("partial")
    assert taken is not None
    assert p.next_for("complete") == Chunk(0, 2, 20, 10), "the chunk no partial holder has"
    assert p.next_for("complete") is None, "the rest is held by a partial holder"
    p.completed(taken)
    p.completed(Chunk(0, 2, 20, 10))
    assert p.next_for("complete") is not None, "nothing in flight: the source helps"
