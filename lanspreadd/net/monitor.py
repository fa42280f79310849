"""Watch the game directory with non-recursive inotify watches.

One watch on the game directory (games appearing or vanishing) and one on each
game root (sentinel, archives, local/ coming and going). Events only name the
game to rescan; the caller debounces and rescans that one game.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from asyncinotify import Event, Inotify, Mask, Watch

log = logging.getLogger(__name__)

DIR_MASK = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.CLOSE_WRITE
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)


class GameDirMonitor:
    def __init__(
        self,
        game_dir: Path,
        is_game: Callable[[str], bool],
        on_dirty: Callable[[str | None], None],
    ) -> None:
        """`on_dirty(game_id)` asks for a rescan; `None` means rescan everything."""
        self.game_dir = game_dir
        self.is_game = is_game
        self.on_dirty = on_dirty
        self._game_watches: dict[str, Watch] = {}
        self._root_watch: Watch | None = None

    def _watch_game(self, inotify: Inotify, game_id: str) -> None:
        if game_id in self._game_watches:
            return
        path = self.game_dir / game_id
        if not path.is_dir() or path.is_symlink():
            return
        try:
            self._game_watches[game_id] = inotify.add_watch(path, DIR_MASK)
        except OSError as exc:
            log.warning("cannot watch %s: %s", path, exc)

    def _forget_game(self, inotify: Inotify, game_id: str) -> None:
        watch = self._game_watches.pop(game_id, None)
        if watch is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                inotify.rm_watch(watch)

    async def run(self) -> None:
        with Inotify() as inotify:
            self._root_watch = inotify.add_watch(self.game_dir, DIR_MASK)
            for child in self.game_dir.iterdir():
                if self.is_game(child.name):
                    self._watch_game(inotify, child.name)
            self.on_dirty(None)
            async for event in inotify:
                self._handle(inotify, event)

    def _handle(self, inotify: Inotify, event: Event) -> None:
        if Mask.Q_OVERFLOW in event.mask:
            log.warning("inotify queue overflowed; rescanning everything")
            self.on_dirty(None)
            return
        watch = event.watch
        if watch is None:
            return
        if watch is self._root_watch:
            if Mask.DELETE_SELF in event.mask or Mask.MOVE_SELF in event.mask:
                raise RuntimeError(f"game directory {self.game_dir} was removed or moved")
            if event.name is None:
                return
            game_id = str(event.name)
            if not self.is_game(game_id):
                return
            if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                self._watch_game(inotify, game_id)
            elif event.mask & (Mask.DELETE | Mask.MOVED_FROM):
                self._forget_game(inotify, game_id)
            self.on_dirty(game_id)
            return
        for game_id, game_watch in list(self._game_watches.items()):
            if game_watch is watch:
                if event.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                    self._game_watches.pop(game_id, None)
                self.on_dirty(game_id)
                return


class RescanQueue:
    """Coalesce bursts of events into one rescan per game after a short delay."""

    def __init__(self, rescan: Callable[[set[str] | None], None], delay: float = 0.05) -> None:
        self.rescan = rescan
        self.delay = delay
        self._dirty: set[str] = set()
        self._everything = False
        self._wake = asyncio.Event()

    def mark(self, game_id: str | None) -> None:
        if game_id is None:
            self._everything = True
        else:
            self._dirty.add(game_id)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)
            self._wake.clear()
            everything, dirty = self._everything, self._dirty
            self._everything, self._dirty = False, set()
            self.rescan(None if everything else dirty)
