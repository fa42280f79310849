"""POSIX ACLs through their extended attributes, so granting the daemon access to a game
directory needs neither the acl package nor a shell.

Two users share a game directory: the daemon (`lanspread`) and whoever copies games in
(a player, or root). Mode bits cannot give both write access, and a default ACL alone
does not survive `cp -r` or `rsync -a`: they set the group bits, which are the ACL's
mask, to `r-x`. So whoever writes a tree the other must change grants itself a named
entry and widens the mask again (see lanspreadctl's set-game-dir and the daemon's
`claim_game_root`).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
VERSION = 2
HEADER = struct.Struct("<I")
ENTRY = struct.Struct("<HHI")
NO_ID = 0xFFFFFFFF

USER_OBJ = 0x01
USER = 0x02
GROUP_OBJ = 0x04
GROUP = 0x08
MASK = 0x10
OTHER = 0x20

R, W, X = 4, 2, 1
RWX = R | W | X
RX = R | X


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    id: int
    perm: int


class Acl:
    """An ACL as the kernel stores it: entries sorted by tag, then id."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.entries = sorted(entries)

    @classmethod
    def from_mode(cls, mode: int) -> Acl:
        return cls(
            [
                Entry(USER_OBJ, NO_ID, (mode >> 6) & RWX),
                Entry(GROUP_OBJ, NO_ID, (mode >> 3) & RWX),
                Entry(OTHER, NO_ID, mode & RWX),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Acl:
        if len(data) < HEADER.size or (len(data) - HEADER.size) % ENTRY.size:
            raise ValueError(f"an ACL of {len(data)} bytes")
        (version,) = HEADER.unpack_from(data)
        if version != VERSION:
            raise ValueError(f"ACL version {version}")
        return cls(
            Entry(tag, ident, perm) for tag, perm, ident in ENTRY.iter_unpack(data[HEADER.size :])
        )

    def encode(self) -> bytes:
        return HEADER.pack(VERSION) + b"".join(
            ENTRY.pack(e.tag, e.perm, e.id) for e in self.entries
        )

    def perm(self, tag: int, ident: int = NO_ID) -> int | None:
        return next((e.perm for e in self.entries if (e.tag, e.id) == (tag, ident)), None)

    def with_users(self, users: Mapping[int, int]) -> Acl:
        """Named user entries added or replaced, and the mask widened to cover every
        entry of the group class, as `setfacl -m` does."""
        kept = [e for e in self.entries if not (e.tag == USER and e.id in users)]
        kept = [e for e in kept if e.tag != MASK]
        kept += [Entry(USER, uid, perm) for uid, perm in users.items()]
        mask = 0
        for entry in kept:
            if entry.tag in (USER, GROUP_OBJ, GROUP):
                mask |= entry.perm
        return Acl([*kept, Entry(MASK, NO_ID, mask)])


def read(fd: int, name: str = ACCESS) -> Acl | None:
    """The ACL of an open file, or None where it has only mode bits."""
    try:
        return Acl.decode(os.getxattr(fd, name))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def grant(fd: int, users: Mapping[int, int], default: Mapping[int, int] | None = None) -> None:
    """Give each uid in `users` its permissions on an open file or directory; for a
    directory, `default` also makes them the default ACL, inherited by what is created
    in it from now on. Needs ownership of the file, or CAP_FOWNER."""
    st = os.fstat(fd)
    current = read(fd) or Acl.from_mode(st.st_mode)
    os.setxattr(fd, ACCESS, current.with_users(users).encode())
    if default is not None and stat.S_ISDIR(st.st_mode):
        # New files get the owner's rights and the group's and others' of this
        # directory (its group entry, not the mask, which now covers the grants).
        base = read(fd, DEFAULT) or Acl(
            [
                Entry(USER_OBJ, NO_ID, RWX),
                Entry(GROUP_OBJ, NO_ID, current.perm(GROUP_OBJ) or 0),
                Entry(OTHER, NO_ID, current.perm(OTHER) or 0),
            ]
        )
        os.setxattr(fd, DEFAULT, base.with_users(default).encode())


def open_no_follow(name: str, dir_fd: int | None = None) -> int | None:
    """An fd for a directory or regular file, never following a link (a tree being
    changed by someone else must not lead a privileged walk out of it); None for other
    kinds. O_NONBLOCK: opening a FIFO that appeared in place of a file must not hang."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT):  # a symbolic link, or gone meanwhile
            return None
        raise
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return fd
    os.close(fd)
    return None


def grant_tree(
    top: str,
    dirs: Mapping[int, int],
    files: Mapping[int, int],
    default: Mapping[int, int] | None = None,
) -> int:
    """`grant` on a whole tree without following links: `dirs` and `default` on every
    directory, `files` on every regular file. Returns how many were changed."""
    changed = 0
    top_fd = open_no_follow(top)
    if top_fd is None:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", top)
    try:
        if not stat.S_ISDIR(os.fstat(top_fd).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", top)
        grant(top_fd, dirs, default)
        changed += 1
    finally:
        os.close(top_fd)
    for _path, dirnames, filenames, dir_fd in os.fwalk(top, follow_symlinks=False):
        for name in [*dirnames, *filenames]:
            fd = open_no_follow(name, dir_fd)
            if fd is None:
                continue
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                grant(fd, dirs if is_dir else files, default if is_dir else None)
                changed += 1
            finally:
                os.close(fd)
    return changed


def claim(top: str, uid: int) -> int:
    """Give `uid` write and search access to each directory of `top` that lacks them
    (a game copied in by root or a player); returns how many were changed. On others'
    directories this needs CAP_FOWNER, which the unit grants the daemon for this."""
    changed = 0

    def fail(exc: OSError) -> None:
        raise exc

    for path, _dirs, _files, dir_fd in os.fwalk(top, onerror=fail):
        if not os.access(".", os.W_OK | os.X_OK, dir_fd=dir_fd):
            try:
                grant(dir_fd, {uid: RWX})
            except OSError as exc:
                exc.filename = path
                raise
            changed += 1
    return changed


def widen_masks(top: str) -> int:
    """Each directory of `top` with named entries gets its mask back to what they
    grant: a chmod (an unpacked tree normalised to 0755) narrows it to the group bits.
    Returns how many were changed; only the owner of the directories may."""
    changed = 0
    for _path, _dirs, _files, dir_fd in os.fwalk(top):
        current = read(dir_fd)
        if current is None or current.perm(MASK) is None:
            continue
        wide = current.with_users({})
        if wide.perm(MASK) != current.perm(MASK):
            os.setxattr(dir_fd, ACCESS, wide.encode())
            changed += 1
    return changed
