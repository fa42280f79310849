"""Debian 13 machines booted with systemd as PID 1 in systemd-nspawn, for the booted test.

The root file system is made once with debootstrap (the base system plus the package's
dependencies from debian/control) and cached as a tarball under `.cache/booted/`, keyed by
its package list, so only the first run on a machine downloads anything. Every machine
unpacks its own copy, installs the .deb built from the checkout with apt in a chroot, and
boots on a bridge inside a network namespace made for this run. Tests then use it as a
user would: commands run inside the machine with `nsenter`, as root or as a player.

Everything is bounded in time, and `Machine.destroy`/`Lan.close` kill the container and
delete the namespace whatever state they are in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "booted"
SUITE = "trixie"
# What debootstrap installs: a bootable systemd with D-Bus, logind and polkit.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "polkitd",
    "libpam-systemd",
    "iproute2",
    "procps",
    "python3",
)
SUBNET = "10.213.78"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Machines and scratch roots live in WORK, named by the test run's process id.
WORK = Path("/var/tmp")
MACHINE_PREFIX = "lanspread-booted-"
# Where files handed to a machine land: not under /tmp or /run, which are tmpfs inside.
INBOX = "/opt/lanspread-test"


# Seconds spent on each step, printed at the end of the run (see conftest.py).
TIMINGS: dict[str, float] = {}


class MachineError(AssertionError):
    """A machine could not be made, booted or driven; the message says what it printed."""


def host_run(
    cmd: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command that must succeed, with its output in the error if it does not."""
    result = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
        cwd=cwd,
    )
    if result.returncode != 0:
        raise MachineError(
            f"{' '.join(cmd)} exited {result.returncode}\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def start_time(pid: int) -> str | None:
    """A process's start time in clock ticks: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def kill_recorded(directory: Path) -> None:
    """SIGKILL the processes a machine recorded at boot (its PID 1 first), if still the same."""
    with contextlib.suppress(OSError):
        for line in (directory / "pids").read_text().splitlines():
            pid, started = line.split()
            if start_time(int(pid)) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers() -> None:
    """Remove the machines and networks of runs that died without tearing down (SIGKILL):
    only those whose run's process is gone."""
    for path in WORK.glob(f"{MACHINE_PREFIX}*"):
        owner = path.name.removeprefix(MACHINE_PREFIX).split("-")[0]
        if owner.isdigit() and not alive(int(owner)):
            kill_recorded(path)
            subprocess.run(
                ["umount", "-l", str(path / "root/proc")], check=False, capture_output=True
            )
            shutil.rmtree(path, ignore_errors=True)
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30
    )
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        ours = len(parts) == 3 and parts[0] == "lsboot" and parts[1].isdigit()
        if ours and not alive(int(parts[1])):
            subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


def package_dependencies() -> list[str]:
    """The Depends and Recommends of debian/control, so the cached root already has them."""
    text = (ROOT / "debian" / "control").read_text()
    binary = text.split("\nPackage:", 1)[1]
    names: list[str] = []
    for field in ("Depends", "Recommends"):
        match = re.search(rf"^{field}:(.*(?:\n[ \t].*)*)", binary, re.MULTILINE)
        if match is None:
            continue
        for item in match.group(1).replace("\n", " ").split(","):
            name = item.strip().split(" ")[0].split("|")[0].strip()
            if name and not name.startswith("${"):
                names.append(name)
    return sorted(set(names))


