"""The upload and download limits on real daemons over loopback: rates measured from the
Job's BytesDone as a client hears them, changed mid-transfer over D-Bus, kept across
restarts, bad values named, and setting them guarded by polkit."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from lanspreadctl.client import unwrap
from lanspreadd.app.config import from_args
from lanspreadd.core.hashes import CHUNK_SIZE
from lanspreadd.errors import ConfigError
from tests.support import (
    BUS_NAME,
    ERR,
    MANAGER,
    Daemon,
    PrivateBus,
    TimedOut,
    bus_driver_call,
    call,
    disconnect,
    error_name,
    make_game,
    wait_for,
)
from tests.test_peers import GAME, MiB, connect, game_entries
from tests.test_polkit import PolkitMock

MakePeer = Callable[..., Daemon]
JOB_IFACE = "org.lanspread.Lanspread1.Job"
PROPERTIES = "org.freedesktop.DBus.Properties"
OTHER, OTHER_VERSION = "teeworlds", "0.7.5"  # a second catalog game
TOO_BIG = 1 << 63
# What a client may see beyond the rate: the one chunk that goes at once, and the
# lag of BytesDone behind the bytes (told at most every 0.2 s).
LAG = 0.5


class Heard:
    """What the test's own connection to a daemon's bus hears, as it arrives: each
    job's BytesDone with the moment it came, the Manager's changes, and Completed."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.progress: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.manager: list[dict[str, Any]] = []
        self.completed: dict[str, str] = {}
        self._arrived = asyncio.Event()

    def take(self, msg: Message) -> None:
        now = time.monotonic()
        if msg.message_type is not MessageType.SIGNAL or msg.path is None:
            return
        if msg.member == "PropertiesChanged" and msg.body[0] == JOB_IFACE:
            changed = unwrap(msg.body[1])
            if "BytesDone" in changed:
                self.progress[msg.path].append((now, changed["BytesDone"]))
        elif msg.member == "PropertiesChanged" and msg.body[0] == MANAGER:
            self.manager.append(unwrap(msg.body[1]))
        elif msg.member == "Completed":
            self.completed[msg.path] = msg.body[2]
        self._arrived.set()

    def done(self, path: str) -> int:
        samples = self.progress[path]
        return samples[-1][1] if samples else 0

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}") from None


@asynccontextmanager
async def hearing(daemon: Daemon) -> AsyncIterator[Heard]:
    bus = await MessageBus(bus_address=daemon.bus.address).connect()
    heard = Heard(bus)
    bus.add_message_handler(heard.take)
    await bus_driver_call(bus, "AddMatch", f"type='signal',sender='{BUS_NAME}'")
    try:
        yield heard
    finally:
        await disconnect(bus)


async def set_property(bus: MessageBus, name: str, value: Variant) -> Message:
    return await call(bus, "Set", "ssv", [MANAGER, name, value], interface=PROPERTIES)


async def start(bus: MessageBus, member: str, signature: str, *args: object) -> str:
    reply = await call(bus, member, signature, list(args))
    assert error_name(reply) is None, reply.body
    return str(reply.body[0])


def total_over_time(heard: Heard, paths: list[str]) -> list[tuple[float, int]]:
    """The bytes of all `paths` together after each sample, in the order they came."""
    events = sorted((t, path, n) for path in paths for t, n in heard.progress[path])
    latest: dict[str, int] = {}
    timeline = []
    for t, path, n in events:
        latest[path] = n
        timeline.append((t, sum(latest.values())))
    return timeline


def assert_within(samples: list[tuple[float, int]], rate: int, what: str) -> None:
    """Bytes between the first and the last sample are at most the rate's, plus one
    chunk and the lag of the progress told."""
    assert len(samples) >= 2, f"{what}: all of it came at once ({samples})"
    (first, before), (last, after) = samples[0], samples[-1]
    seconds, moved = last - first, after - before
    allowed = rate * (seconds + LAG) + CHUNK_SIZE
    assert moved <= allowed, (
        f"{what}: {moved} bytes in {seconds:.2f} s; at {rate} B/s at most {allowed:.0f}"
    )


def served(receiver: Daemon, *games: str) -> None:
    def all_served() -> bool:
        return all(receiver.ctl_json("show", game)["sources"] == 1 for game in games)

    wait_for(all_served, 20, f"{', '.join(games)} served")


