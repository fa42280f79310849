"""`lanspreadctl set-game-dir PATH`: a game directory that works wherever players keep games.

The packaged daemon runs as `lanspread` under a hardened unit: it writes only its state
directory and what the unit allows, and cannot change its unit. So root does, in this
order: check where PATH is and what filesystem holds it; create it (owned like the
directory it is made in); give `lanspread` access with ACLs, and PATH's owner access to
what the daemon creates; write the unit drop-in that lets the service write PATH; reload
systemd and restart the service if the drop-in changed (never while a job runs); then
tell the daemon (SetGameDir), which checks PATH as it sees it and picks up the games
already there. Run again, it repairs access to games copied in since.

A player gets the same from `lanspread-gamedir@<escaped PATH>.service`, a root oneshot
started with systemd's own polkit-checked StartUnit; when polkit says no, the message
names the command to run as root. On another bus than the system bus (a daemon started
by hand) only SetGameDir is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sdnotify
from dbus_fast import Message

from lanspreadctl.client import (
    ERROR_PREFIX,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Client,
    ClientError,
    unwrap,
)
from lanspreadd.core import acl

SERVICE = "lanspreadd.service"
SERVICE_USER = "lanspread"
HELPER = "lanspread-gamedir@{}.service"
DROP_IN = Path("/etc/systemd/system/lanspreadd.service.d/gamedir.conf")
STATE_DIR = Path("/var/lib/lanspread")
DEFAULT_DIR = STATE_DIR / "games"
PLACES = (Path("/srv"), Path("/mnt"), Path("/media"))
HOME = Path("/home")
# No Unix owners or ACLs: only a mount that lanspread owns works. fuseblk: ntfs-3g and
# exfat-fuse, which is how NTFS and exFAT disks are often mounted.
NO_UNIX_PERMISSIONS = {
    "vfat": "FAT",
    "msdos": "FAT",
    "exfat": "exFAT",
    "ntfs": "NTFS",
    "ntfs3": "NTFS",
    "fuseblk": "NTFS or exFAT (FUSE)",
}
MOUNT_OPTIONS = "uid=lanspread,gid=GROUP,umask=0002"
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
DENIED = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    }
)
JOB_TIMEOUT = 120.0  # a restart may wait out TimeoutStopSec=45s


@dataclass
class Outcome:
    """What set-game-dir did, in the order it did it."""

    path: str
    steps: list[str] = field(default_factory=list)


def invalid(message: str) -> ClientError:
    return ClientError(message, EXIT_USAGE, ERROR_PREFIX + "InvalidArgument")


# ---- where games may live ------------------------------------------------------------------
def game_dir_path(text: str) -> Path:
    """PATH, absolute and with links resolved, if lanspread may keep games there: under
    /srv, /mnt, /media or a user's /home/USER, or the default in the state directory."""
    if not text or not text.isprintable() or any(c in text for c in '\\"'):
        raise invalid(f"the game directory must be a plain path: {text!r}")
    if not os.path.isabs(text):
        raise invalid(f"the game directory must be an absolute path: {text}")
    path = Path(os.path.realpath(text))
    if path == DEFAULT_DIR:
        return path
    if path.is_relative_to(STATE_DIR):
        raise invalid(f"{path} is inside lanspreadd's state directory; games go to {DEFAULT_DIR}")
    if path.is_relative_to(HOME) and len(path.parts) > 3:
        home = Path(*path.parts[:3])
        if not any(Path(user.pw_dir) == home for user in pwd.getpwall()):
            raise invalid(f"{home} is no user's home directory")
        if ":" in str(path):
            raise invalid(f"a game directory under /home cannot have ':' in its path: {path}")
        return path
    if any(path.is_relative_to(place) and path != place for place in PLACES):
        return path
    raise invalid(
        f"lanspread keeps games in a directory under /srv, /mnt, /media or /home/USER "
        f"(or in {DEFAULT_DIR}), not in {path}"
    )


def place_of(path: Path) -> Path:
    """The directory set-game-dir never creates: /home/USER, /srv, /mnt, /media."""
    if path.is_relative_to(HOME):
        return Path(*path.parts[:3])
    return Path(*path.parts[:2]) if path != DEFAULT_DIR else STATE_DIR