def mirror() -> str:
    """The Debian mirror this machine's apt already uses (DEBIAN_MIRROR overrides it)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    lists = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in lists:
        if path.exists():
            for line in path.read_text().splitlines():
                words = line.split()
                uris = [w for w in words[1:] if "://" in w]
                if words[:1] == ["deb"] and uris and uris[0].rstrip("/").endswith("/debian"):
                    return uris[0]
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time: developers share the checkout, and so the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def proc_mounted(root: Path) -> Iterator[None]:
    """Maintainer scripts in a chroot want /proc."""
    host_run(["mount", "-t", "proc", "proc", str(root / "proc")], timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False, timeout=30)


def chroot_apt(root: Path, *args: str, timeout: float = 600) -> None:
    env = {"PATH": PATH, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    with proc_mounted(root):
        host_run(
            ["chroot", str(root), "apt-get", "-y", "-q", "--no-install-recommends", *args],
            timeout=timeout,
            env=env,
        )


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # it becomes / for unprivileged users
    host_run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], timeout=300)


def pack(root: Path, tarball: Path) -> None:
    partial = tarball.with_suffix(".partial")
    host_run(["tar", "--numeric-owner", "-cf", str(partial), "-C", str(root), "."], timeout=300)
    partial.rename(tarball)


def cached_root(extra: Sequence[str] = ()) -> Path:
    """The tarball of a Debian 13 root with BASE_PACKAGES, the package's dependencies and
    `extra`; built on first use (debootstrap, then apt for dependencies, since
    debootstrap's resolver does not follow virtual packages)."""
    packages = sorted(set(package_dependencies()) | set(extra))
    key = hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, packages]).encode()).hexdigest()
    prefix = "trixie-" + "".join(f"{e}-" for e in sorted(extra))
    tarball = CACHE / f"{prefix}{key[:12]}.tar"
    base = cached_root() if extra else None  # before the lock: it takes it too
    with cache_lock():
        if tarball.exists():
            return tarball
        started = time.monotonic()
        for partial in CACHE.glob("root-*"):  # a build that was killed; none runs now
            subprocess.run(["umount", "-l", str(partial / "root/proc")], check=False)
            shutil.rmtree(partial, ignore_errors=True)
        for stale in CACHE.glob(f"{prefix}*.tar"):  # an older package list
            if re.fullmatch(re.escape(prefix) + r"[0-9a-f]{12}\.tar", stale.name):
                stale.unlink()
        work = Path(tempfile.mkdtemp(prefix="root-", dir=CACHE))
        try:
            root = work / "root"
            if base is not None:
                unpack(base, root)
            else:
                host_run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(BASE_PACKAGES)}",
                        SUITE,
                        str(root),
                        mirror(),
                    ],
                    timeout=1200,
                )
                (root / "etc/apt/sources.list").write_text(f"deb {mirror()} {SUITE} main\n")
            chroot_apt(root, "install", *packages)
            chroot_apt(root, "clean", timeout=60)
            pack(root, tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        TIMINGS[f"build {prefix}root"] = time.monotonic() - started
        return tarball


def build_deb() -> Path:
    """The package from the checkout, built as the README says."""
    result = host_run([str(ROOT / "packaging" / "build-deb")], timeout=900)
    deb = Path(result.stdout.strip().splitlines()[-1])
    if not deb.is_file():
        raise MachineError(f"build-deb printed no package: {result.stdout}")
    return deb


class Lan:
    """A bridge in a network namespace of this run; machines plug into it."""

    def __init__(self) -> None:
        self.namespace = f"lsboot-{os.getpid()}-{secrets.token_hex(3)}"
        host_run(["ip", "netns", "add", self.namespace], timeout=30)
        try:
            for cmd in (
                ["link", "set", "lo", "up"],
                ["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"],
                ["link", "set", "br0", "up"],
            ):
                host_run(["ip", "-n", self.namespace, *cmd], timeout=30)
        except BaseException:
            self.close()
            raise
        self.next_host = 1

    def address(self) -> str:
        self.next_host += 1
        return f"{SUBNET}.{self.next_host}"

    def close(self) -> None:
        """Deleting the namespace deletes the bridge and every veth end in it."""
        subprocess.run(["ip", "netns", "delete", self.namespace], check=False, timeout=30)


NETWORK_UNIT = """[Unit]
Description=Static address of the test LAN (stands in for the machine's network set-up)
DefaultDependencies=no
Before=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=ip link set host0 up multicast on
ExecStart=ip addr add {address}/24 dev host0
ExecStart=ip route add 224.0.0.0/4 dev host0

[Install]
WantedBy=network-online.target
"""


class Machine:
    """One booted Debian 13 with the package installed."""

    def __init__(self, name: str, tarball: Path, deb: Path, lan: Lan) -> None:
        self.name = name
        self.lan = lan
        self.address = lan.address()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{MACHINE_PREFIX}{os.getpid()}-{name}-", dir=WORK))
        self.root = self.dir / "root"
        self.console = self.dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        try:
            unpack(tarball, self.root)
            self._configure()
            inbox = self.root / INBOX.lstrip("/")
            inbox.mkdir(parents=True, exist_ok=True)
            shutil.copy(deb, inbox / deb.name)
            chroot_apt(self.root, "install", f"{INBOX}/{deb.name}", timeout=300)
        except BaseException:
            self.destroy()
            raise

    def _configure(self) -> None:
        etc = self.root / "etc"
        (etc / "hostname").write_text(f"{self.name}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")
        unit = etc / "systemd/system/test-lan.service"
        unit.write_text(NETWORK_UNIT.format(address=self.address))
        wants = etc / "systemd/system/network-online.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")

    # ---- life cycle ----------------------------------------------------------------------
    def boot(self, timeout: float = 120) -> float:
        """Boot and wait until systemd says the system is running; returns the seconds."""
        started = time.monotonic()
        with self.console.open("wb") as console:
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.lan.namespace}",
                    "systemd-nspawn",
                    "-D",
                    str(self.root),
                    "-b",
                    "--register=no",
                    "--keep-unit",
                    "--console=pipe",
                    "--network-bridge=br0",
                    "-M",
                    self.name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": PATH, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )
        deadline = started + timeout
        while self.leader is None:
            self.leader = self._find_leader()
            if self.leader is None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise MachineError(f"{self.name} did not start: {self.console_text()}")
                time.sleep(0.1)
        # For sweep_leftovers, should this run die without tearing down.
        (self.dir / "pids").write_text(
            "".join(f"{pid} {start_time(pid)}\n" for pid in (self.leader, self.proc.pid))
        )
        while True:
            # Nothing to connect to ("offline", or no socket at all) until PID 1 listens on
            # its private socket; from then on --wait waits for the boot to end.
            state = self.run(
                "systemctl",
                "is-system-running",
                "--wait",
                check=False,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            settled = state.stdout.strip() in ("running", "degraded", "maintenance", "stopping")
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state.stdout.strip() != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise MachineError(
                f"{self.name} is {state.stdout.strip()!r} ({state.stderr.strip()}); "
                f"failed units: {failed}; console: {self.console_text()}"
            )
        return time.monotonic() - started

    def _find_leader(self) -> int | None:
        """The container's PID 1: a child of systemd-nspawn that its namespace calls 1 and
        that has become systemd (before that it is nspawn's own child setting up)."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    status = Path(f"/proc/{child}/status").read_text()
                    nspid = next(x for x in status.splitlines() if x.startswith("NSpid:"))
                    booted = os.readlink(f"/proc/{child}/exe").endswith("/systemd")
                    if nspid.split()[-1] == "1" and len(nspid.split()) > 2 and booted:
                        return int(child)
        return None

    def destroy(self) -> None:
        """Kill the container (its PID 1 takes every process in it along) and delete it."""
        if self.leader is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.leader is not None:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{self.leader}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        subprocess.run(["umount", "-l", str(self.root / "proc")], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")[-4000:]
        return ""

    # ---- using it --------------------------------------------------------------------------
    def command(self, *cmd: str, user: str | None = None) -> list[str]:
        """The host command line that runs `cmd` inside, as `run` does; for a process
        that must outlive one call (Popen it)."""
        if self.leader is None:
            raise MachineError(f"{self.name} is not booted")
        env = ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "TERM=dumb"]
        if user is None:
            inner = [*env, "HOME=/root", *cmd]
        else:
            inner = [
                "setpriv",
                f"--reuid={user}",
                f"--regid={user}",
                "--init-groups",
                *env,
                f"HOME=/home/{user}",
                f"USER={user}",
                *cmd,
            ]
        return ["nsenter", "-t", str(self.leader), "-a", *inner]

    def run(
        self,
        *cmd: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 60,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root or as `user` (no login session, as over ssh -T
        without PAM: polkit sees an inactive caller)."""
        result = subprocess.run(
            self.command(*cmd, user=user),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"{self.name}: {' '.join(cmd)} exited {result.returncode}\n"
                f"stdout: {result.stdout[-4000:]}\nstderr: {result.stderr[-4000:]}"
            )
        return result

    def put(self, source: Path, name: str | None = None) -> str:
        """Hand a host file or directory to the machine: its path inside (world-readable)."""
        inside = f"{INBOX}/{name or source.name}"
        target = self.root / inside.lstrip("/")
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        for path in [target, *(target.rglob("*") if target.is_dir() else [])]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return inside

    def unit(self, prop: str, unit: str = "lanspreadd.service") -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self, unit: str = "lanspreadd.service", since: str | None = None) -> str:
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since:
            cmd += ["--since", since]
        return self.run(*cmd).stdout

    def wait_for(
        self, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
    ) -> None:
        """Poll something a user would look at until it holds, for at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name}: {what} not within {timeout} s")
            time.sleep(interval)
