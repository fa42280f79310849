"""Regenerate the embedded sample catalog `lanspreadd/data/game.db`."""

from __future__ import annotations

from pathlib import Path

from lanspreadd.core.catalog import CatalogGame, write_catalog

SAMPLE = [
    CatalogGame(
        "openarena", "OpenArena", "Fast-paced arena shooter", 524288000, "0.8.8", "shooter", 16
    ),
    CatalogGame(
        "teeworlds", "Teeworlds", "Retro multiplayer 2D shooter", 20971520, "0.7.5", "shooter", 16
    ),
    CatalogGame("supertuxkart", "SuperTuxKart", "Kart racing", 734003200, "1.4", "racing", 8),
    CatalogGame("xonotic", "Xonotic", "Arena shooter", 1073741824, "0.8.6", "shooter", 32),
    CatalogGame(
        "wesnoth", "Battle for Wesnoth", "Turn-based strategy", 471859200, "1.18.0", "strategy", 8
    ),
    CatalogGame(
        "sample-game",
        "Sample Game",
        "A small generated game for trying lanspread",
        4194304,
        "1.0",
        "demo",
        4,
    ),
]

if __name__ == "__main__":
    write_catalog(
        Path(__file__).resolve().parent.parent / "lanspreadd" / "data" / "game.db", SAMPLE
    )
