"""Generate the embedded catalog's `sample-game` as real RAR archives (for demos)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from lanspreadd.archive.writer import Entry, write_rar5_volumes
from lanspreadd.core.catalog import Catalog

GAME_ID = "sample-game"


def sample_entries(size: int) -> list[Entry]:
    block = hashlib.sha256(b"lanspread sample").digest() * 2048
    data = (block * (size // len(block) + 1))[:size]
    return [
        Entry("bin/"),
        Entry("bin/sample-game", b"#!/bin/sh\necho 'Sample Game: it works'\n", 0o755),
        Entry("data/assets.pak", data),
        Entry("README.txt", b"A generated sample game for trying lanspread.\n"),
    ]


def write_sample_game(game_dir: Path, size: int | None = None) -> Path:
    """Write archives plus version.ini, so the game is downloaded and Ready."""
    entry = Catalog.load().games[GAME_ID]
    root = game_dir / GAME_ID
    root.mkdir(parents=True, exist_ok=True)
    write_rar5_volumes(root / f"{GAME_ID}.part1.rar", sample_entries(size or entry.size), 1 << 20)
    (root / "version.ini").write_text(f"{entry.version}\n")
    return root


if __name__ == "__main__":
    print(f"sample game written to {write_sample_game(Path(sys.argv[1]))}")
