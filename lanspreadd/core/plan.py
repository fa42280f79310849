"""What a download fetches next and from whom: pure bookkeeping, no I/O.

`DownloadPlan` hands out chunks, takes back lost and corrupt ones, demotes a source
that sent corrupt data twice and says when a chunk is corrupt everywhere. File lists
are checked (`validate_file_list`) and the one most sources agree on is chosen
(`majority`).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from lanspreadd.core.library import MAX_VERSION_INI, VERSION_INI
from lanspreadd.core.manifest import file_list_root
from lanspreadd.core.paths import check_relative_path
from lanspreadd.errors import InvalidArgument, NoMajority, NoSources
from lanspreadd.protocol.messages import FileEntry, FileList

MAX_CORRUPT = 2


@dataclass(frozen=True)
class Chunk:
    file_index: int
    index: int
    offset: int
    length: int


class DownloadPlan:
    """Which chunks remain, which are in flight and from whom, and who misbehaved."""

    def __init__(
        self,
        files: tuple[FileEntry, ...],
        chunk_size: int,
        verified: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.files = files
        self.chunk_size = chunk_size
        self.verified: set[tuple[int, int]] = set(verified)
        self.pending: deque[Chunk] = deque()
        for fi, entry in enumerate(files):
            for ci in range(len(entry.hashes)):
                if (fi, ci) in self.verified:
                    continue
                offset = ci * chunk_size
                self.pending.append(Chunk(fi, ci, offset, min(chunk_size, entry.size - offset)))
        self.in_flight: dict[Chunk, str] = {}
        self.excluded: dict[Chunk, set[str]] = {}
        self.sources: set[str] = set()
        self.corrupt_count: Counter[str] = Counter()
        self.total_bytes = sum(f.size for f in files)
        self.bytes_done = sum(self._length(fi, ci) for fi, ci in self.verified)

    def _length(self, fi: int, ci: int) -> int:
        return max(0, min(self.chunk_size, self.files[fi].size - ci * self.chunk_size))

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight

    def add_source(self, source: str) -> None:
        self.sources.add(source)

    def next_for(self, source: str) -> Chunk | None:
        if source not in self.sources:
            return None
        for _ in range(len(self.pending)):
            chunk = self.pending.popleft()
            if source in self.excluded.get(chunk, ()):
                self.pending.append(chunk)
                continue
            self.in_flight[chunk] = source
            return chunk
        return None

    def completed(self, chunk: Chunk) -> None:
        if self.in_flight.pop(chunk, None) is None:
            return
        self.verified.add((chunk.file_index, chunk.index))
        self.bytes_done += chunk.length

    def corrupt(self, chunk: Chunk, source: str) -> bool:
        """Requeue a chunk that failed verification; True if the source is now dropped."""
        self.in_flight.pop(chunk, None)
        self.excluded.setdefault(chunk, set()).add(source)
        self.pending.appendleft(chunk)
        self.corrupt_count[source] += 1
        if self.corrupt_count[source] >= MAX_CORRUPT:
            self.source_lost(source)
            return True
        return False

    def source_lost(self, source: str) -> None:
        self.sources.discard(source)
        for chunk, owner in list(self.in_flight.items()):
            if owner == source:
                del self.in_flight[chunk]
                self.pending.appendleft(chunk)

    def unobtainable(self) -> Chunk | None:
        """A pending chunk that no remaining source may send us, if any."""
        for chunk in self.pending:
            if self.sources and self.sources <= self.excluded.get(chunk, set()):
                return chunk
        return None


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