def mount_of(path: Path) -> tuple[Path, str]:
    """The mount point and filesystem type that hold `path` (or would, once made)."""
    best, fstype = Path("/"), ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields, _, super_fields = line.partition(" - ")
            point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields.split()[4]))
            if path.is_relative_to(point) and len(point.parts) >= len(best.parts):
                best, fstype = point, super_fields.split()[0]
    return best, fstype


def check_filesystem(path: Path, daemon: pwd.struct_passwd) -> bool:
    """Whether the filesystem of `path` keeps ACLs; refuses FAT, exFAT and NTFS unless
    mounted as lanspread's (then the daemon owns every file, and ACLs are not needed)."""
    point, fstype = mount_of(path)
    if fstype not in NO_UNIX_PERMISSIONS:
        return True
    if os.stat(point).st_uid == daemon.pw_uid:
        return False
    raise invalid(
        f"{path} is on {NO_UNIX_PERMISSIONS[fstype]} ({point}), which keeps no Unix owners "
        "or ACLs: lanspreadd could not write the games copied there. Mount it with "
        f"-o {MOUNT_OPTIONS} (GROUP: a group of the players who copy games in) and run "
        "set-game-dir again, or use a disk formatted ext4, btrfs or xfs"
    )


# ---- root's part ----------------------------------------------------------------------
def create(path: Path) -> list[Path]:
    """Make the missing directories of `path`, each owned like the one it is made in;
    never the place itself (a home directory, /srv). Through directory fds, without
    following links, since a player may be changing the tree meanwhile."""
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise invalid(f"{existing} is not a directory")
    missing = path.parts[len(existing.parts) :]
    if not missing:
        return []
    if not existing.is_relative_to(place_of(path)):
        raise invalid(f"{place_of(path)} does not exist")
    made: list[Path] = []
    fd = os.open(existing, os.O_RDONLY | os.O_DIRECTORY)
    try:
        owner = os.fstat(fd)
        for name in missing:
            os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            os.fchown(fd, owner.st_uid, owner.st_gid)
            made.append((made[-1] if made else existing) / name)
    finally:
        os.close(fd)
    return made


def can_search(directory: Path, daemon: pwd.struct_passwd) -> bool:
    """Asked of the kernel as lanspread, rather than worked out from modes and ACLs."""
    test = subprocess.run(
        ["test", "-x", str(directory)],
        check=False,
        user=daemon.pw_uid,
        group=daemon.pw_gid,
        extra_groups=[],
    )
    return test.returncode == 0


