"""Scenario suite: lanspread under load and faults, with figures an organiser can trust.

Every scenario runs real daemons (network namespaces joined by a bridge where a
scenario needs a real LAN, loopback otherwise), is bounded in time, cleans up,
and returns (runs, passed, figure). Run it alone:

    .venv/bin/python -m tests.scenarios.run            # everything, full length
    .venv/bin/python -m tests.scenarios.run --quick    # the CI subset
    .venv/bin/python -m tests.scenarios.run --only churn soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import MessageType, Variant
from dbus_fast.aio import MessageBus

from lanspreadd.archive.writer import Entry
from lanspreadd.core.install import BACKUP, INSTALLING, INTENT, RESUME_FILE, GameFiles
from tests import support
from tests.netns import Lan
from tests.scenarios.hostile_announce import scenario as hostile_announce
from tests.scenarios.hostile_flood import hostile_flood
from tests.support import (
    MANAGER,
    ROOT,
    Daemon,
    PrivateBus,
    bus_driver_call,
    call,
    disconnect,
    free_port,
    make_game,
    tree,
    wait_for,
    wait_for_async,
)

GAME = "sample-game"
MiB = 1 << 20


@dataclass
class Outcome:
    runs: int
    passed: int
    figure: str


class ScenarioFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


def payload(size: int, seed: int = 0) -> list[Entry]:
    rng = random.Random(seed)
    block = rng.randbytes(MiB)
    data = (block * (size // MiB + 1))[:size]
    return [Entry("bin/"), Entry("bin/run.sh", b"#!/bin/sh\n", 0o755), Entry("data.bin", data)]


def downloads(root: Path) -> dict[str, bytes | None]:
    return {k: v for k, v in tree(root).items() if not k.startswith(("local", "."))}


class Cluster:
    """Daemons with private buses, on loopback or each in its own namespace."""

    def __init__(self, base: Path, lan: Lan | None = None) -> None:
        self.base = base
        self.lan = lan
        self.peers: list[Daemon] = []

    def add(self, name: str, *args: str, game_dir: Path | None = None, listen: str = "") -> Daemon:
        """A daemon on the LAN, or on loopback: `listen` gives it its own address there
        (127.0.0.N), so per-address limits apply to it as to a host on a LAN."""
        home = self.base / name
        (home / "bus").mkdir(parents=True)
        (home / "games").mkdir()
        extra: dict[str, Any] = {}
        if self.lan is not None:
            ns, address = self.lan.add_host(len(self.peers))
            extra = {"netns": ns, "listen": address, "mdns": True, "port": 41800}
        elif listen:
            extra = {"listen": listen, "port": free_port(listen)}
        daemon = Daemon(
            PrivateBus(home / "bus"),
            game_dir or home / "games",
            home / "state",
            name=name,
            extra_args=args,
            **extra,
        )
        self.peers.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.peers:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait(10)
            daemon.bus.stop()


@contextmanager
def cluster(use_lan: bool = False) -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="lanspread-scenario-"))
    lan = Lan() if use_lan else None
    c = Cluster(base, lan)
    try:
        yield c
    finally:
        c.close()
        if lan is not None:
            lan.delete()
        shutil.rmtree(base, ignore_errors=True)


def connect(a: Daemon, b: Daemon) -> None:
    result = a.ctl("connect", f"{b.listen}:{b.port}")
    check(result.returncode == 0, f"connect {a.name} -> {b.name}: {result.stderr}")


def show(peer: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = peer.ctl_json("show", GAME)
    return result


def idle(peer: Daemon) -> bool:
    return str(show(peer)["operation"]) == ""


def written(root: Path) -> int:
    """Bytes stored under `root`: a download's files are sparse until chunks land."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def serving(source: Daemon) -> bool:
    """The source is sending the game to someone: a download is under way."""
    return int(show(source)["outbound_transfers"]) > 0


def consistent(root: Path) -> None:
    """No staging leftovers; a sentinel only beside complete archives."""
    for name in (INSTALLING, BACKUP, INTENT):
        check(not (root / name).exists(), f"{root}/{name} left behind")


def shaped_source(
    c: Cluster, rate_mbit: int, size: int, seed: int, receivers: int
) -> tuple[Daemon, Path, list[Daemon]]:
    """A source whose uplink is shaped, holding a game, and unshaped receivers."""
    source = c.add("source")
    assert c.lan is not None
    assert source.netns is not None
    c.lan.shape(source.netns, f"{rate_mbit}mbit")
    root = make_game(source.game_dir, GAME, "1.0", payload(size, seed))
    return source, root, [c.add(f"r{i}") for i in range(receivers)]


# ---- scenarios ---------------------------------------------------------------------------
def fan_out(runs: int, receivers: int, size: int, rate_mbit: int) -> Outcome:
    passed = 0
    figures = []
    for _ in range(runs):
        with cluster(use_lan=True) as c:
            source, root, others = shaped_source(c, rate_mbit, size, 0, receivers)
            for peer in [source, *others]:
                peer.start()
            for peer in others:
                wait_for(lambda: show(peer)["sources"] >= 1, 60, f"{peer.name} to see it")
            started = time.monotonic()
            for peer in others:
                peer.ctl("download", "--no-wait", GAME)
            for peer in others:
                wait_for(lambda: idle(peer), 600, f"{peer.name}'s download")
            elapsed = time.monotonic() - started
            for peer in others:
                check(show(peer)["availability"] == "Ready", f"{peer.name} not Ready")
                check(downloads(peer.game_dir / GAME) == downloads(root), "content differs")
            bound = receivers * size * 8 / (rate_mbit * 1e6)
            figures.append(elapsed / bound)
            passed += 1
    mean = sum(figures) / len(figures)
    return Outcome(runs, passed, f"{receivers} receivers: {mean:.2f}x the uplink bound")