@pytest.mark.slow
def test_downloads_and_stream_installs_share_the_download_limit(make_peer: MakePeer) -> None:
    """A download and a stream install at once from an unlimited source: together they
    stay under the receiver's --download-limit, one bucket for both."""
    limit = 4 * MiB
    source = make_peer("source")
    receiver = make_peer("receiver", extra_args=("--download-limit", str(limit)))
    make_game(source.game_dir, GAME, "1.0", game_entries(16 * MiB))
    make_game(source.game_dir, OTHER, OTHER_VERSION, game_entries(12 * MiB, b"y"))
    source.start()
    receiver.start()
    assert receiver.ctl_json("limit") == {"download_limit": limit, "upload_limit": 0}
    connect(receiver, source)
    served(receiver, GAME, OTHER)

    async def body() -> tuple[Heard, list[str]]:
        async with hearing(receiver) as heard:
            paths = [
                await start(heard.bus, "Download", "sb", GAME, False),
                await start(heard.bus, "StreamInstall", "s", OTHER),
            ]
            await heard.until(lambda: all(p in heard.completed for p in paths), "both jobs")
            return heard, paths

    heard, paths = asyncio.run(body())
    assert [heard.completed[p] for p in paths] == ["finished", "finished"]
    for path in paths:
        assert len(heard.progress[path]) >= 3, "each job was seen moving along"
    timeline = total_over_time(heard, paths)
    assert_within(timeline, limit, "a download and a stream install together")
    assert timeline[-1][1] - timeline[0][1] >= 20 * MiB, "most came after the first sample"
    assert receiver.ctl_json("show", GAME)["availability"] == "Ready"
    assert receiver.ctl_json("show", OTHER)["installed"] is True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("direction", "prop"), [("download", "DownloadLimit"), ("upload", "UploadLimit")]
)
def test_raising_a_limit_mid_download_speeds_it_up_at_once(
    make_peer: MakePeer, direction: str, prop: str
) -> None:
    """Set low with lanspreadctl (on the receiver's downloads, or on what the source
    serves), then lifted over D-Bus while chunks wait for it: the rest comes at once."""
    slow = 2 * MiB
    source = make_peer("source")
    receiver = make_peer("receiver")
    make_game(source.game_dir, GAME, "1.0", game_entries(40 * MiB))
    source.start()
    receiver.start()
    limited = receiver if direction == "download" else source
    assert limited.ctl_json("limit", f"--{direction}", "2M")[f"{direction}_limit"] == slow
    connect(receiver, source)
    served(receiver, GAME)

    async def body() -> tuple[list[tuple[float, int]], float, list[tuple[float, int]]]:
        async with hearing(receiver) as heard, hearing(limited) as told:
            path = await start(heard.bus, "Download", "sb", GAME, False)
            await heard.until(lambda: heard.done(path) >= 3 * CHUNK_SIZE, "three slow chunks")
            before = list(heard.progress[path])
            raised = time.monotonic()
            reply = await set_property(told.bus, prop, Variant("t", 0))
            assert error_name(reply) is None, reply.body
            await told.until(lambda: {prop: 0} in told.manager, f"{prop} told changed")
            await heard.until(lambda: path in heard.completed, "the download's end")
            assert heard.completed[path] == "finished"
            return before, raised, heard.progress[path]

    before, raised, progress = asyncio.run(body())
    assert_within(before, slow, f"the download under the {direction} limit")
    last, total = progress[-1]
    after = total - before[-1][1]
    seconds = last - raised
    assert after >= 6 * CHUNK_SIZE
    # Lifted, the rest came at least eight times as fast as the limit allowed: the
    # chunks already waiting for it went at once (the next was due about 2 s later).
    assert after / seconds >= 8 * slow, f"{after} bytes in {seconds:.2f} s once lifted"
    assert limited.ctl_json("limit")[f"{direction}_limit"] == 0


