"""What a download fetches next and from whom: pure bookkeeping, no I/O.

`DownloadPlan` hands out chunks, takes back lost and corrupt ones, demotes a source
that sent corrupt data twice and says when a chunk is corrupt everywhere. File lists
are checked (`validate_file_list`) and the one most sources agree on is chosen
(`majority`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from lanspreadd.core.library import MAX_VERSION_INI, VERSION_INI
from lanspreadd.core.manifest import file_list_root
from lanspreadd.core.paths import check_relative_path
from lanspreadd.errors import InvalidArgument, NoMajority, NoSources
from lanspreadd.protocol.messages import FileEntry, FileList

MAX_CORRUPT = 2
END_GAME_FETCHERS = 2  # in the end game a chunk is fetched from at most this many sources
BUSY_FETCHES = 1  # with this many chunks in flight, complete sources get only chunks no
# partial source holds

ChunkKey = tuple[int, int]  # (file index, chunk index) in the plan's file list


@dataclass(frozen=True)
class Chunk:
    file_index: int
    index: int
    offset: int
    length: int

    @property
    def key(self) -> ChunkKey:
        return (self.file_index, self.index)


class DownloadPlan:
    """Which chunks remain, which are in flight and from whom, and who misbehaved.

    A source is complete (it serves every chunk) or partial: a peer still downloading
    the same file list, which serves the chunks it says it holds (`add_held`). Each
    source is handed the rarest chunk it can send (fewest partial holders; equals in
    an order shuffled per plan, so that receivers starting together pick different
    ones; file order without an `rng`), and once every chunk is asked for, an idle
    source also takes a chunk already in flight (the end game), so one slow source
    does not hold the end back.
    """

    def __init__(
        self,
        files: tuple[FileEntry, ...],
        chunk_size: int,
        verified: Iterable[ChunkKey] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.files = files
        self.chunk_size = chunk_size
        self.verified: set[ChunkKey] = set(verified)
        chunks = [
            Chunk(fi, ci, ci * chunk_size, min(chunk_size, entry.size - ci * chunk_size))
            for fi, entry in enumerate(files)
            for ci in range(len(entry.hashes))
            if (fi, ci) not in self.verified
        ]
        if rng is not None:  # without one, file order: what tests that count bytes expect
            rng.shuffle(chunks)
        self.pending: dict[Chunk, None] = dict.fromkeys(chunks)
        self.in_flight: dict[Chunk, set[str]] = {}
        self.excluded: dict[Chunk, set[str]] = {}
        self.sources: set[str] = set()
        self.held: dict[str, set[ChunkKey]] = {}  # partial sources: what each holds
        self.copies: Counter[ChunkKey] = Counter()  # partial sources holding each chunk
        self.corrupt_count: Counter[str] = Counter()
        self.total_bytes = sum(f.size for f in files)
        self.bytes_done = sum(self._length(fi, ci) for fi, ci in self.verified)

    def _length(self, fi: int, ci: int) -> int:
        return max(0, min(self.chunk_size, self.files[fi].size - ci * self.chunk_size))

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight

    def add_source(self, source: str, held: Iterable[ChunkKey] | None = None) -> None:
        """A source that serves everything, or (with `held`) only the chunks it holds."""
        self.sources.add(source)
        if held is not None:
            self.held.setdefault(source, set())
            self.add_held(source, held)

    def add_held(self, source: str, keys: Iterable[ChunkKey]) -> None:
        """A partial source verified more chunks."""
        held = self.held.get(source)
        if held is None or source not in self.sources:
            return
        for key in keys:
            if key not in held:
                held.add(key)
                self.copies[key] += 1

    def holds(self, source: str, key: ChunkKey) -> bool:
        held = self.held.get(source)
        return source in self.sources and (held is None or key in held)

    def next_for(self, source: str) -> Chunk | None:
        if source not in self.sources:
            return None
        chunk = self._rarest(source)
        if chunk is not None:
            del self.pending[chunk]
            self.in_flight[chunk] = {source}
            return chunk
        chunk = self._end_game(source)
        if chunk is not None:
            self.in_flight[chunk].add(source)
        return chunk

    def _rarest(self, source: str) -> Chunk | None:
        held = self.held.get(source)
        floor = 0 if held is None else 1  # no chunk a partial source holds is rarer than 1
        best = self._least_copies(source, held, floor)
        if best is not None and held is None and self.copies[best.key] and self._busy():
            # A complete source's upload is what a flash crowd waits on: it goes to chunks
            # no peer downloading with us holds yet, while those peers keep us busy.
            return None
        return best

    def _busy(self) -> bool:
        return len(self.in_flight) >= BUSY_FETCHES

    def _least_copies(self, source: str, held: set[ChunkKey] | None, floor: int) -> Chunk | None:
        best: Chunk | None = None
        best_copies = 0
        for chunk in self.pending:
            key = chunk.key
            if held is not None and key not in held:
                continue
            if source in self.excluded.get(chunk, ()):
                continue
            copies = self.copies[key]
            if best is None or copies < best_copies:
                best, best_copies = chunk, copies
                if copies <= floor:
                    break
        return best

    def _end_game(self, source: str) -> Chunk | None:
        if self.pending:
            return None
        best: Chunk | None = None
        for chunk, fetchers in self.in_flight.items():
            if (
                len(fetchers) < END_GAME_FETCHERS
                and (source in self.held or not self.copies[chunk.key])  # as in _rarest
                and source not in fetchers
                and source not in self.excluded.get(chunk, ())
                and self.holds(source, chunk.key)
                and (best is None or len(fetchers) < len(self.in_flight[best]))
            ):
                best = chunk
        return best

    def completed(self, chunk: Chunk) -> bool:
        """A chunk verified and written; False for a second fetch of it finishing later,
        which counts nothing."""
        if self.in_flight.pop(chunk, None) is None:
            return False
        self.verified.add(chunk.key)
        self.bytes_done += chunk.length
        return True

    def released(self, chunk: Chunk, source: str) -> None:
        """`source` did not send `chunk` (it was busy, or no longer holds it): no blame."""
        fetchers = self.in_flight.get(chunk)
        if fetchers is None or source not in fetchers:
            return
        fetchers.discard(source)
        if not fetchers:
            del self.in_flight[chunk]
            self.pending[chunk] = None

    def corrupt(self, chunk: Chunk, source: str) -> bool:
        """Requeue a chunk that failed verification; True if the source is now dropped."""
        self.excluded.setdefault(chunk, set()).add(source)
        held = self.held.get(source)
        if held is not None and chunk.key in held:  # no copy we can have from it
            held.discard(chunk.key)
            self.copies[chunk.key] -= 1
        self.released(chunk, source)
        self.corrupt_count[source] += 1
        if self.corrupt_count[source] >= MAX_CORRUPT and source in self.sources:
            self.source_lost(source)
            return True  # once: a chunk still in flight from it may fail after the drop
        return False

    def source_lost(self, source: str) -> None:
        self.sources.discard(source)
        for key in self.held.pop(source, ()):
            self.copies[key] -= 1
        for chunk, fetchers in list(self.in_flight.items()):
            if source in fetchers:
                self.released(chunk, source)

    def unobtainable(self) -> Chunk | None:
        """A pending chunk that every remaining source holding it sent corrupt, if any."""
        for chunk, excluded in self.excluded.items():
            if chunk not in self.pending:
                continue
            holders = [s for s in self.sources if self.holds(s, chunk.key)]
            if holders and all(h in excluded for h in holders):
                return chunk
        return None

    def missing(self) -> Chunk | None:
        """A pending chunk that no remaining source holds: partial sources alone may
        all lack it, and then only a new source can end the download."""
        if any(s not in self.held for s in self.sources):
            return None  # a complete source holds everything
        return next((c for c in self.pending if not self.copies[c.key]), None)


def fingerprint(file_list: FileList) -> str:
    """The file list's root hash: what an organiser's pin names (core.manifest)."""
    return file_list_root(file_list)


def majority(lists: dict[str, FileList]) -> tuple[str, list[str]] | None:
    """The fingerprint more sources agree on than on any other, and those sources.

    None on a tie: breaking it by any property of the lists (the smallest fingerprint
    once) lets a forger who pads its game until it sorts first win against one honest
    peer."""
    groups: dict[str, list[str]] = {}
    for peer_id, file_list in lists.items():
        groups.setdefault(fingerprint(file_list), []).append(peer_id)
    ranked = sorted(groups.values(), key=len, reverse=True)
    if len(ranked) > 1 and len(ranked[0]) == len(ranked[1]):
        return None
    best = ranked[0]
    return fingerprint(lists[best[0]]), sorted(best)


def agreed(lists: dict[str, FileList], pin: str, what: str) -> tuple[str, list[str]]:
    """The file list to download and the sources that sent it.

    With the organiser's pin, any single source whose list is the pinned one: no vote.
    Without, the majority's; a tie fails rather than trusting a tie-break."""
    if pin:
        matching = sorted(p for p, file_list in lists.items() if fingerprint(file_list) == pin)
        if not matching:
            raise NoSources(
                f"none of the {len(lists)} peer(s) serving {what} "
                "has the content the organiser's catalog pins"
            )
        return pin, matching
    found = majority(lists)
    if found is None:
        raise NoMajority(
            f"the {len(lists)} peers serving {what} disagree on its files and no list has a "
            "majority; wait for more peers, or ask the organiser to pin the game"
        )
    return found


def validate_file_list(file_list: FileList) -> None:
    paths = set()
    for entry in file_list.files:
        check_relative_path(entry.path)
        if entry.path in paths:
            raise InvalidArgument(f"file {entry.path!r} is listed twice")
        paths.add(entry.path)
    sentinel = [f for f in file_list.files if f.path == VERSION_INI]
    if not sentinel or sentinel[0].size > MAX_VERSION_INI:
        raise InvalidArgument(f"the file list has no usable {VERSION_INI}")
