"""Settings changed at run time and kept across restarts: the game directory and the
upload and download limits, in `settings.json` in the state directory.

As transmission-daemon keeps what its RPC changes: a setting changed at run time wins
over lanspreadd.toml at the next start; a command-line flag wins over both, for that run.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from lanspreadd.core.install import atomic_write
from lanspreadd.core.ratelimit import check_rate

log = logging.getLogger(__name__)


class Settings:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "settings.json"
        # Saves come from worker threads; each rewrites the whole file with one change.
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def _save(self, key: str, value: object) -> None:
        with self._lock:
            saved = self._load() | {key: value}
            atomic_write(self.path, json.dumps(saved, sort_keys=True).encode())

    def game_dir(self, default: Path) -> Path:
        """The game directory set last with SetGameDir, else `default`."""
        saved = self._load().get("game_dir")
        return Path(saved) if isinstance(saved, str) and saved else default

    def save_game_dir(self, game_dir: Path) -> None:
        self._save("game_dir", str(game_dir))

    def limit(self, key: str) -> int | None:
        """The rate `key` (upload_limit, download_limit) last set at run time, or None.
        A value edited into something no rate is, is said and ignored."""
        saved = self._load().get(key)
        if saved is None:
            return None
        if not isinstance(saved, int) or isinstance(saved, bool) or check_rate(saved):
            log.warning(
                "ignoring %s in %s: %r is no rate in bytes per second", key, self.path, saved
            )
            return None
        return saved

    def save_limit(self, key: str, rate: int) -> None:
        self._save(key, rate)