def read_settings(daemon: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((daemon.state_dir / "settings.json").read_text())
    return result


@pytest.mark.slow
def test_limits_set_at_run_time_are_kept_and_win_over_the_file(daemon: Daemon) -> None:
    daemon.state_dir.joinpath("lanspreadd.toml").write_text("download_limit = 1000\n")
    daemon.start()
    assert daemon.ctl_json("limit") == {"upload_limit": 0, "download_limit": 1000}
    shown = daemon.ctl("limit")
    assert shown.returncode == 0
    assert shown.stdout.split() == ["upload:", "unlimited", "download:", "1000", "B/s"]

    async def set_and_hear() -> list[dict[str, Any]]:
        async with hearing(daemon) as heard:
            ctl = asyncio.create_task(
                asyncio.to_thread(daemon.ctl, "limit", "--upload", "10M", "--download", "1.5G")
            )
            told = {"UploadLimit": 10 * MiB, "DownloadLimit": 1536 * MiB}
            await heard.until(
                lambda: all({k: v} in heard.manager for k, v in told.items()), "both told"
            )
            assert (await ctl).returncode == 0
            return heard.manager

    changes = asyncio.run(set_and_hear())
    assert {"UploadLimit": 10 * MiB} in changes
    status = daemon.ctl_json("status")
    assert (status["upload_limit"], status["download_limit"]) == (10 * MiB, 1536 * MiB)
    assert "limits:     upload 10 MiB/s, download 1.5 GiB/s" in daemon.ctl("status").stdout
    kept = {"upload_limit": 10 * MiB, "download_limit": 1536 * MiB}
    assert read_settings(daemon).items() >= kept.items()

    daemon.stop()
    daemon.start()  # the file still says 1000: what was set at run time wins
    assert daemon.ctl_json("limit") == {"upload_limit": 10 * MiB, "download_limit": 1536 * MiB}
    assert "download_limit: 1610612736 B/s as set at run time" in daemon.stderr()

    daemon.stop()
    daemon.extra_args = ("--download-limit", "123")
    daemon.start()  # a flag wins for its run, and is not kept
    assert daemon.ctl_json("limit") == {"upload_limit": 10 * MiB, "download_limit": 123}
    assert daemon.ctl_json("limit", "--download", "none")["download_limit"] == 0
    assert read_settings(daemon)["download_limit"] == 0


def test_bad_limits_are_named_and_change_nothing(daemon: Daemon) -> None:
    daemon.start()
    for value, said in (
        ("-5", "a limit cannot be negative"),
        ("abc", "not a rate"),
        ("10X", "not a rate"),
        (str(1 << 64), "more than any rate can be"),
        (str(TOO_BIG), "more than the largest rate"),  # said by the daemon
    ):
        result = daemon.ctl("limit", "--download", value)
        assert result.returncode == 2, (value, result.stderr)
        assert said in result.stderr, (value, result.stderr)
    refused = daemon.ctl("--json", "limit", "--upload", "fast")
    assert json.loads(refused.stdout)["error"] == ERR + "InvalidArgument"
    # One bad value of two: neither is set.
    assert daemon.ctl("limit", "--upload", "1M", "--download", "-1").returncode == 2

    async def over_dbus() -> dict[str, str | None]:
        bus = await MessageBus(bus_address=daemon.bus.address).connect()
        try:
            replies = {
                "2^63": await set_property(bus, "DownloadLimit", Variant("t", TOO_BIG)),
                "2^64-1": await set_property(bus, "UploadLimit", Variant("t", (1 << 64) - 1)),
                "text": await set_property(bus, "UploadLimit", Variant("s", "10M")),
                "signed": await set_property(bus, "UploadLimit", Variant("x", -1)),
            }
            return {what: error_name(reply) for what, reply in replies.items()}
        finally:
            await disconnect(bus)

    assert asyncio.run(over_dbus()) == {
        "2^63": ERR + "InvalidArgument",
        "2^64-1": ERR + "InvalidArgument",
        "text": "org.freedesktop.DBus.Error.InvalidSignature",
        "signed": "org.freedesktop.DBus.Error.InvalidSignature",
    }
    assert daemon.ctl_json("limit") == {"upload_limit": 0, "download_limit": 0}
    assert not (daemon.state_dir / "settings.json").exists()
    assert daemon.ctl_json("status")["status"].startswith("serving")
    # The largest rate there is, is one.
    assert daemon.ctl_json("limit", "--upload", str(TOO_BIG - 1))["upload_limit"] == TOO_BIG - 1


def test_a_limit_that_cannot_be_kept_is_not_applied(daemon: Daemon) -> None:
    (daemon.state_dir / "settings.json").mkdir()  # what the daemon cannot write
    daemon.start()
    failed = daemon.ctl("limit", "--download", "5M")
    assert failed.returncode == 1
    assert "cannot keep download_limit in" in failed.stderr
    assert daemon.ctl_json("limit") == {"upload_limit": 0, "download_limit": 0}
    assert daemon.ctl_json("status")["status"].startswith("serving")


@pytest.mark.parametrize(
    ("args", "toml", "said"),
    [
        (["--download-limit", "-1"], "", "download_limit: a rate cannot be negative"),
        ([], 'download_limit = "fast"', "download_limit must be int, not str"),
        ([], f"upload_limit = {TOO_BIG}", "upload_limit: 9223372036854775808 bytes per second"),
    ],
)
def test_bad_configured_limits_are_named(
    tmp_path: Path, args: list[str], toml: str, said: str
) -> None:
    config = tmp_path / "lanspreadd.toml"
    config.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=said):
        from_args(["--config", str(config), *args])


@pytest.fixture
def polkit(private_bus: PrivateBus) -> Iterator[PolkitMock]:
    mock = PolkitMock(private_bus)
    yield mock
    mock.stop()


def test_setting_a_limit_needs_polkits_yes(daemon: Daemon, polkit: PolkitMock) -> None:
    daemon.extra_args = ("--polkit", "on")
    daemon.start()
    denied = daemon.ctl("limit", "--download", "1M")
    assert denied.returncode == 4
    assert "not authorised to perform org.lanspread.configure" in denied.stderr
    assert daemon.ctl_json("limit") == {"upload_limit": 0, "download_limit": 0}
    assert not (daemon.state_dir / "settings.json").exists()
    asked = len(polkit.calls())
    # A value no rate can be is refused before anybody is asked.
    assert daemon.ctl("limit", "--upload", str(TOO_BIG)).returncode == 2
    assert len(polkit.calls()) == asked

    polkit.allow("org.lanspread.configure")
    assert daemon.ctl_json("limit", "--download", "1M")["download_limit"] == MiB
    checks = [args[1] for name, args in polkit.calls() if name == "CheckAuthorization"]
    assert checks == ["org.lanspread.configure", "org.lanspread.configure"]
