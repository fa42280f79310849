"""Download rate of lanspread versus plain TCP sendfile of the same bytes, side by side.

Runs on loopback: N source daemons and one receiver, each on its own private
D-Bus, download a generated game of --size bytes; the baseline streams the
same archive files with os.sendfile over plain TCP from N server processes.
Prints MB/s for both, their ratio, and CPU seconds per GB on both ends.

    python bench/download.py --size 1G --sources 1 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.archive.writer import Entry, write_rar5_volumes
from lanspreadd.core.hashes import HashCache
from tests.support import Daemon, PrivateBus, call, disconnect

GAME = "sample-game"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SENDFILE_SERVER = textwrap.dedent(
    """
    import os, socket, sys
    files = sys.argv[2:]
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0)); srv.listen(8)
    print(srv.getsockname()[1], flush=True)
    index, count = map(int, sys.argv[1].split("/"))
    conn, _ = srv.accept()
    for path in files:
        size = os.path.getsize(path)
        share = size // count
        start = index * share
        end = size if index == count - 1 else start + share
        with open(path, "rb") as fh:
            offset = start
            while offset < end:
                offset += os.sendfile(conn.fileno(), fh.fileno(), offset, end - offset)
    conn.close()
    """
)

RECEIVER = textwrap.dedent(
    """
    import os, socket, sys
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    socks = [socket.create_connection(("127.0.0.1", int(p))) for p in sys.argv[2:]]
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    import selectors
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    open_socks = len(socks)
    while open_socks:
        for key, _ in sel.select():
            n = key.fileobj.recv_into(view)
            if not n:
                sel.unregister(key.fileobj); open_socks -= 1
            else:
                os.write(out, view[:n])
    os.close(out)
    """
)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def make_game(root: Path, size: int) -> None:
    root.mkdir(parents=True)
    block = os.urandom(1 << 20)
    data = (block * (size // len(block) + 1))[:size]
    write_rar5_volumes(root / f"{GAME}.part1.rar", [Entry("data.bin", data)], 256 << 20)
    (root / "version.ini").write_text("1.0\n")


def baseline(game: Path, sources: int, scratch: Path) -> tuple[float, float, float]:
    files = sorted(str(p) for p in game.glob("*.rar"))
    total = sum(os.path.getsize(f) for f in files)
    servers = []
    for i in range(sources):
        proc = subprocess.Popen(
            [sys.executable, "-c", SENDFILE_SERVER, f"{i}/{sources}", *files],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        servers.append((proc, proc.stdout.readline().strip()))
    start = time.monotonic()
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(scratch / "baseline.out")]
        + [port for _, port in servers]
    )
    # wait4 hands back each process's own CPU time as it exits.
    _, _, rusage = os.wait4(receiver.pid, 0)
    elapsed = time.monotonic() - start
    recv_cpu = rusage.ru_utime + rusage.ru_stime
    send_cpu = 0.0
    for proc, _ in servers:
        _, _, ru = os.wait4(proc.pid, 0)
        send_cpu += ru.ru_utime + ru.ru_stime
        if proc.stdout is not None:
            proc.stdout.close()
    (scratch / "baseline.out").unlink()
    return total / elapsed, send_cpu / (total / 1e9), recv_cpu / (total / 1e9)


async def wait_job(address: str, path: str) -> dict[str, object]:
    bus = await MessageBus(bus_address=address).connect()
    try:
        while True:
            reply = await call(
                bus,
                "GetAll",
                "s",
                ["org.lanspread.Lanspread1.Job"],
                path=path,
                interface="org.freedesktop.DBus.Properties",
            )
            props: dict[str, object] = unwrap(reply.body[0])
            if props["State"] != "running":
                return props
            await asyncio.sleep(0.02)
    finally:
        await disconnect(bus)


async def start_download(address: str) -> str:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await call(bus, "Download", "sb", [GAME, False])
        assert reply.error_name is None, reply.body
        return str(reply.body[0])
    finally:
        await disconnect(bus)


def lanspread(game: Path, sources: int, scratch: Path) -> tuple[float, float, float]:
    total = sum(p.stat().st_size for p in game.iterdir())
    daemons: list[Daemon] = []
    buses: list[PrivateBus] = []
    try:
        for i in range(sources + 1):
            base = scratch / f"peer{i}"
            (base / "bus").mkdir(parents=True)
            (base / "games").mkdir()
            bus = PrivateBus(base / "bus")
            buses.append(bus)
            daemon = Daemon(bus, base / "games", base / "state", name=f"peer{i}")
            daemons.append(daemon)
            if i < sources:
                shutil.copytree(game, base / "games" / GAME, copy_function=os.link)
            daemon.start()
        receiver, senders = daemons[-1], daemons[:-1]
        for sender in senders:
            assert receiver.ctl("connect", f"127.0.0.1:{sender.port}").returncode == 0
        deadline = time.monotonic() + 20
        while receiver.ctl_json("show", GAME)["sources"] < sources:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Hash the sources' files first, as a long-running source would have.
        for sender in senders:
            HashCache(sender.state_dir / "hashes").file_entries(GAME, sender.game_dir / GAME)
        before = {d.proc.pid: cpu_seconds(d.proc.pid) for d in daemons if d.proc}
        start = time.monotonic()
        job = asyncio.run(start_download(receiver.bus.address))
        result = asyncio.run(wait_job(receiver.bus.address, job))
        elapsed = time.monotonic() - start
        assert result["State"] == "finished", result
        after = {pid: cpu_seconds(pid) for pid in before}
        send_cpu = sum(after[d.proc.pid] - before[d.proc.pid] for d in senders if d.proc)
        assert receiver.proc is not None
        recv_cpu = after[receiver.proc.pid] - before[receiver.proc.pid]
        return total / elapsed, send_cpu / (total / 1e9), recv_cpu / (total / 1e9)
    finally:
        for daemon in daemons:
            daemon.stop()
        for bus in buses:
            bus.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="game size (default 1G)")
    parser.add_argument("--sources", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="lanspread-bench-") as tmp:
        scratch = Path(tmp)
        game = scratch / "game"
        make_game(game, size)
        print(f"game: {size / 1e9:.2f} GB, loopback, {os.cpu_count()} CPUs")
        header = (
            f"{'sources':>7} {'sendfile MB/s':>14} {'lanspread MB/s':>15} {'ratio':>6} "
            f"{'CPU s/GB send (base/ls)':>24} {'CPU s/GB recv (base/ls)':>24}"
        )
        print(header)
        for sources in args.sources:
            run = scratch / f"run{sources}"
            run.mkdir()
            base = baseline(game, sources, run)
            ours = lanspread(game, sources, run)
            print(
                f"{sources:>7} {base[0] / 1e6:>14.0f} {ours[0] / 1e6:>15.0f} "
                f"{ours[0] / base[0]:>6.2f} "
                f"{f'{base[1]:.2f} / {ours[1]:.2f}':>24} {f'{base[2]:.2f} / {ours[2]:.2f}':>24}",
                flush=True,
            )
            shutil.rmtree(run)


if __name__ == "__main__":
    main()