def fan_in(runs: int, size: int, rate_mbit: int) -> Outcome:
    """One receiver, sources on links of `rate_mbit` each: 1 source, then 3 at once."""
    rates: dict[int, list[float]] = {1: [], 3: []}
    passed = 0
    for run in range(runs):
        for count in (1, 3):
            with cluster(use_lan=True) as c:
                sources = [c.add(f"s{i}") for i in range(count)]
                receiver = c.add("receiver")
                assert c.lan is not None
                root = make_game(sources[0].game_dir, GAME, "1.0", payload(size, run))
                for s in sources:
                    assert s.netns is not None
                    c.lan.shape(s.netns, f"{rate_mbit}mbit")
                    if s is not sources[0]:
                        shutil.copytree(root, s.game_dir / GAME)
                for peer in [*sources, receiver]:
                    peer.start()
                wait_for(lambda: show(receiver)["sources"] == count, 60, "the sources")
                started = time.monotonic()
                result = receiver.ctl_json("download", GAME)
                elapsed = time.monotonic() - started
                check(result["state"] == "finished", f"download {result}")
                check(downloads(receiver.game_dir / GAME) == downloads(root), "content differs")
                rates[count].append(size / elapsed / 1e6)
        passed += 1
    one = sum(rates[1]) / len(rates[1])
    three = sum(rates[3]) / len(rates[3])
    return Outcome(
        runs,
        passed,
        f"{rate_mbit} Mbit/s links: 1 source {one:.1f} MB/s, 3 sources {three:.1f} MB/s",
    )


def churn(runs: int, size: int) -> Outcome:
    passed = 0
    completed = gone = 0
    for run in range(runs):
        with cluster() as c:
            slow = ("--upload-limit", str(6 * MiB))
            sources = [c.add(f"s{i}", *slow) for i in range(3)]
            receivers = [c.add(f"r{i}") for i in range(2)]
            root = make_game(sources[0].game_dir, GAME, "1.0", payload(size, run))
            for s in sources[1:]:
                shutil.copytree(root, s.game_dir / GAME)
            for peer in [*sources, *receivers]:
                peer.start()
            for r in receivers:
                for s in sources:
                    connect(r, s)
                wait_for(lambda: show(r)["sources"] == 3, 20, "three sources")
                r.ctl("download", "--no-wait", GAME)
            wait_for(lambda: serving(sources[0]), 20, "the downloads to start")
            sources[0].stop()  # leaves with Goodbye
            time.sleep(1.0)
            sources[1].stop(signal.SIGKILL)
            last_alone = run % 2 == 1
            if last_alone:
                time.sleep(0.5)
                sources[2].stop(signal.SIGKILL)  # every source gone
            for r in receivers:
                wait_for(lambda: idle(r), 120, f"{r.name} to settle (a hang?)")
                state = show(r)
                game_root = r.game_dir / GAME
                consistent(game_root)
                if state["availability"] == "Ready":
                    check(downloads(game_root) == downloads(root), "a completed copy differs")
                    completed += 1
                else:
                    check(not (game_root / "version.ini").exists(), "partial game downloaded")
                    check("every source of sample-game left" in r.stderr(), "not peers-gone")
                    gone += 1
            passed += 1
    return Outcome(runs, passed, f"{completed} completed, {gone} peers-gone, 0 hung")


def crash_recovery(runs: int, size: int) -> Outcome:
    """Kill the receiving daemon at a random moment of an operation; restart; compare."""
    passed = 0
    rng = random.Random(7)
    phases = ["download", "install", "update", "uninstall"]
    for run in range(runs):
        phase = phases[run % len(phases)]
        with cluster() as c:
            source = c.add("source", "--upload-limit", str(48 * MiB))
            receiver = c.add("receiver")
            root = make_game(source.game_dir, GAME, "1.0", payload(size, run))
            reference = c.base / "reference"
            shutil.copytree(root, reference)
            GameFiles(reference).install()
            new_tree = tree(reference / "local")
            source.start()
            receiver.start()
            connect(receiver, source)
            wait_for(lambda: show(receiver)["sources"] == 1, 20, "the source")
            mine = receiver.game_dir / GAME
            if phase != "download":
                check(receiver.ctl_json("download", GAME)["state"] == "finished", "download")
            if phase in ("update", "uninstall"):
                check(receiver.ctl_json("install", GAME)["state"] == "finished", "install")
                (mine / "local" / "save.dat").write_bytes(b"player progress")
            before = tree(mine / "local") if (mine / "local").exists() else None
            receiver.ctl(phase, "--no-wait", GAME)
            time.sleep(rng.uniform(0.05, 1.2))
            receiver.stop(signal.SIGKILL)
            receiver.start()
            consistent(mine)
            after = tree(mine / "local") if (mine / "local").exists() else None
            if phase == "download":
                state = show(receiver)["availability"]
                check(state in ("Absent", "Ready"), f"download left {state}")
                if state == "Ready":
                    check(downloads(mine) == downloads(root), "a Ready copy differs")
                connect(receiver, source)
                wait_for(lambda: show(receiver)["sources"] == 1, 20, "the source again")
                if state == "Absent":
                    result = receiver.ctl_json("download", GAME)
                    check(result["state"] == "finished", "the resumed download failed")
                check(downloads(mine) == downloads(root), "resumed copy differs")
            elif phase == "install":
                check(after in (None, new_tree), "install left a partial tree")
            elif phase == "update":
                check(after in (before, new_tree), "update left a mix of old and new")
            else:
                check(after in (before, None), "uninstall left a partial tree")
            passed += 1
    return Outcome(runs, passed, f"{passed}/{runs} restarts consistent (old or new tree)")


