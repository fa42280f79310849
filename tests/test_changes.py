"""Game-table changes are told a few times a second, and a peer's announcement costs
what it changed: the bookkeeping, in memory, with a fake clock."""

from __future__ import annotations

from pathlib import Path

from lanspreadd.app.changes import PendingChanges
from lanspreadd.core.announced import MAX_UNKNOWN_GAMES, Announced, SourceIndex
from lanspreadd.core.catalog import Catalog, CatalogGame


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pending() -> tuple[PendingChanges, Clock, list[int]]:
    clock = Clock()
    woken: list[int] = []
    return (
        PendingChanges(interval=0.25, clock=clock, on_pending=lambda: woken.append(1)),
        clock,
        woken,
    )


def test_a_lone_change_is_due_at_once() -> None:
    changes, clock, woken = pending()
    assert changes.due() is None
    changes.game("teeworlds")
    assert woken == [1]
    assert changes.due() == clock.now
    batch = changes.take()
    assert batch.games == {"teeworlds"} and not batch.peers and not batch.served
    assert changes.due() is None


def test_a_flood_is_one_batch_per_interval_with_each_game_once() -> None:
    changes, clock, woken = pending()
    changes.served()
    changes.take()
    woken.clear()
    batches = []
    # 20,000 changes over 2 s, touching two games and one peer over and over.
    for i in range(20_000):
        clock.now = 1000.0 + i / 10_000
        changes.game("teeworlds" if i % 2 else "xonotic")
        changes.peer("p1")
        if i % 100 == 0:
            changes.served()
        due = changes.due()
        assert due is not None
        if clock.now >= due:
            batches.append(changes.take())
    assert 7 <= len(batches) <= 9  # 2 s at one batch per 0.25 s
    assert all(b.games <= {"teeworlds", "xonotic"} and b.peers == {"p1"} for b in batches)
    # The teller is woken by the first change after each batch, not by every change.
    assert len(woken) == len(batches) + 1


def test_what_was_told_out_of_turn_is_not_told_again() -> None:
    changes, _clock, _ = pending()
    changes.game("teeworlds")
    changes.game("xonotic")
    changes.peer("p1")
    changes.told_game("teeworlds")  # a job began: its game was told with the job
    changes.told_peer("p1")  # the peer left: told at once
    batch = changes.take()
    assert batch.games == {"xonotic"} and not batch.peers
    changes.game("teeworlds")
    changes.told_game("teeworlds")
    assert changes.due() is None  # nothing left: the teller goes back to sleep


def catalog(tmp_path: Path, **versions: str) -> Catalog:
    games = {g: CatalogGame(g, g, "", 1, v) for g, v in versions.items()}
    return Catalog(games, tmp_path / "game.db")


def test_unknown_games_are_capped_and_report_no_change() -> None:
    known = {"teeworlds", "xonotic"}.__contains__
    table = Announced()
    flood = {f"unknown-{i}": "1" for i in range(10_000)}
    ignored = table.replace(flood | {"teeworlds": "0.7.5"}, known)
    assert ignored == 10_000 - MAX_UNKNOWN_GAMES
    assert len(table.unknown) == MAX_UNKNOWN_GAMES
    assert table.known == {"teeworlds": "0.7.5"}
    assert table.take_changed() == {"teeworlds"}
    # Deltas of unknown games: nothing in our catalog changed.
    for i in range(20_000):
        table.apply({f"other-{i}": "1"}, (f"unknown-{i}",), known)
    assert not table.take_changed()
    assert len(table.unknown) == MAX_UNKNOWN_GAMES
    table.apply({"xonotic": "0.8.6"}, ("teeworlds",), known)
    assert table.take_changed() == {"xonotic", "teeworlds"}
    assert table.known == {"xonotic": "0.8.6"}


def test_a_catalog_reload_finds_games_announced_before(tmp_path: Path) -> None:
    table = Announced()
    table.replace({"teeworlds": "0.7.5", "newgame": "2"}, {"teeworlds"}.__contains__)
    table.take_changed()
    table.reclassify({"newgame"}.__contains__)
    assert table.known == {"newgame": "2"}
    assert table.unknown == {"teeworlds": "0.7.5"}
    assert table.take_changed() == {"newgame", "teeworlds"}


def test_sources_are_recounted_only_for_the_games_touched(tmp_path: Path) -> None:
    cat = catalog(tmp_path, teeworlds="0.7.5", xonotic="0.8.6")
    index = SourceIndex()
    a = {"teeworlds": "0.7.5", "xonotic": "0.8.5"}  # xonotic at another version
    assert index.update("a", a, a, cat) == {"teeworlds"}
    b = {"teeworlds": "0.7.5"}
    assert index.update("b", b, b, cat) == {"teeworlds"}
    assert (index.count("teeworlds"), index.count("xonotic")) == (2, 0)
    a["xonotic"] = "0.8.6"
    assert index.update("a", a, {"xonotic"}, cat) == {"xonotic"}
    assert index.update("a", a, {"xonotic"}, cat) == set()  # no change, nothing to tell
    assert index.drop("a") == {"teeworlds", "xonotic"}
    assert (index.count("teeworlds"), index.count("xonotic")) == (1, 0)
    assert index.drop("a") == set()
