"""Data path speed: lanspread beside kernel sendfile, rsync and nginx + curl, in one run.

Everything listens on 127.0.0.1 and works in one temporary directory, removed at the
end. A generated game (--size bytes of random data in stored RAR5 volumes) is moved
each way --runs times, the ways interleaved, and the medians are printed: MB/s, and
CPU seconds per GB of the receiving and of the sending processes, their children
included (read from /proc before and after for long-lived servers and lanspreadd,
from wait4 for the processes a run starts). The install part unpacks one stored RAR
of --size with lanspread's install, with `unar`, and copies the same bytes with `cp`.

    sudo bench/setup     # rsync, nginx and curl: scripts/setup does not install them
    .venv/bin/python bench/datapath.py --size 1G --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lanspreadd.archive.writer import Entry, write_rar5, write_rar5_volumes
from lanspreadd.core.install import GameFiles
from tests.support import Daemon, PrivateBus, bus_driver_call, call, disconnect, wait_for

GAME = "sample-game"
CLK_TCK = os.sysconf("SC_CLK_TCK")
VOLUME = 256 << 20
HOST = "127.0.0.1"

SENDFILE = "kernel sendfile (plain TCP)"
RSYNC = "rsync daemon, whole file"
RSYNC_FSYNC = "rsync daemon, then fsync"
CURL = "nginx + curl -o"
CURL_CHECKED = "nginx + curl, then sha256sum and fsync"
ONE_SOURCE = "lanspread, 1 source (hashed, fsynced)"
THREE_SOURCES = "lanspread, 3 sources"
TRANSFER_ROWS = (SENDFILE, RSYNC, RSYNC_FSYNC, CURL, CURL_CHECKED, ONE_SOURCE, THREE_SOURCES)

CP = "cp"
CP_FSYNC = "cp, then fsync"
UNAR = "unar"
UNAR_FSYNC = "unar, then fsync"
INSTALL = "lanspread install (fsynced)"
INSTALL_ROWS = (CP, CP_FSYNC, UNAR, UNAR_FSYNC, INSTALL)

TRANSFER_TOOLS = ("rsync", "nginx", "curl", "sha256sum", "sync")
INSTALL_TOOLS = ("cp", "unar", "sync")

SENDFILE_SERVER = textwrap.dedent(
    """
    import os, socket, sys
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0)); srv.listen(1)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    for path in sys.argv[1:]:
        with open(path, "rb") as fh:
            size, offset = os.fstat(fh.fileno()).st_size, 0
            while offset < size:
                offset += os.sendfile(conn.fileno(), fh.fileno(), offset, size - offset)
    conn.close()
    """
)

SENDFILE_RECEIVER = textwrap.dedent(
    """
    import os, socket, sys
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    view = memoryview(bytearray(4 << 20))
    while n := sock.recv_into(view):
        os.write(out, view[:n])
    os.close(out)
    """
)

# Timed inside the process, as the daemon runs it: without Python's start-up.
INSTALLER = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    from lanspreadd.core.install import GameFiles

    def cpu():
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    began, used = time.monotonic(), cpu()
    GameFiles(Path(sys.argv[1])).install()
    print(json.dumps([time.monotonic() - began, cpu() - used]))
    """
)


@dataclass(frozen=True)
class Sample:
    """One run of one way: wall seconds, and CPU seconds on each end."""

    seconds: float
    recv_cpu: float
    send_cpu: float = 0.0

    def __add__(self, other: Sample) -> Sample:
        return Sample(
            self.seconds + other.seconds,
            self.recv_cpu + other.recv_cpu,
            self.send_cpu + other.send_cpu,
        )