def disk_full(runs: int) -> Outcome:
    passed = 0
    for _ in range(runs):
        with cluster() as c:
            mount = c.base / "small"
            mount.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True
            )
            try:
                source = c.add("source", "--upload-limit", str(16 * MiB))
                receiver = c.add("receiver", "--config", str(c.base / "low.toml"), game_dir=mount)
                (c.base / "low.toml").write_text("stream_install_when_low_disk = false\n")
                make_game(source.game_dir, GAME, "1.0", payload(24 * MiB))
                keep = make_game(mount, "teeworlds", "0.7.5", payload(2 * MiB, 3))
                kept = tree(keep)
                source.start()
                receiver.start()
                connect(receiver, source)
                wait_for(lambda: show(receiver)["sources"] == 1, 20, "the source")
                receiver.ctl("download", "--no-wait", GAME)
                # Asked often and cheaply: the download lasts 1.5 s at the source's rate.
                wait_for(lambda: written(mount / GAME) > 0, 20, "the first chunk", every=0.01)
                filler = mount / "filler.bin"  # someone else fills the disk mid-download
                with filler.open("wb") as fh, contextlib.suppress(OSError):
                    while True:
                        fh.write(bytes(MiB))
                wait_for(lambda: idle(receiver), 60, "the download to fail")
                log = receiver.stderr()
                check("DiskFull" in log or "no space" in log.lower(), "no disk-full error")
                check(show(receiver)["availability"] == "Absent", "partial marked downloaded")
                check(tree(keep) == kept, "another game was touched")
                filler.unlink()
                result = receiver.ctl_json("download", GAME)
                check(result["state"] == "finished", "no recovery after freeing space")
                check(show(receiver)["availability"] == "Ready", "retry did not complete")
                check(receiver.ctl("status").returncode == 0, "daemon not serving")
                passed += 1
            finally:
                subprocess.run(["umount", "-l", str(mount)], check=False)
    return Outcome(runs, passed, "named error, other games intact, retry succeeds")


def dbus_abuse(runs: int) -> Outcome:
    passed = 0
    calls = 0
    for _ in range(runs):
        with cluster() as c:
            peer = c.add("victim")
            make_game(peer.game_dir, GAME, "1.0", payload(64 * MiB))
            peer.start()

            async def abuse() -> int:
                bus = await MessageBus(bus_address=peer.bus.address).connect()
                count = 0
                bad: list[tuple[str, str, list[Any]]] = [
                    ("GetGame", "s", ["x" * 4_000_000]),
                    ("GetGame", "s", ["no-such-game"]),
                    ("GetGame", "u", [1]),
                    ("Install", "s", ["../../etc"]),
                    ("SetGameDir", "s", ["\u0001weird\nname"]),
                    ("GetLogs", "u", [2**32 - 1]),
                    ("Download", "sb", [GAME, True]),
                    ("ConnectPeer", "s", ["[::1]:notaport"]),
                ]
                for member, sig, body in bad * 5:
                    reply = await call(bus, member, sig, body)
                    count += 1
                    if member != "GetLogs":
                        check(reply.error_name is not None, f"{member} accepted {body!r:.40}")
                first = await call(bus, "Install", "s", [GAME])
                busy = await call(bus, "Install", "s", [GAME])
                check(busy.error_name is not None and "Busy" in busy.error_name, "not Busy")
                count += 2
                await disconnect(bus)  # walk away mid-job
                check(first.error_name is None, "install refused")
                return count

            calls += asyncio.run(asyncio.wait_for(abuse(), 120))
            wait_for(lambda: idle(peer), 60, "the abandoned job")
            check(show(peer)["installed"] is True, "the abandoned install did not finish")
            check(peer.ctl("status").returncode == 0, "daemon not serving")
            passed += 1
    return Outcome(runs, passed, f"{calls} hostile calls, all named errors, still serving")


SOAK_RSS_SLACK_KIB = 8 * 1024  # two chunk buffers


def soak(seconds: float) -> Outcome:
    cycles = 0
    with cluster() as c:
        source = c.add("source")
        receiver = c.add("receiver")
        make_game(source.game_dir, GAME, "1.0", payload(8 * MiB))
        source.start()
        receiver.start()
        connect(receiver, source)
        wait_for(lambda: show(receiver)["sources"] == 1, 20, "the source")
        assert receiver.proc is not None
        pid = receiver.proc.pid
        samples: list[tuple[int, int]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or cycles < 3:
            check(receiver.ctl_json("download", "--install", GAME)["state"] == "finished", "dl")
            check(receiver.ctl_json("uninstall", GAME)["state"] == "finished", "uninstall")
            check(receiver.ctl_json("remove", GAME)["state"] == "finished", "remove")
            cycles += 1
            samples.append((_rss_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))))
        # glibc keeps freed chunk buffers in its arenas, so RSS climbs in steps of a few
        # MiB early on and then stays put; a leak keeps climbing. So the second half of
        # the run is compared with the peak of the first half, not with an early sample.
        half = len(samples) // 2
        early_peak = max(rss for rss, _ in samples[:half])
        late_peak = max(rss for rss, _ in samples[half:])
        fd_growth = samples[-1][1] - samples[min(2, len(samples) - 1)][1]
        check(fd_growth <= 2, f"file descriptors grew by {fd_growth}")
        check(
            late_peak - early_peak <= SOAK_RSS_SLACK_KIB,
            f"RSS kept growing: {early_peak // 1024} MiB at most in the first half, "
            f"{late_peak // 1024} MiB in the second",
        )
    return Outcome(
        cycles,
        cycles,
        f"RSS peak {early_peak // 1024} MiB (1st half) -> {late_peak // 1024} MiB (2nd), "
        f"fds {samples[0][1]}->{samples[-1][1]}",
    )


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def hostile_peer(runs: int) -> Outcome:
    """A peer that lies in its file list and one that sends malformed frames."""
    from tests.scenarios.hostile import run_hostile_peer

    passed = 0
    for run in range(runs):
        with cluster() as c:
            honest = [c.add(f"h{i}") for i in range(2)]
            receiver = c.add("receiver")
            root = make_game(honest[0].game_dir, GAME, "1.0", payload(16 * MiB, run))
            shutil.copytree(root, honest[1].game_dir / GAME)
            for peer in [*honest, receiver]:
                peer.start()
            for h in honest:
                connect(receiver, h)
            with run_hostile_peer(c.base / "hostile", receiver) as hostile:
                wait_for(lambda: show(receiver)["sources"] == 3, 20, "three sources")
                result = receiver.ctl_json("download", GAME)
                check(result["state"] == "finished", f"download {result}")
                check(downloads(receiver.game_dir / GAME) == downloads(root), "content differs")
                check(not (c.base / "escape").exists(), "a path escaped")
                hostile.flood(receiver)
            check(receiver.ctl("status").returncode == 0, "receiver stopped serving")
            log = receiver.stderr()
            check("disagrees with the majority" in log or "ignoring" in log, "liar not demoted")
            passed += 1
    return Outcome(runs, passed, "liars ignored, malformed frames cut off, honest peers finish")


