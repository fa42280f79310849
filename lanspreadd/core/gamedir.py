"""The game directory as the daemon sees it: whether it may be used, and claiming games
that root or a player copied in.

Under its unit the daemon sees and writes only what the unit allows; root gives it a
directory with `lanspreadctl set-game-dir PATH`, which every refusal here names.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shlex
import stat
from pathlib import Path

from lanspreadd.core import acl
from lanspreadd.core.escape import echoed
from lanspreadd.errors import InvalidArgument, NoAccess

log = logging.getLogger(__name__)

# Permission errors, and a read-only mount: the unit does not let the daemon write there.
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def fix_command(game_dir: Path | str) -> str:
    return f"run `lanspreadctl set-game-dir {shlex.quote(str(game_dir))}` as root"


def no_access(path: Path | str, game_dir: Path | str, exc: OSError) -> NoAccess:
    """The named error for a file in the game directory the daemon may not change."""
    return NoAccess(
        f"lanspreadd may not write {path} ({exc.strerror}): it was copied in by root or "
        f"another user, or the service was not given this directory; "
        f"{fix_command(game_dir)} to give it access"
    )


def check_game_dir(path: object, state_dir: Path) -> Path:
    """`path` if the daemon can use it as its game directory: an existing directory it
    can write (a probe file is made and removed), not `/`, not its state directory."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidArgument("the game directory must be a non-empty path")
    new = Path(path)
    shown = echoed(path)  # what the caller sent comes back cut short
    if not new.is_absolute():
        raise InvalidArgument(f"the game directory must be absolute: {shown!r}")
    real = Path(os.path.realpath(new))
    state = Path(os.path.realpath(state_dir))
    if real == Path("/"):
        raise InvalidArgument("the game directory cannot be /")
    if state.is_relative_to(real):
        raise InvalidArgument(f"{shown} holds lanspreadd's state directory {state}")
    if real.is_relative_to(state) and not real.is_relative_to(state / "games"):
        raise InvalidArgument(
            f"{shown} is inside lanspreadd's state directory; games go to {state / 'games'}"
        )
    try:
        st = os.stat(new)
    except FileNotFoundError:
        raise InvalidArgument(
            f"{shown} does not exist where lanspreadd can see it: {fix_command(shown)}, "
            "which creates it and gives the service access"
        ) from None
    except OSError as exc:
        raise NoAccess(
            f"lanspreadd cannot reach {shown} ({exc.strerror}): {fix_command(shown)} "
            "to give the service access"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{shown} is not a directory")
    probe = new / f".lanspread-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise NoAccess(
            f"lanspreadd cannot write in {shown} ({exc.strerror}): {fix_command(shown)} "
            "to give the service access"
        ) from None
    return new


def claim_game_root(root: Path, game_dir: Path) -> None:
    """Before changing a game: give the daemon write access to its directories where
    a copy by root or a player left it without (see `acl`)."""
    if not root.is_dir() or root.is_symlink():
        return
    try:
        changed = acl.claim(str(root), os.getuid())
    except OSError as exc:
        raise no_access(exc.filename or root, game_dir, exc) from exc
    if changed:
        log.info(
            "%s: gave lanspreadd write access to %d directories copied in by someone else",
            root.name,
            changed,
        )


def share_installed(tree: Path) -> None:
    """After an install: where the game directory's default ACL shares games with a
    player, the installed directories give them its rights again (the tree was made
    0755), so the player whose directory it is can delete the game by hand."""
    try:
        acl.widen_masks(str(tree))
    except OSError as exc:
        log.info("%s: players keep read access only: %s", tree, exc)
