"""The game catalog: which games exist and which version is authoritative."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lanspreadd.core.escape import echoed
from lanspreadd.errors import CatalogError, InvalidArgument

GAME_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_game_id(game_id: object) -> str:
    """Game ids become directory names and object paths, so only a safe alphabet passes."""
    if not isinstance(game_id, str) or not GAME_ID_RE.fullmatch(game_id):
        shown = echoed(game_id) if isinstance(game_id, str) else type(game_id).__name__
        raise InvalidArgument(f"invalid game id {shown!r}: use a-z, 0-9, '.', '_' or '-'")
    return game_id


@dataclass(frozen=True)
class Pin:
    """A game version's content as the organiser signed it (see core.manifest)."""

    manifest: str  # root hash of the download's file list
    chunk_size: int  # the chunk size the manifest's hashes use
    tree: str  # root hash of the installed tree


@dataclass(frozen=True)
class CatalogGame:
    id: str
    name: str
    description: str
    size: int
    version: str
    genre: str = ""
    max_players: int = 0
    pin: Pin | None = None


def embedded_catalog_path() -> Path:
    return Path(str(resources.files("lanspreadd") / "data" / "game.db"))


class Catalog:
    """An immutable snapshot of a catalog; reloading or adopting builds a new one.

    `revision` and `signer` (a key fingerprint) are set for an organiser's signed
    catalog; a `game.db` has neither."""

    def __init__(
        self, games: dict[str, CatalogGame], source: Path, revision: int = 0, signer: str = ""
    ) -> None:
        self.games = games
        self.source = source
        self.revision = revision
        self.signer = signer

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        source = path or embedded_catalog_path()
        if not source.is_file():
            raise CatalogError(f"catalog {source} does not exist")
        try:
            con = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            try:
                con.row_factory = sqlite3.Row
                rows = con.execute(
                    "SELECT id, name, description, size, version, genre, max_players FROM games"
                ).fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise CatalogError(f"catalog {source} is not a lanspread game.db: {exc}") from exc
        games: dict[str, CatalogGame] = {}
        for row in rows:
            game_id = row["id"]
            if not isinstance(game_id, str) or not GAME_ID_RE.fullmatch(game_id):
                raise CatalogError(f"catalog {source}: invalid game id {echoed(str(game_id))!r}")
            version = str(row["version"] or "").strip()
            if not version:
                raise CatalogError(f"catalog {source}: game {game_id} has no version")
            games[game_id] = CatalogGame(
                id=game_id,
                name=str(row["name"] or game_id),
                description=str(row["description"] or ""),
                size=int(row["size"] or 0),
                version=version,
                genre=str(row["genre"] or ""),
                max_players=int(row["max_players"] or 0),
            )
        return cls(games, source)

    def get(self, game_id: str) -> CatalogGame | None:
        return self.games.get(game_id)


SCHEMA = """
CREATE TABLE games (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL,
    genre TEXT NOT NULL DEFAULT '',
    max_players INTEGER NOT NULL DEFAULT 0
);
"""


def write_catalog(path: Path, games: list[CatalogGame]) -> None:
    """Create a game.db; used to build the embedded sample and by tests."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        con.executescript(SCHEMA)
        con.executemany(
            "INSERT INTO games VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (g.id, g.name, g.description, g.size, g.version, g.genre, g.max_players)
                for g in games
            ],
        )
        con.commit()
    finally:
        con.close()