@dataclass(frozen=True)
class Median:
    """A row's medians, each taken on its own, and its slowest and fastest run."""

    rate: float  # bytes per second
    recv: float  # CPU seconds per GB
    send: float
    slowest: float  # bytes per second
    fastest: float

    @classmethod
    def of(cls, samples: Sequence[Sample], size: int) -> Median:
        gb = size / 1e9
        return cls(
            size / statistics.median(s.seconds for s in samples),
            statistics.median(s.recv_cpu for s in samples) / gb,
            statistics.median(s.send_cpu for s in samples) / gb,
            size / max(s.seconds for s in samples),
            size / min(s.seconds for s in samples),
        )

    @property
    def spread(self) -> str:
        """Runs vary on a shared machine: the range says how much."""
        return f"{self.slowest / 1e6:.0f}-{self.fastest / 1e6:.0f}"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def find_tool(name: str) -> str | None:
    """nginx lives in /usr/sbin, which a user's PATH may lack."""
    path = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def proc_cpu(pid: int) -> float:
    """CPU seconds of `pid`, with its children that have exited and been reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def live_children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a server and every process under it, live or reaped."""
    return proc_cpu(pid) + sum(tree_cpu(child) for child in live_children(pid))


def timed(cmd: Sequence[str], **kwargs: Any) -> Sample:
    """Run a tool to its end: wall time and its CPU, with its children (wait4)."""
    began = time.monotonic()
    proc = subprocess.Popen(cmd, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
    return Sample(elapsed, usage.ru_utime + usage.ru_stime)


def make_game(root: Path, size: int, volume_size: int | None = VOLUME) -> None:
    """A game of `size` bytes of random data: stored RAR5 volumes, or one archive."""
    root.mkdir(parents=True)
    block = os.urandom(1 << 20)
    data = (block * (size // len(block) + 1))[:size]
    if volume_size is None:
        write_rar5(root / f"{GAME}.rar", [Entry("data.bin", data)])
    else:
        write_rar5_volumes(root / f"{GAME}.part1.rar", [Entry("data.bin", data)], volume_size)
    (root / "version.ini").write_text("1.0\n")
    # On disk before any run: its writeback would otherwise fall into the first ones.
    fsynced(game_files(root))


def game_files(game: Path) -> list[Path]:
    return sorted(p for p in game.iterdir() if p.is_file())


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


@contextmanager
def server(cmd: Sequence[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process for the length of the benchmark, stopped however it ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or listening(port), 20, f"{cmd[0]} to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {log.read_text(errors='replace')}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextmanager
def rsync_daemon(game: Path, work: Path) -> Iterator[tuple[int, int]]:
    """`rsync --daemon` serving the game as module `game`: (pid, port)."""
    work.mkdir()
    port = free_tcp_port()
    owner = f"uid = {os.getuid()}\ngid = {os.getgid()}\n" if os.geteuid() == 0 else ""
    config = work / "rsyncd.conf"
    config.write_text(
        f"use chroot = no\nreverse lookup = no\n{owner}[game]\npath = {game}\nread only = yes\n"
    )
    cmd = [
        str(find_tool("rsync")),
        "--daemon",
        "--no-detach",
        f"--config={config}",
        f"--address={HOST}",
        f"--port={port}",
        f"--log-file={work / 'rsyncd.log'}",
    ]
    with server(cmd, port, work / "stdout.log") as proc:
        yield proc.pid, port


@contextmanager
def nginx(game: Path, work: Path) -> Iterator[tuple[int, int]]:
    """nginx with a private config, pid file, logs and temp paths: (master pid, port)."""
    work.mkdir()
    port = free_tcp_port()
    temps = "".join(
        f"    {kind}_temp_path {work / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root root;\n" if os.geteuid() == 0 else ""
    config = work / "nginx.conf"
    config.write_text(
        f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\n{user}"
        f"error_log {work / 'error.log'};\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n    sendfile on;\n{temps}"
        f"    default_type application/octet-stream;\n"
        f"    server {{ listen {HOST}:{port}; root {game}; }}\n}}\n"
    )
    cmd = [str(find_tool("nginx")), "-p", str(work), "-c", str(config), "-e", "stderr"]
    with server(cmd, port, work / "stderr.log") as proc:
        yield proc.pid, port


def sendfile_run(game: Path, out: Path) -> Sample:
    """Plain TCP: the kernel's sendfile into a Python receiver writing a file."""
    files = [str(p) for p in game_files(game)]
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDFILE_SERVER, *files], stdout=subprocess.PIPE, text=True
    )
    assert sender.stdout is not None
    with sender.stdout:
        port = sender.stdout.readline().strip()
    received = timed([sys.executable, "-c", SENDFILE_RECEIVER, str(out / "sendfile.out"), port])
    _, status, usage = os.wait4(sender.pid, 0)
    sender.returncode = os.waitstatus_to_exitcode(status)
    return Sample(received.seconds, received.recv_cpu, usage.ru_utime + usage.ru_stime)


def fsynced(files: Sequence[Path]) -> Sample:
    """`sync FILE...` fsyncs just those files."""
    return timed([str(find_tool("sync")), *map(str, files)])


def rsync_run(daemon: tuple[int, int], out: Path) -> tuple[Sample, Sample]:
    """rsync:// into a new directory, then a separate fsync of what arrived."""
    pid, port = daemon
    before = tree_cpu(pid)
    got = timed(
        [str(find_tool("rsync")), "-rt", "--whole-file", f"rsync://{HOST}:{port}/game/", f"{out}/"]
    )
    # The daemon's child for this connection is reaped into its parent's CPU.
    wait_for(lambda: not live_children(pid), 20, "rsync daemon's child to exit")
    copied = Sample(got.seconds, got.recv_cpu, tree_cpu(pid) - before)
    return copied, copied + fsynced(game_files(out))


def curl_run(server_: tuple[int, int], names: Sequence[str], out: Path) -> tuple[Sample, Sample]:
    """curl -o of each file over one connection, then sha256sum and fsync of them."""
    pid, port = server_
    before = tree_cpu(pid)
    args = [a for name in names for a in (f"http://{HOST}:{port}/{name}", "-o", str(out / name))]
    got = timed([str(find_tool("curl")), "-sS", "--fail", *args])
    fetched = Sample(got.seconds, got.recv_cpu, tree_cpu(pid) - before)
    files = [out / name for name in names]
    hashed = timed([str(find_tool("sha256sum")), *map(str, files)], stdout=subprocess.DEVNULL)
    return fetched, fetched + hashed + fsynced(files)


async def run_job(address: str, member: str, signature: str, body: list[Any]) -> float:
    """Start a job on the daemon; seconds until its Completed signal, which must succeed."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        ended: dict[str, list[Any]] = {}
        arrived = asyncio.Event()

        def take(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "Completed":
                ended[str(msg.path)] = msg.body
                arrived.set()

        bus.add_message_handler(take)
        rule = "type='signal',interface='org.lanspread.Lanspread1.Job',member='Completed'"
        await bus_driver_call(bus, "AddMatch", rule)
        began = time.monotonic()
        reply = await call(bus, member, signature, body)
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name} {reply.body}")
        job = str(reply.body[0])
        async with asyncio.timeout(3600):
            while job not in ended:
                arrived.clear()
                await arrived.wait()
        elapsed = time.monotonic() - began
        success, message, state, error = ended[job]
        if not success:
            raise RuntimeError(f"{member} ended {state}: {error} {message}")
        return elapsed
    finally:
        await disconnect(bus)


def lanspread_run(game: Path, sources: int, work: Path) -> Sample:
    """N source daemons and one receiver, each on its own bus; CPU of the daemons."""
    daemons: list[Daemon] = []
    try:
        for i in range(sources + 1):
            base = work / f"peer{i}"
            (base / "games").mkdir(parents=True)
            bus = PrivateBus(base)  # its socket's path must stay under 108 bytes
            daemons.append(Daemon(bus, base / "games", base / "state", name=f"peer{i}"))
            if i < sources:
                shutil.copytree(game, base / "games" / GAME, copy_function=os.link)
            daemons[-1].start(wait=False)
        for daemon in daemons:
            daemon.wait_ready()
        receiver, senders = daemons[-1], daemons[:-1]
        for sender in senders:
            assert receiver.ctl("connect", f"{HOST}:{sender.port}").returncode == 0
        # Sources hash a game before they announce it, as a long-running one would have.
        wait_for(
            lambda: receiver.ctl_json("show", GAME)["sources"] >= sources,
            120,
            f"{sources} sources of {GAME}",
            every=0.2,
        )
        pids = [d.proc.pid for d in daemons if d.proc is not None]
        before = {pid: proc_cpu(pid) for pid in pids}
        elapsed = asyncio.run(run_job(receiver.bus.address, "Download", "sb", [GAME, False]))
        used = {pid: proc_cpu(pid) - before[pid] for pid in pids}
        return Sample(elapsed, used[pids[-1]], sum(used[p] for p in pids[:-1]))
    finally:
        for daemon in daemons:
            if daemon.proc is not None:
                daemon.stop()
            daemon.bus.stop()


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def transfer_rounds(game: Path, work: Path, runs: int) -> dict[str, list[Sample]]:
    """Every way once per round, rounds one after another; outputs removed at once."""
    samples: dict[str, list[Sample]] = {row: [] for row in TRANSFER_ROWS}
    names = [p.name for p in game_files(game)]
    work.mkdir()
    with ExitStack() as stack:
        rsyncd = stack.enter_context(rsync_daemon(game, work / "rsyncd"))
        web = stack.enter_context(nginx(game, work / "nginx"))
        out = work / "out"
        for _ in range(runs):
            samples[SENDFILE].append(sendfile_run(game, fresh(out)))
            for row, sample in zip(
                (RSYNC, RSYNC_FSYNC), rsync_run(rsyncd, fresh(out)), strict=True
            ):
                samples[row].append(sample)
            for row, sample in zip(
                (CURL, CURL_CHECKED), curl_run(web, names, fresh(out)), strict=True
            ):
                samples[row].append(sample)
            samples[ONE_SOURCE].append(lanspread_run(game, 1, fresh(out)))
            samples[THREE_SOURCES].append(lanspread_run(game, 3, fresh(out)))
            shutil.rmtree(out)
    return samples


def install_run(game: Path) -> Sample:
    result = subprocess.run(
        [sys.executable, "-c", INSTALLER, str(game)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"install failed: {result.stderr}")
    seconds, cpu = json.loads(result.stdout)
    GameFiles(game).uninstall()
    return Sample(float(seconds), float(cpu))


def install_rounds(game: Path, work: Path, runs: int) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {row: [] for row in INSTALL_ROWS}
    (archive,) = game.glob("*.rar")
    for _ in range(runs):
        out = fresh(work)
        copied = timed([str(find_tool("cp")), str(archive), str(out / archive.name)])
        samples[CP].append(copied)
        samples[CP_FSYNC].append(copied + fsynced([out / archive.name]))
        out = fresh(work)
        unpacked = timed(
            [str(find_tool("unar")), "-q", "-D", "-o", str(out), str(archive)],
            stdout=subprocess.DEVNULL,
        )
        samples[UNAR].append(unpacked)
        samples[UNAR_FSYNC].append(unpacked + fsynced(game_files(out)))
        shutil.rmtree(out)
        samples[INSTALL].append(install_run(game))
    return samples


def transfer_table(medians: dict[str, Median]) -> list[str]:
    base, rsync = medians[SENDFILE], medians[RSYNC_FSYNC]
    lines = [
        f"{'what':<40} {'MB/s':>6} {'runs MB/s':>11} {'recv CPU s/GB':>13} {'send CPU s/GB':>13} "
        f"{'x rsync+fsync':>13} {'x sendfile':>10}"
    ]
    for row in TRANSFER_ROWS:
        m = medians[row]
        lines.append(
            f"{row:<40} {m.rate / 1e6:>6.0f} {m.spread:>11} {m.recv:>13.2f} {m.send:>13.2f} "
            f"{m.rate / rsync.rate:>13.2f} {m.rate / base.rate:>10.2f}"
        )
    return lines


def install_table(medians: dict[str, Median]) -> list[str]:
    ours = medians[INSTALL]
    lines = [
        f"{'what':<40} {'MB/s':>6} {'runs MB/s':>11} {'CPU s/GB':>13} {'lanspread x this':>16}"
    ]
    for row in INSTALL_ROWS:
        m = medians[row]
        lines.append(
            f"{row:<40} {m.rate / 1e6:>6.0f} {m.spread:>11} {m.recv:>13.2f} "
            f"{ours.rate / m.rate:>16.2f}"
        )
    return lines


# Issue 15's targets: what, the value the medians give, and the bound it must meet.
Target = tuple[str, float, str, float]


def transfer_targets(m: dict[str, Median]) -> list[Target]:
    one, three = m[ONE_SOURCE], m[THREE_SOURCES]
    return [
        ("lanspread 1 source / rsync+fsync", one.rate / m[RSYNC_FSYNC].rate, ">=", 0.9),
        ("lanspread receiver CPU s/GB", one.recv, "<=", 1.2),
        ("lanspread sender CPU / sendfile's", one.send / m[SENDFILE].send, "<=", 2.0),
        ("lanspread 3 sources / 1 source", three.rate / one.rate, ">=", 0.95),
    ]


def install_targets(m: dict[str, Median]) -> list[Target]:
    """The install is durable (fsynced), `cp` alone is not: both ratios are shown."""
    return [
        ("lanspread install / cp", m[INSTALL].rate / m[CP].rate, ">=", 0.8),
        ("lanspread install / (cp, then fsync)", m[INSTALL].rate / m[CP_FSYNC].rate, ">=", 0.8),
    ]


def target_lines(targets: list[Target]) -> list[str]:
    lines = []
    for what, got, sense, bound in targets:
        met = got >= bound if sense == ">=" else got <= bound
        lines.append(
            f"  {what:<38} {got:>6.2f}  {sense} {bound:<4.2f} {'met' if met else 'missed'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="game size (default 1G)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument(
        "--parts", nargs="+", choices=("transfer", "install"), default=["transfer", "install"]
    )
    args = parser.parse_args()
    size = parse_size(args.size)
    needed = (TRANSFER_TOOLS if "transfer" in args.parts else ()) + (
        INSTALL_TOOLS if "install" in args.parts else ()
    )
    missing = sorted({t for t in needed if find_tool(t) is None})
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run bench/setup (and scripts/setup) as root")
    load = os.getloadavg()[0]
    targets: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lanspread-bench-") as tmp:
        scratch = Path(tmp)
        if "transfer" in args.parts:
            game = scratch / "game"
            make_game(game, size)
            total = sum(p.stat().st_size for p in game_files(game))
            print(
                f"transfer: {total / 1e9:.3g} GB in {len(game_files(game)) - 1} stored RAR5 "
                f"volume(s), loopback, {os.cpu_count()} CPUs, load {load:.2f} at start, "
                f"medians of {args.runs} interleaved runs",
                flush=True,
            )
            samples = transfer_rounds(game, scratch / "transfer", args.runs)
            medians = {row: Median.of(s, total) for row, s in samples.items()}
            print("\n".join(transfer_table(medians)), flush=True)
            targets += target_lines(transfer_targets(medians))
            shutil.rmtree(game)
        if "install" in args.parts:
            game = scratch / "install-game"
            make_game(game, size, volume_size=None)
            total = size
            print(
                f"\ninstall: one stored RAR5 of {total / 1e9:.3g} GB, load "
                f"{os.getloadavg()[0]:.2f} at start, medians of {args.runs} interleaved runs",
                flush=True,
            )
            samples = install_rounds(game, scratch / "install", args.runs)
            medians = {row: Median.of(s, total) for row, s in samples.items()}
            print("\n".join(install_table(medians)), flush=True)
            targets += target_lines(install_targets(medians))
    print("\nissue 15 targets:\n" + "\n".join(targets))
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