def give_access(path: Path, daemon: pwd.struct_passwd, uses_acls: bool) -> list[str]:
    """ACLs: lanspread may write every directory and read every file of `path`, and the
    directory's owner (a player) may change what lanspread creates there. Outside /home,
    lanspread may also pass through the directories above (a disk mounted under a
    private directory, /media/USER); under /home the unit binds `path` in instead."""
    if not uses_acls:
        return []
    steps = []
    if not path.is_relative_to(HOME):
        for above in reversed(path.parents[:-1]):
            if not can_search(above, daemon):
                fd = os.open(above, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    acl.grant(fd, {daemon.pw_uid: acl.X})
                finally:
                    os.close(fd)
                steps.append(f"lanspread may now pass through {above}")
    owner = os.stat(path).st_uid
    players = {} if owner in (0, daemon.pw_uid) else {owner: acl.RWX}
    try:
        changed = acl.grant_tree(
            str(path),
            dirs={daemon.pw_uid: acl.RWX},
            files={daemon.pw_uid: acl.R},
            default={daemon.pw_uid: acl.RWX, **players},
        )
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            _, fstype = mount_of(path)
            raise ClientError(
                f"{path} is on {fstype}, which does not keep POSIX ACLs: use a disk "
                "formatted ext4, btrfs or xfs, or mount it with the acl option",
                EXIT_FAILED,
            ) from None
        raise
    whose = f"; {pwd.getpwuid(owner).pw_name} may change what it adds" if players else ""
    steps.append(f"gave lanspread access to {path} ({changed} files and directories){whose}")
    return steps


def unit_value(path: Path, prefix: str = "") -> str:
    """A path in a unit file: quoted, with `%` kept from specifier expansion."""
    return f'"{prefix}{str(path).replace("%", "%%")}"'


def drop_in_text(path: Path) -> str | None:
    """What lanspreadd.service needs to use `path`; None for the default directory. A
    missing path is ignored ('-'): the daemon then uses the default until it is back."""
    if path == DEFAULT_DIR:
        return None
    head = [
        "# Written by `lanspreadctl set-game-dir`: lets lanspreadd use its game directory.",
        "# Run it again to change the directory; delete this file to withdraw the access.",
    ]
    if path.is_relative_to(HOME):
        body = ["[Service]", "ProtectHome=tmpfs", f"BindPaths={unit_value(path, '-')}"]
    else:
        body = [
            "[Unit]",
            f"WantsMountsFor={unit_value(path)}",
            "",
            "[Service]",
            f"ReadWritePaths={unit_value(path, '-')}",
        ]
    return "\n".join([*head, *body]) + "\n"


def write_drop_in(text: str | None) -> bool:
    """Replace the drop-in atomically (or remove it); whether anything changed."""
    try:
        old: str | None = DROP_IN.read_text("utf-8")
    except FileNotFoundError:
        old = None
    if old == text:
        return False
    if text is None:
        DROP_IN.unlink()
        return True
    DROP_IN.parent.mkdir(parents=True, exist_ok=True)
    tmp = DROP_IN.with_name(f".{DROP_IN.name}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, DROP_IN)
    return True


def prepare(path: Path) -> list[str]:
    """Everything root does to the filesystem, in a thread of its own."""
    try:
        daemon = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise ClientError(f"there is no {SERVICE_USER} user: is lanspread installed?", 1) from None
    uses_acls = check_filesystem(path, daemon)
    steps = [f"created {made}" for made in create(path)]
    if not path.is_dir():
        raise invalid(f"{path} is not a directory")
    steps += give_access(path, daemon, uses_acls)
    return steps


# ---- systemd over D-Bus ---------------------------------------------------------------
async def systemd_call(
    client: Client,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    path: str = SYSTEMD_PATH,
    interface: str = SYSTEMD_MANAGER,
    interactive: bool = False,
) -> list[Any]:
    """A call to systemd; `interactive`: polkit may ask the player for a password."""
    try:
        return await client.call(
            path, interface, member, signature, body, destination=SYSTEMD, interactive=interactive
        )
    except ClientError as exc:
        if exc.name in DENIED:
            raise ClientError(str(exc), EXIT_DENIED, exc.name) from None
        raise


async def unit_property(client: Client, unit: str, interface: str, name: str) -> Any:
    [path] = await systemd_call(client, "LoadUnit", "s", [unit])
    [value] = await systemd_call(
        client,
        "Get",
        "ss",
        [f"{SYSTEMD}.{interface}", name],
        path=path,
        interface="org.freedesktop.DBus.Properties",
    )
    return unwrap(value)


async def unit_job(client: Client, method: str, unit: str, interactive: bool = False) -> str:
    """Start or restart `unit` and wait for the job to end; systemd's result ('done',
    'failed', ...)."""
    ended: dict[str, str] = {}
    changed = asyncio.Event()

    def on_signal(msg: Message) -> None:
        if msg.member == "JobRemoved" and msg.interface == SYSTEMD_MANAGER:
            ended[msg.body[1]] = msg.body[3]
            changed.set()

    await systemd_call(client, "Subscribe")
    await client.subscribe(
        f"type='signal',sender='{SYSTEMD}',interface='{SYSTEMD_MANAGER}',member='JobRemoved'",
        on_signal,
    )
    [job] = await systemd_call(client, method, "ss", [unit, "replace"], interactive=interactive)

    async def until_ended() -> str:
        while job not in ended:
            changed.clear()
            await changed.wait()
        return ended[job]

    try:
        return await asyncio.wait_for(until_ended(), JOB_TIMEOUT)
    except TimeoutError:
        raise ClientError(f"{unit} did not {method[:-4].lower()} in time", EXIT_FAILED) from None


def escape_unit_path(path: Path) -> str:
    """`systemd-escape --path`: the instance name whose %f is `path`."""
    text = str(path).strip("/")
    if not text:
        return "-"
    out = []
    for index, byte in enumerate(text.encode("utf-8", "surrogateescape")):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_.") and (index or char != "."):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


# ---- the command ----------------------------------------------------------------------
async def set_game_dir(client: Client, text: str) -> Outcome:
    """See the module's docstring; raises ClientError with the exit code and message."""
    if client.bus_spec != "system" or not await packaged(client):
        await client.manager("SetGameDir", "s", text)
        return Outcome(text)
    if os.geteuid() != 0:
        return await through_helper(client, text)
    try:
        outcome = await as_root(client, text)
    except ClientError as exc:
        tell_systemd(str(exc))
        raise
    tell_systemd(f"game directory is now {outcome.path}")
    return outcome


def tell_systemd(status: str) -> None:
    """Started as the helper unit, its status says how it went (`systemctl status`)."""
    if os.environ.get("NOTIFY_SOCKET"):
        sdnotify.SystemdNotifier().notify(f"STATUS={status}")


async def packaged(client: Client) -> bool:
    """Whether the system has lanspreadd.service (the package), not a daemon run by hand."""
    try:
        state = await unit_property(client, SERVICE, "Unit", "LoadState")
    except ClientError:
        return False
    return bool(state == "loaded")


async def refuse_if_busy(client: Client) -> None:
    try:
        games = await client.manager("ListGames")
    except ClientError as exc:
        if exc.code == EXIT_UNREACHABLE:
            return  # not running: nothing to interrupt
        raise
    busy = [f"{g['Operation']} of {g['Id']}" for g in games if g["Operation"]]
    if busy:
        raise ClientError(
            f"lanspreadd is busy ({', '.join(busy)}) and must restart to use another "
            "directory: wait or cancel, then run set-game-dir again",
            EXIT_FAILED,
            ERROR_PREFIX + "Busy",
        )


async def as_root(client: Client, text: str) -> Outcome:
    path = game_dir_path(text)
    await refuse_if_busy(client)
    outcome = Outcome(str(path))
    outcome.steps += await asyncio.to_thread(prepare, path)
    if await asyncio.to_thread(write_drop_in, drop_in_text(path)):
        outcome.steps.append(
            f"{SERVICE} may now write {path} ({DROP_IN})"
            if path != DEFAULT_DIR
            else f"removed {DROP_IN}"
        )
        await systemd_call(client, "Reload")
        if await unit_property(client, SERVICE, "Unit", "ActiveState") == "active":
            result = await unit_job(client, "RestartUnit", SERVICE)
            if result != "done":
                raise ClientError(
                    f"restarting {SERVICE} {result}: `systemctl status {SERVICE}` says why",
                    EXIT_FAILED,
                )
            outcome.steps.append(f"restarted {SERVICE}")
    await client.manager("SetGameDir", "s", str(path))
    return outcome


async def through_helper(client: Client, text: str) -> Outcome:
    path = game_dir_path(text)
    with contextlib.suppress(KeyError):
        await asyncio.to_thread(check_filesystem, path, pwd.getpwnam(SERVICE_USER))
    unit = HELPER.format(escape_unit_path(path))
    as_root_too = f"as root, run: lanspreadctl set-game-dir {shlex.quote(str(path))}"
    if len(unit) > 255:
        raise invalid(f"{path} is too long for a unit name; {as_root_too}")
    try:
        result = await unit_job(client, "StartUnit", unit, interactive=True)
    except ClientError as exc:
        if exc.code == EXIT_DENIED:
            raise ClientError(
                f"not authorised to start {unit} ({exc}); {as_root_too}", EXIT_DENIED, exc.name
            ) from None
        raise
    if result != "done":
        status = await unit_property(client, unit, "Service", "StatusText")
        code = await unit_property(client, unit, "Service", "ExecMainStatus")
        raise ClientError(
            status or f"{unit} {result}: `journalctl -u {shlex.quote(unit)}` says why",
            code if code in (EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED) else EXIT_FAILED,
        )
    return Outcome(str(path), [f"{unit} gave lanspreadd access"])


__all__ = ["Outcome", "set_game_dir"]
