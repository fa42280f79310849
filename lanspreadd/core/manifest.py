"""Root hashes that pin a game version's content: its download and its installed tree.

A pin in the organiser's catalog is two SHA-256 roots over canonical JSON:
- the manifest: the download's files (archives and `version.ini`), their sizes and chunk
  hashes, and the chunk size they were cut with (so chunking may change later without
  breaking pins: a pin names the chunk size its hashes use);
- the tree: every file an install leaves under `local/`, with its size and SHA-256, and
  every symlink with its target.
A receiver computes the same root from a peer's file list, or from the tree it unpacked,
and needs no vote: equal roots mean equal content.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanspreadd.errors import CorruptData
from lanspreadd.protocol.messages import FileEntry, FileList

TREE_READ = 1 << 20


def canonical_json(value: Any) -> bytes:
    """UTF-8, sorted keys, no insignificant whitespace: one byte string per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def manifest_root(chunk_size: int, files: Iterable[FileEntry]) -> str:
    """The root hash of a download: chunk size, and each file's path, size and chunks."""
    listed = sorted([f.path, f.size, list(f.hashes)] for f in files)
    return hashlib.sha256(canonical_json({"chunk_size": chunk_size, "files": listed})).hexdigest()


def file_list_root(file_list: FileList) -> str:
    return manifest_root(file_list.chunk_size, file_list.files)


@dataclass(frozen=True)
class TreeEntry:
    """A file (size and SHA-256) or a symlink (its target) of an installed tree."""

    path: str
    size: int = 0
    sha256: str = ""
    link: str = ""


def tree_root(entries: Iterable[TreeEntry]) -> str:
    files = sorted([e.path, e.size, e.sha256] for e in entries if not e.link)
    links = sorted([e.path, e.link] for e in entries if e.link)
    return hashlib.sha256(canonical_json({"files": files, "links": links})).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(TREE_READ):
            h.update(block)
    return h.hexdigest()


def tree_entries(root: Path) -> list[TreeEntry]:
    """What an installed tree holds, as a pin sees it (empty directories do not count)."""
    found: list[TreeEntry] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as it:
            for entry in sorted(it, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    found.append(TreeEntry(rel, link=os.readlink(entry.path)))
                elif stat.S_ISDIR(st.st_mode):
                    walk(Path(entry.path), f"{rel}/")
                elif stat.S_ISREG(st.st_mode):
                    found.append(TreeEntry(rel, st.st_size, sha256_file(Path(entry.path))))

    walk(root, "")
    return found


def check_tree(root: Path, pinned: str, source: str) -> None:
    """Refuse a tree that is not the pinned one (a stream installer's, before it is used)."""
    found = tree_root(tree_entries(root))
    if found != pinned:
        raise CorruptData(
            f"the files {source} sent are not the content the organiser's catalog pins "
            f"(tree {found[:16]}, pinned {pinned[:16]})"
        )