# Hello names no sink can take raw, passed escaped (argv carries no NUL): a lone
# surrogate (crashed the log file), a NUL (broke ListPeers), terminal escapes, a
# bidi override.
HOSTILE_NAMES = ("x\\ud800", "x\\x00y", "\\x1b]0;owned\\x07\\x1b[2J", "evil\\u202etxt.exe")


def _raw_controls(text: str) -> list[str]:
    return [ch for ch in text if ch != "\n" and not ch.isprintable()]


def hostile_lan(runs: int, connections: int) -> Outcome:
    """Attacks from a hostile host on the LAN: Hello names no sink can take raw, then a
    flood of data connections held open. The victim must stay up, list its peers
    cleanly and go on serving an honest receiver while the flood is held."""
    passed = 0
    refused = 0
    for run in range(runs):
        with cluster(use_lan=True) as c:
            victim = c.add("victim")
            receiver = c.add("receiver")
            root = make_game(victim.game_dir, GAME, "1.0", payload(16 * MiB, run))
            victim.start()
            receiver.start()
            assert c.lan is not None
            ns, _address = c.lan.add_host(len(c.peers))
            target = f"{victim.listen}:{victim.port}"
            hostile = [sys.executable, "-m", "tests.scenarios.hostile"]
            for name in HOSTILE_NAMES:
                answer = subprocess.run(
                    ["ip", "netns", "exec", ns, *hostile, "name", str(c.base / "h"), target, name],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                check(answer.stdout.startswith("refused"), f"hello as {name}: {answer}")
            peers = victim.ctl("peers")
            check(peers.returncode == 0, f"peers failed: {peers.stderr}")
            check(not _raw_controls(peers.stdout + victim.ctl("logs").stdout), "raw controls")
            flood_args = ["data-flood", victim.listen, str(victim.port), str(connections)]
            flood = subprocess.Popen(
                ["ip", "netns", "exec", ns, *hostile, *flood_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert flood.stdout is not None
                held = flood.stdout.readline().split()
                check(held[:1] == ["opened"], f"flood: {held}")
                wait_for(lambda: show(receiver)["sources"] == 1, 30, "the victim as a source")
                result = receiver.ctl_json("download", GAME)
                check(result["state"] == "finished", f"download during the flood: {result}")
                check(downloads(receiver.game_dir / GAME) == downloads(root), "content differs")
            finally:
                if flood.stdin is not None:
                    flood.stdin.close()
                flood.wait(30)
                if flood.stdout is not None:
                    flood.stdout.close()
            status = victim.ctl_json("status")
            counts = status["refusals"]
            check(counts.get("peer-handshake", 0) >= len(HOSTILE_NAMES), f"refusals {counts}")
            check(counts.get("data-too-many-from-address", 0) > 0, f"refusals {counts}")
            log = victim.stderr()
            check(log.count("refused (data-too-many-from-address)") <= 2, "a log line per refusal")
            refused += sum(counts.values())
            passed += 1
    return Outcome(
        runs, passed, f"{refused} hostile attempts refused, honest download finished, still up"
    )


def hostile_archive(runs: int) -> Outcome:
    """A peer serves crafted games. One declares 2 GiB for a directory beside a link and a
    setuid-root binary: that once chose bsdtar, which restored owner and set-id bits for
    a daemon running as root. One holds a FIFO, which hung the install for good. The
    receiver (root here, as the demo once ran) installs the first with plain modes and
    its own owner, refuses the second by name, and keeps serving."""
    from tests.crafted_rar import Raw, directory, fifo, setuid_file, symlink, write_raw_rar5

    binary = setuid_file("bin/su-game", b"#!/bin/sh\nid\n")
    setuid_root = Raw(binary.name, binary.mode, binary.data, owner=(0, 0))
    big_dir = directory("big/", declared_size=2 << 30)
    crafted = {
        GAME: ("1.0", [big_dir, setuid_root, symlink("go", "bin/su-game")]),
        "teeworlds": ("0.7.5", [directory("bin/"), Raw("bin/run", 0o100755, b"x"), fifo("bin/p")]),
    }
    passed = 0
    for _ in range(runs):
        with cluster() as c:
            source = c.add("source")
            receiver = c.add("receiver")
            for game, (version, members) in crafted.items():
                root = source.game_dir / game
                root.mkdir()
                write_raw_rar5(root / f"{game}.rar", members)
                (root / "version.ini").write_text(f"{version}\n")
            source.start()
            receiver.start()
            connect(receiver, source)
            wait_for(lambda: show(receiver)["sources"] == 1, 30, "the source's snapshot")
            result = receiver.ctl_json("download", "--install", GAME)
            check(result["state"] == "finished", f"crafted install: {result}")
            local = receiver.game_dir / GAME / "local"
            for path in [local, *local.rglob("*")]:
                st = path.lstat()
                check(not st.st_mode & 0o7000, f"{path} kept set-id or sticky bits")
                check(st.st_uid == os.geteuid(), f"{path} kept the archive's owner")
            check(os.readlink(local / "go") == "bin/su-game", "the inside link was not kept")
            wait_for(
                lambda: receiver.ctl_json("show", "teeworlds")["sources"] == 1, 30, "teeworlds"
            )
            refused = receiver.ctl("--json", "download", "--install", "teeworlds")
            check(refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}")
            fifo_result = json.loads(refused.stdout)
            check(fifo_result["state"] == "failed", f"a FIFO installed: {fifo_result}")
            check("is a FIFO" in fifo_result["error_message"], f"unnamed: {fifo_result}")
            check(not (receiver.game_dir / "teeworlds" / "local").exists(), "FIFO game installed")
            check(receiver.ctl("status").returncode == 0, "receiver stopped serving")
            check(idle(receiver), "a job is stuck")
            passed += 1
    return Outcome(runs, passed, "set-id bits and owners dropped, FIFO refused by name, serving")


def hostile_client(runs: int, floods: int) -> Outcome:
    """An unprivileged local user floods the daemon (running as its service user on a
    system-like bus) with 5,000 calls, 200 in flight: dbus-fast once took the full
    socket for a dead bus and the daemon exited. Honest callers are answered between floods."""
    from tests.busflood import flood_as
    from tests.support import SystemBus, as_user, system_user

    policy = Path(__file__).resolve().parents[2] / "dbus" / "org.lanspread.Lanspread1.conf"
    passed = 0
    answered = 0
    for _ in range(runs):
        with (
            tempfile.TemporaryDirectory(prefix="lanspread-scenario-") as base,
            system_user("lanspread") as user,
        ):
            bus = SystemBus(policy)
            victim = Daemon(
                bus, Path(base) / "games", Path(base) / "state", ("--polkit", "on"), user=user
            )
            victim.game_dir.mkdir()
            try:
                victim.start()
                for _ in range(floods):
                    summary = flood_as("nobody", bus.address, 5000, 200)
                    answered += int(summary["answers"])
                    assert victim.proc is not None
                    check(victim.proc.poll() is None, f"the daemon died: {victim.stderr()}")
                    honest = subprocess.run(
                        as_user(
                            "nobody",
                            sys.executable,
                            "-m",
                            "lanspreadctl",
                            "--address",
                            bus.address,
                            "games",
                            keep_read_search=True,
                        ),
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                    )
                    check(honest.returncode == 0, f"an honest caller was refused: {honest}")
            finally:
                if victim.proc is not None and victim.proc.poll() is None:
                    victim.stop()
                bus.stop()
            passed += 1
    return Outcome(runs, passed, f"{answered} flood calls answered, daemon up, honest calls served")


def hostile_relay(runs: int) -> Outcome:
    """A host relays an honest peer's identity proof to a victim (protocol 1 let it pass
    for the honest peer, which the victim then dropped as a duplicate). The victim must
    refuse it, keep the honest peer's own connection and go on downloading from it."""
    passed = 0
    for run in range(runs):
        with cluster() as c:
            victim = c.add("victim")
            honest = c.add("honest")
            root = make_game(honest.game_dir, GAME, "1.0", payload(8 * MiB, run))
            victim.start()
            honest.start()
            connect(victim, honest)
            wait_for(lambda: show(victim)["sources"] == 1, 30, "the honest source")
            before = victim.ctl_json("peers")
            answer = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.scenarios.hostile_relay",
                    str(c.base / "mallory"),
                    f"127.0.0.1:{victim.port}",
                    f"127.0.0.1:{honest.port}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            check(answer.stdout.startswith("refused"), f"relay: {answer.stdout} {answer.stderr}")
            check(victim.ctl_json("peers") == before, "the relay changed the victim's peers")
            counts = victim.ctl_json("status")["refusals"]
            check(counts.get("peer-handshake", 0) >= 1, f"not counted: {counts}")
            result = victim.ctl_json("download", GAME)
            check(result["state"] == "finished", f"download after the relay: {result}")
            check(downloads(victim.game_dir / GAME) == downloads(root), "content differs")
            passed += 1
    return Outcome(runs, passed, "relayed proof refused, honest peer kept and served")


def served_by(peer: Daemon) -> dict[str, int]:
    """MiB per source from the receiver's summary line of its last download."""
    lines = [line for line in peer.stderr().splitlines() if f"downloaded {GAME} " in line]
    check(bool(lines), f"{peer.name} logged no finished download")
    _, _, listing = lines[-1].partition("source(s): ")
    return {name: int(mib) for name, mib in re.findall(r"(\S+) (\d+) MiB", listing)}


def swarm(runs: int, receivers: int, size: int, rate_mbit: int, stagger: float) -> Outcome:
    """Receivers start one after another behind one shaped source; each that finishes
    serves those still downloading, so later ones need the source less."""
    passed = 0
    shares: list[float] = []
    ratios: list[float] = []
    for run in range(runs):
        with cluster(use_lan=True) as c:
            source, root, others = shaped_source(c, rate_mbit, size, run, receivers)
            for peer in [source, *others]:
                peer.start()
            for peer in others:
                wait_for(lambda: len(peer.ctl_json("peers")) == receivers, 60, "the mesh")
                wait_for(lambda: show(peer)["sources"] >= 1, 60, f"{peer.name} to see it")
            started = time.monotonic()
            for peer in others:
                peer.ctl("download", "--no-wait", GAME)
                time.sleep(stagger)
            for peer in others:
                wait_for(lambda: idle(peer), 600, f"{peer.name}'s download")
            elapsed = time.monotonic() - started
            from_source = from_receivers = 0
            for peer in others:
                check(show(peer)["availability"] == "Ready", f"{peer.name} not Ready")
                check(downloads(peer.game_dir / GAME) == downloads(root), "content differs")
                for name, mib in served_by(peer).items():
                    if name == source.name:
                        from_source += mib
                    else:
                        from_receivers += mib
            check(from_receivers > 0, "no receiver served another")
            shares.append(from_receivers / (from_source + from_receivers))
            ratios.append(elapsed / (receivers * size * 8 / (rate_mbit * 1e6)))
            passed += 1
    share = sum(shares) / len(shares)
    ratio = sum(ratios) / len(ratios)
    return Outcome(
        runs,
        passed,
        f"{receivers} staggered receivers: {share:.0%} of bytes from other receivers, "
        f"{ratio:.2f}x the source-only bound",
    )


# ---- swarms of receivers starting together (loopback, each daemon on its own address) --
def swarm_members(
    c: Cluster, receivers: int, size: int, seed: int, upload_limit: int, slow: int = 0
) -> tuple[Daemon, Path, list[Daemon]]:
    """A source capping what it serves at `upload_limit` bytes/s (one slow LAN port) and
    holding a game, and `receivers` receivers, all started; on 127.0.0.2, 127.0.0.3, ...
    The first `slow` receivers download at most at half `upload_limit`."""
    source = c.add("source", "--upload-limit", str(upload_limit), listen="127.0.0.2")
    root = make_game(source.game_dir, GAME, "1.0", payload(size, seed))
    capped = ("--download-limit", str(upload_limit // 2))
    others = [
        c.add(f"r{i}", *(capped if i < slow else ()), listen=f"127.0.0.{i + 3}")
        for i in range(receivers)
    ]
    for peer in [source, *others]:
        peer.start(wait=False)
    for peer in [source, *others]:
        peer.wait_ready()
    return source, root, others


JOB = "org.lanspread.Lanspread1.Job"
COMPLETED = f"type='signal',interface='{JOB}',member='Completed'"


@dataclass
class Link(support.Link):
    """A daemon's D-Bus connection that also asks it things, failing the scenario on an error."""

    async def ask(
        self,
        member: str,
        signature: str = "",
        body: list[Any] | None = None,
        path: str = ROOT,
        interface: str = MANAGER,
    ) -> Any:
        reply = await call(self.bus, member, signature, body, path=path, interface=interface)
        check(reply.message_type is not MessageType.ERROR, f"{member}: {reply.body}")
        return reply.body[0] if reply.body else None

    async def prop(self, path: str, interface: str, name: str) -> Any:
        value = await self.ask(
            "Get", "ss", [interface, name], path, "org.freedesktop.DBus.Properties"
        )
        assert isinstance(value, Variant)
        return value.value


@contextlib.asynccontextmanager
async def linked(daemons: list[Daemon]) -> AsyncIterator[list[Link]]:
    """A D-Bus connection to each daemon, knowing its peer id."""
    links = [Link(d, await MessageBus(bus_address=d.bus.address).connect()) for d in daemons]
    try:
        for link in links:
            link.peer_id = str(await link.prop(ROOT, MANAGER, "PeerId"))
        yield links
    finally:
        for link in links:
            await disconnect(link.bus)


async def download_on(links: list[Link]) -> list[str]:
    """Ask every daemon to download the game, all at once; their Job paths, in order."""
    jobs = await asyncio.gather(*(link.ask("Download", "sb", [GAME, False]) for link in links))
    return [str(job) for job in jobs]


async def meshed(links: list[Link]) -> bool:
    """Every daemon sees every other, and every receiver sees the source holding the game."""
    ids = {link.peer_id for link in links}
    seen = await asyncio.gather(*(link.ask("ListPeers") for link in links))
    for link, peers in zip(links, seen, strict=True):
        if ids - {link.peer_id} - {str(p["Id"].value) for p in peers}:
            return False
    games = await asyncio.gather(*(link.ask("GetGame", "s", [GAME]) for link in links[1:]))
    return all(int(game["Sources"].value) >= 1 for game in games)


async def mesh(daemons: list[Daemon], joining: list[Daemon] | None = None) -> dict[str, str]:
    """Connect every pair of `daemons` (the source first), or every pair with one of
    `joining` in it, all at once, and wait until the mesh holds; names by peer id."""
    async with linked(daemons) as links:
        # A dial may meet the other's redial and lose to it: the mesh is what counts.
        await asyncio.gather(
            *(
                a.ask("ConnectPeer", "s", [f"{b.daemon.listen}:{b.daemon.port}"])
                for i, a in enumerate(links)
                for b in links[i + 1 :]
                if joining is None or a.daemon in joining or b.daemon in joining
            ),
            return_exceptions=True,
        )
        await wait_for_async(lambda: meshed(links), 60, "every daemon to see all the others")
        return {link.peer_id: link.name for link in links}


@dataclass
class Finish:
    """One receiver's download: when it ended after the common start, how, from whom."""

    name: str
    seconds: float
    success: bool
    error: str
    sources: dict[str, int]  # bytes by peer id (Job.Sources)


async def finish(link: Link, job: str, began: float) -> Finish:
    while job not in link.ended:
        link.arrived.clear()
        await link.arrived.wait()
    seconds = time.monotonic() - began
    success, message, _state, error = link.ended[job]
    # The Job object stays 10 s after it ends: its Sources are still there.
    sources = await link.prop(job, JOB, "Sources")
    return Finish(link.name, seconds, bool(success), f"{error} {message}".strip(), sources)


async def download_together(receivers: list[Daemon], allowed: float) -> list[Finish]:
    """Download on every receiver at the same moment; each job's end, in their order."""
    async with linked(receivers) as links:
        for link in links:
            link.bus.add_message_handler(link.take)
            await bus_driver_call(link.bus, "AddMatch", COMPLETED)
        began = time.monotonic()
        jobs = await download_on(links)
        async with asyncio.timeout(allowed):
            return list(
                await asyncio.gather(
                    *(finish(link, job, began) for link, job in zip(links, jobs, strict=True))
                )
            )


def uploaded(daemon: Daemon) -> int:
    """Bytes the daemon has written: its data server's sendfile counts, so across a
    download this is what the source served (its log lines add a few KiB)."""
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise ScenarioFailed("no wchar in /proc/PID/io")


def game_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def received_from(finishes: list[Finish], names: dict[str, str], source: Daemon) -> tuple[int, int]:
    """Bytes the receivers took from the source and from one another (Job.Sources)."""
    from_source = from_receivers = 0
    for finish in finishes:
        for peer_id, count in finish.sources.items():
            if names.get(peer_id) == source.name:
                from_source += count
            else:
                from_receivers += count
    return from_source, from_receivers


def all_identical(receivers: list[Daemon], root: Path) -> None:
    expected = downloads(root)
    for peer in receivers:
        check(show(peer)["availability"] == "Ready", f"{peer.name} not Ready")
        check(downloads(peer.game_dir / GAME) == expected, f"{peer.name}'s copy differs")


def swarm_flash(runs: int, receivers: int, size: int, upload_limit: int) -> Outcome:
    """A flash crowd: every receiver asks for the game at the same moment from one source
    whose uploads are capped; receivers serve each other the chunks they have verified,
    so the source sends far fewer than one copy each."""
    passed = 0
    figures: list[str] = []
    for run in range(runs):
        with cluster() as c:
            source, root, others = swarm_members(c, receivers, size, run, upload_limit)
            names = asyncio.run(mesh([source, *others]))
            total = game_bytes(root)
            source_only = receivers * total / upload_limit
            before = uploaded(source)
            finishes = asyncio.run(download_together(others, 2 * source_only + 60))
            sent = uploaded(source) - before
            failed = [f"{f.name}: {f.error}" for f in finishes if not f.success]
            check(not failed, f"downloads failed: {failed}")
            all_identical(others, root)
            from_source, from_receivers = received_from(finishes, names, source)
            share = from_receivers / (from_source + from_receivers)
            copies = sent / total
            done = max(f.seconds for f in finishes)
            figure = (
                f"{receivers} receivers, {total / MiB:.0f} MiB at {upload_limit / 1e6:g} MB/s: "
                f"all done in {done:.1f} s (source-only bound {source_only:.1f} s, swarm ideal "
                f"{total / upload_limit:.1f} s); {share:.0%} of bytes from receivers; the "
                f"source sent {copies:.2f} copies ({from_source / total:.2f} kept)"
            )
            print(f"    swarm-flash: {figure}", flush=True)
            check(share >= 0.4, f"only {share:.0%} of the bytes came from receivers")
            # Alone it sends one copy per receiver: the swarm saves at least half of that.
            check(copies < receivers / 2, f"the source sent {copies:.2f} copies")
            figures.append(figure)
            passed += 1
    return Outcome(runs, passed, figures[-1])


def resume_saved(peer: Daemon) -> int:
    """Chunks the receiver's resume state says it has verified (0 before the first save)."""
    path = peer.game_dir / GAME / RESUME_FILE
    try:
        return len(json.loads(path.read_text())["verified"])
    except (OSError, ValueError, KeyError):
        return 0  # not there yet, or being replaced right now


async def leave_once_serving(leaving: list[Daemon], staying: list[Daemon], timeout: float) -> None:
    """Download on `leaving` until both have saved their resume state, then on `staying`
    too; kill `leaving` (SIGKILL) as soon as one of `staying` has had a chunk from them.
    The head start gives the two chunks the others still need, whatever the load."""
    async with linked([*leaving, *staying]) as links:
        first, then = links[: len(leaving)], links[len(leaving) :]
        await download_on(first)

        async def saved() -> bool:
            return all(resume_saved(d) for d in leaving)

        await wait_for_async(saved, timeout, "the two to verify and save a chunk")
        jobs = await download_on(then)
        gone = {link.peer_id for link in first}

        async def sources(link: Link, job: str) -> dict[str, int]:
            try:
                return dict(await link.prop(job, JOB, "Sources"))
            except ScenarioFailed:
                return {}  # ended 10 s ago, without them: its object has gone

        async def serving_others() -> bool:
            taken = await asyncio.gather(
                *(sources(link, job) for link, job in zip(then, jobs, strict=True))
            )
            return any(n > 0 for s in taken for peer_id, n in s.items() if peer_id in gone)

        await wait_for_async(serving_others, timeout, "another receiver to take from the two")
        for peer in leaving:
            peer.stop(signal.SIGKILL)


def swarm_leave(runs: int, receivers: int, size: int, upload_limit: int) -> Outcome:
    """Two receivers are killed mid-swarm while the others download from them; the
    others finish, and the two, restarted, resume from their verified chunks."""
    passed = 0
    kept: list[int] = []
    for run in range(runs):
        with cluster() as c:
            # The two that leave download slowly and first: a loaded machine must still
            # see another take a chunk from them before they are done (their resume
            # state gone with it).
            source, root, others = swarm_members(c, receivers, size, run, upload_limit, 2)
            asyncio.run(mesh([source, *others]))
            leaving, staying = others[:2], others[2:]
            asyncio.run(leave_once_serving(leaving, staying, 60))
            still = [p.name for p in staying if not idle(p)]
            check(bool(still), "every other receiver was done before two left: no swarm to leave")
            for peer in staying:
                wait_for(lambda: idle(peer), 300, f"{peer.name}'s download")
            all_identical(staying, root)
            taken = sum(served_by(p).get(gone.name, 0) for p in staying for gone in leaving)
            check(taken > 0, "the others kept nothing they had from the two")
            for peer in leaving:
                peer.start()
            asyncio.run(mesh([source, *others], joining=leaving))
            for peer in leaving:
                saved = resume_saved(peer)
                result = peer.ctl_json("download", GAME)
                check(result["state"] == "finished", f"{peer.name}'s resumed download: {result}")
                resumed = re.findall(
                    r"resuming sample-game: (\d+) chunks already verified", peer.stderr()
                )
                check(
                    resumed == [str(saved)], f"{peer.name} did not resume {saved} chunks: {resumed}"
                )
                kept.append(saved)
            all_identical(others, root)
            print(
                f"    swarm-leave: {len(still)} of {len(staying)} still downloading when "
                f"{len(leaving)} left, having taken {taken} MiB from them; the two resumed "
                f"with {kept[-2:]} chunks verified",
                flush=True,
            )
            passed += 1
    return Outcome(
        runs,
        passed,
        f"{receivers} receivers, 2 killed mid-swarm: the rest finished, the 2 resumed "
        f"(chunks kept: {kept}) and finished, all copies identical",
    )


def swarm_corrupt(runs: int, receivers: int, size: int, upload_limit: int) -> Outcome:
    """A receiver of the swarm says it holds every chunk of the real file list and sends
    garbage: every honest receiver drops it after its second corrupt chunk and fetches
    those chunks elsewhere."""
    from tests.scenarios.hostile import run_swarm_liar

    passed = 0
    garbage = 0
    for run in range(runs):
        with cluster() as c:
            source, root, others = swarm_members(c, receivers, size, run, upload_limit)
            names = asyncio.run(mesh([source, *others]))
            total = game_bytes(root)
            allowed = 2 * receivers * total / upload_limit + 60
            with run_swarm_liar(c.base / "hostile", source, others) as liar:
                finishes = asyncio.run(download_together(others, allowed))
                served = liar.served()
            failed = [f"{f.name}: {f.error}" for f in finishes if not f.success]
            check(not failed, f"downloads failed: {failed}")
            all_identical(others, root)
            check(served > 0, "nobody asked the liar for a chunk")
            for peer, finish in zip(others, finishes, strict=True):
                log = peer.stderr()
                check(
                    "dropping hostile as a source: repeated corrupt data" in log,
                    f"{peer.name} did not drop the liar",
                )
                strangers = set(finish.sources) - set(names)
                check(not strangers, f"{peer.name} kept bytes from the liar: {finish.sources}")
            from_source, from_receivers = received_from(finishes, names, source)
            print(
                f"    swarm-corrupt: the liar sent {served} corrupt chunks; "
                f"{from_receivers / (from_source + from_receivers):.0%} of bytes from honest "
                "receivers",
                flush=True,
            )
            garbage += served
            passed += 1
    return Outcome(
        runs,
        passed,
        f"{garbage} corrupt chunks from a receiver claiming all: dropped by all {receivers}, "
        "refetched, copies identical",
    )


SCENARIOS: dict[str, tuple[Callable[[], Outcome], Callable[[], Outcome]]] = {
    # name: (quick, full)
    "fan-out": (lambda: fan_out(1, 4, 16 * MiB, 200), lambda: fan_out(2, 8, 64 * MiB, 200)),
    "fan-in": (lambda: fan_in(1, 24 * MiB, 100), lambda: fan_in(2, 96 * MiB, 200)),
    "swarm": (
        lambda: swarm(1, 3, 32 * MiB, 100, 1.0),
        lambda: swarm(2, 6, 96 * MiB, 200, 2.0),
    ),
    "swarm-flash": (
        lambda: swarm_flash(1, 6, 48 * MiB, 6_000_000),
        lambda: swarm_flash(3, 8, 96 * MiB, 8_000_000),
    ),
    "swarm-leave": (
        lambda: swarm_leave(1, 5, 48 * MiB, 6_000_000),
        lambda: swarm_leave(3, 6, 96 * MiB, 8_000_000),
    ),
    "swarm-corrupt": (
        lambda: swarm_corrupt(1, 3, 32 * MiB, 6_000_000),
        lambda: swarm_corrupt(3, 6, 96 * MiB, 8_000_000),
    ),
    "churn": (lambda: churn(2, 48 * MiB), lambda: churn(6, 96 * MiB)),
    "hostile-peer": (lambda: hostile_peer(1), lambda: hostile_peer(3)),
    "hostile-lan": (lambda: hostile_lan(1, 2000), lambda: hostile_lan(3, 2000)),
    "hostile-archive": (lambda: hostile_archive(1), lambda: hostile_archive(3)),
    "hostile-client": (lambda: hostile_client(1, 2), lambda: hostile_client(3, 3)),
    "hostile-relay": (lambda: hostile_relay(1), lambda: hostile_relay(3)),
    "hostile-announce": (
        lambda: Outcome(*hostile_announce(1, 2)),
        lambda: Outcome(*hostile_announce(3, 6)),
    ),
    "hostile-flood": (
        lambda: Outcome(*hostile_flood(1, 200, 20, 3000, 10)),
        lambda: Outcome(*hostile_flood(2, 500, 75, 6000, 10)),
    ),
    "crash-recovery": (lambda: crash_recovery(4, 64 * MiB), lambda: crash_recovery(16, 128 * MiB)),
    "disk-full": (lambda: disk_full(1), lambda: disk_full(3)),
    "dbus-abuse": (lambda: dbus_abuse(1), lambda: dbus_abuse(3)),
    "soak": (lambda: soak(15), lambda: soak(600)),
}


def run(names: list[str], quick: bool) -> list[tuple[str, Outcome | str]]:
    results: list[tuple[str, Outcome | str]] = []
    for name in names:
        quick_fn, full_fn = SCENARIOS[name]
        started = time.monotonic()
        try:
            outcome: Outcome | str = (quick_fn if quick else full_fn)()
        except Exception as exc:  # a scenario's failure is a row in the table
            traceback.print_exc()
            outcome = "FAILED: " + " ".join(str(exc).split())
        print(f"  {name}: {outcome} ({time.monotonic() - started:.0f}s)", flush=True)
        results.append((name, outcome))
    return results


def table(results: list[tuple[str, Outcome | str]]) -> str:
    rows = [("scenario", "runs", "passed", "figure")]
    for name, outcome in results:
        if isinstance(outcome, Outcome):
            rows.append((name, str(outcome.runs), str(outcome.passed), outcome.figure))
        else:
            rows.append((name, "-", "0", outcome))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short CI subset")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("scenarios need root (network namespaces, tc, tmpfs)", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    # Stopped from outside, unwind like Ctrl-C so every namespace and mount is removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = run(args.only, args.quick)
    print(table(results))
    ok = all(isinstance(o, Outcome) and o.passed == o.runs for _, o in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
