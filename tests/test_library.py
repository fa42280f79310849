from __future__ import annotations

from pathlib import Path

import pytest

from lanspreadd.core.catalog import Catalog, CatalogGame, check_game_id, write_catalog
from lanspreadd.core.library import (
    INSTALLED_VERSION,
    Availability,
    Library,
    first_volumes,
    parse_version_ini,
)
from lanspreadd.errors import CatalogError, InvalidArgument
from tests.support import make_game


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    db = tmp_path / "game.db"
    write_catalog(
        db,
        [
            CatalogGame("alpha", "Alpha", "", 1, "2.0"),
            CatalogGame("beta", "Beta", "", 1, "1.0"),
        ],
    )
    return Catalog.load(db)


def test_embedded_catalog_loads() -> None:
    catalog = Catalog.load()
    assert "sample-game" in catalog.games
    assert all(g.version for g in catalog.games.values())


def test_corrupt_catalog_is_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "game.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match=r"not a lanspread game\.db"):
        Catalog.load(bad)
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog.load(tmp_path / "missing.db")


def test_catalog_rejects_unsafe_ids(tmp_path: Path) -> None:
    db = tmp_path / "game.db"
    write_catalog(db, [CatalogGame("../etc", "x", "", 0, "1")])
    with pytest.raises(CatalogError, match="invalid game id"):
        Catalog.load(db)


@pytest.mark.parametrize("bad", ["", "A", "../x", "a/b", "x" * 65, "-x", 5, None])
def test_game_id_validation(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        check_game_id(bad)


def test_state_model(tmp_path: Path, catalog: Catalog) -> None:
    games = tmp_path / "games"
    lib = Library(games, catalog)
    lib.scan_all()
    assert lib.states["alpha"].availability is Availability.ABSENT

    make_game(games, "alpha", version="2.0")
    lib.rescan("alpha")
    after = lib.states["alpha"]
    assert after.availability is Availability.READY
    assert after.downloaded and not after.installed

    make_game(games, "beta", version="0.9")
    lib.rescan("beta")
    outdated = lib.states["beta"]
    assert outdated.availability is Availability.OUTDATED
    assert outdated.local_version == "0.9"

    (games / "beta" / "version.ini").unlink()
    (games / "beta" / "local").mkdir()
    lib.rescan("beta")
    local_only = lib.states["beta"]
    assert local_only.availability is Availability.LOCAL_ONLY
    assert local_only.installed and not local_only.downloaded


def test_only_exact_root_version_ini_counts(tmp_path: Path, catalog: Catalog) -> None:
    root = tmp_path / "games" / "alpha"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "version.ini").write_text("2.0")
    (root / "local").mkdir()
    (root / "local" / "version.ini").write_text("2.0")
    (root / "Version.ini").write_text("2.0")
    lib = Library(tmp_path / "games", catalog)
    lib.scan_all()
    assert not lib.states["alpha"].downloaded
    (root / "Version.ini").unlink()
    (root / "version.ini").mkdir()
    lib.rescan("alpha")
    assert not lib.states["alpha"].downloaded
    (root / "version.ini").rmdir()
    (root / "version.ini").symlink_to(root / "sub" / "version.ini")
    lib.rescan("alpha")
    assert not lib.states["alpha"].downloaded, "a symlinked sentinel does not count"


def test_version_ini_formats() -> None:
    assert parse_version_ini("1.2.3\n") == "1.2.3"
    assert parse_version_ini("[game]\nname=x\nversion = 4.5\n") == "4.5"
    assert parse_version_ini("\n\n") == ""


def test_first_volumes() -> None:
    names = ["a.part1.rar", "a.part2.rar", "b.rar", "c.part01.rar", "c.part02.rar", "x.txt"]
    assert first_volumes(names) == ["a.part1.rar", "b.rar", "c.part01.rar"]


def test_installed_version_and_a_waiting_update(tmp_path: Path, catalog: Catalog) -> None:
    games = tmp_path / "games"
    root = make_game(games, "alpha", version="2.0")
    lib = Library(games, catalog)
    (root / "local").mkdir()
    lib.rescan("alpha")
    by_hand = lib.states["alpha"]
    assert (by_hand.installed, by_hand.installed_version, by_hand.update_ready) == (True, "", False)

    (root / "local" / INSTALLED_VERSION).write_text("1.0\n")
    lib.rescan("alpha")
    older = lib.states["alpha"]
    assert (older.installed_version, older.update_ready) == ("1.0", True)

    (root / "local" / INSTALLED_VERSION).write_text("2.0\n")
    lib.rescan("alpha")
    assert lib.states["alpha"].update_ready is False

    (root / "version.ini").unlink()
    lib.rescan("alpha")
    local_only = lib.states["alpha"]
    assert (local_only.availability, local_only.installed_version) == (
        Availability.LOCAL_ONLY,
        "2.0",
    )
    assert local_only.update_ready is False
