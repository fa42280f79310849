"""Settings changed at run time and kept across restarts (the game directory)."""

from __future__ import annotations

import json
from pathlib import Path

from lanspreadd.core.install import atomic_write


class Settings:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "settings.json"

    def game_dir(self, default: Path) -> Path:
        """The game directory set last with SetGameDir, else `default`."""
        try:
            saved = json.loads(self.path.read_text("utf-8"))
            return Path(saved["game_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return default

    def save_game_dir(self, game_dir: Path) -> None:
        atomic_write(self.path, json.dumps({"game_dir": str(game_dir)}).encode())
