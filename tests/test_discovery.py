"""mDNS names for people, ids in TXT: the instance label, the withdrawal mapping, and
what tells a conflict. The network side is in tests/test_avahi.py."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from zeroconf import DNSText, RecordUpdate  # type: ignore[attr-defined]
from zeroconf.asyncio import AsyncServiceInfo

from lanspreadd.net.discovery import (
    MAX_IDS_PER_INSTANCE,
    MAX_INSTANCE_NUMBER,
    MAX_LABEL,
    SUFFIX,
    Conflicts,
    Instances,
    cut_utf8,
    instance_label,
    txt_peer_id,
)
from lanspreadd.protocol.identity import PEER_ID_LEN
from tests.netns import Lan

A, B, C, D, E = (letter * PEER_ID_LEN for letter in "abcde")


def txt(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


# ---- the instance label ---------------------------------------------------------------


def test_a_short_name_is_the_label_as_it_is() -> None:
    assert instance_label("Kevin's Rig") == "Kevin's Rig"
    assert instance_label("Grüne Gans") == "Grüne Gans"


def test_later_tries_are_numbered_as_rfc_6763_shows() -> None:
    assert [instance_label("Rig", n) for n in (1, 2, 3)] == ["Rig", "Rig (2)", "Rig (3)"]


def test_dots_would_split_the_label_and_become_dashes() -> None:
    assert instance_label("gamer.lan") == "gamer-lan"


@pytest.mark.parametrize("char", ["a", "ü", "–", "🎮"])
@pytest.mark.parametrize("number", [1, 2, 10, MAX_INSTANCE_NUMBER])
def test_a_long_name_is_cut_to_63_bytes_between_characters(char: str, number: int) -> None:
    name = "x" + char * 62  # the longest name the config takes
    label = instance_label(name, number)
    assert len(label.encode()) <= MAX_LABEL
    assert label.encode().decode() == label
    if number > 1:
        assert label.endswith(f" ({number})")
    assert name.startswith(label.removesuffix(f" ({number})"))


def test_a_cut_ends_on_no_space_before_the_number() -> None:
    name = "a" * 58 + " " + "b" * 4
    assert instance_label(name, 2) == "a" * 58 + " (2)"


def test_cut_utf8_keeps_whole_characters() -> None:
    assert cut_utf8("äöü", 5) == "äö"
    assert cut_utf8("äöü", 6) == "äöü"
    assert cut_utf8("🎮🎮", 7) == "🎮"
    assert cut_utf8("plain", 3) == "pla"


# ---- withdrawal: through the ids learnt at resolution ---------------------------------


def test_a_withdrawn_name_loses_the_peer_learnt_for_it() -> None:
    instances = Instances()
    instances.learnt(f"Kevin's Rig{SUFFIX}", A)
    assert instances.withdrawn(f"Kevin's Rig{SUFFIX}") == [A]
    assert instances.withdrawn(f"Kevin's Rig{SUFFIX}") == []


def test_a_name_never_resolved_loses_nobody_whatever_it_looks_like() -> None:
    instances = Instances()
    instances.learnt(f"Rig{SUFFIX}", A)
    assert instances.withdrawn(f"{A}{SUFFIX}") == []  # the old scheme: an id as the name
    assert instances.withdrawn(f"{B}{SUFFIX}") == []
    assert instances.withdrawn(f"Rig{SUFFIX}") == [A]


def test_names_compare_as_dns_does_ignoring_case() -> None:
    instances = Instances()
    instances.learnt(f"Rig{SUFFIX}", A)
    assert instances.withdrawn(f"RIG{SUFFIX}") == [A]


def test_a_peer_announced_under_another_name_too_is_kept() -> None:
    """A conflict: both held "Rig" for a while, one moved to "Rig (2)"."""
    instances = Instances()
    instances.learnt(f"Rig{SUFFIX}", A)
    instances.learnt(f"Rig{SUFFIX}", B)
    instances.learnt(f"Rig (2){SUFFIX}", B)
    assert instances.withdrawn(f"Rig{SUFFIX}") == [A]
    assert instances.withdrawn(f"Rig (2){SUFFIX}") == [B]


def test_the_map_is_bounded_oldest_name_first() -> None:
    instances = Instances(limit=2)
    for name in ("one", "two", "three"):
        instances.learnt(f"{name}{SUFFIX}", A if name != "three" else B)
    assert len(instances) == 2
    assert instances.withdrawn(f"one{SUFFIX}") == []
    assert instances.withdrawn(f"two{SUFFIX}") == [A]


def test_one_name_keeps_only_its_newest_ids() -> None:
    instances = Instances()
    ids = [f"{i:0{PEER_ID_LEN}x}" for i in range(MAX_IDS_PER_INSTANCE + 2)]
    for peer_id in ids:
        instances.learnt(f"Rig{SUFFIX}", peer_id)
    assert instances.withdrawn(f"Rig{SUFFIX}") == ids[-MAX_IDS_PER_INSTANCE:]


# ---- conflicts: TXT records for our own name ------------------------------------------


def test_txt_peer_id_takes_only_a_well_formed_id() -> None:
    assert txt_peer_id(txt(b"v=2", b"id=" + B.encode(), b"name=x")) == B
    assert txt_peer_id(txt(b"id=" + B.upper().encode())) is None
    assert txt_peer_id(txt(b"id=" + B[:-1].encode())) is None
    assert txt_peer_id(txt(b"id=" + "é".encode() * 16)) is None
    assert txt_peer_id(txt(b"name=x")) is None
    assert txt_peer_id(b"\xff" + b"id=" + B.encode()) is None  # a length past the end
    assert txt_peer_id(b"") is None


def test_a_txt_record_for_our_name_with_another_id_is_a_conflict() -> None:
    ours = AsyncServiceInfo(
        "_lanspread._udp.local.",
        f"Rig{SUFFIX}",
        port=41800,
        properties={"id": A, "v": "2", "name": "Rig"},
    )
    told: list[tuple[str, str]] = []
    conflicts = Conflicts(lambda: ours, lambda name, holder: told.append((name, holder)))

    def record(name: str, text: bytes, ttl: int = 4500) -> DNSText:
        return DNSText(name, 16, 1, ttl, text)

    theirs = txt(b"id=" + B.encode(), b"v=2", b"name=Rig")
    updates = [
        record(f"Rig{SUFFIX}", ours.text),  # our own, looped back
        record(f"Other{SUFFIX}", theirs),  # another name
        record(f"Rig{SUFFIX}", theirs, ttl=0),  # a goodbye
        record(f"Rig{SUFFIX}", txt(b"id=not-an-id")),  # nobody we could tell apart
        record(f"RIG{SUFFIX}", theirs),  # the conflict, in other letters
    ]
    conflicts.async_update_records(None, 0.0, [RecordUpdate(r, None) for r in updates])  # type: ignore[arg-type]
    assert told == [(f"Rig{SUFFIX}", B)]


# ---- the adapter: real zeroconf on the test's own bridge ------------------------------

# Runs Discovery and prints what it proposes and withdraws.
DRIVER = """
import asyncio, sys
from lanspreadd.net.discovery import Discovery

def found(peer_id, host, port):
    print("found", peer_id, host, port, flush=True)

def lost(peer_id):
    print("lost", peer_id, flush=True)

asyncio.run(Discovery(sys.argv[1], "driver", 41800, [sys.argv[2]], found, lost).run())
"""
# Announces and withdraws whatever services it is told to, as anyone on the LAN may:
# `add<TAB>INSTANCE<TAB>ID<TAB>NAME` and `remove<TAB>INSTANCE`, `done` after each.
RESPONDER = """
import asyncio, socket, sys
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from lanspreadd.net.discovery import SERVICE_TYPE, SUFFIX
from lanspreadd.protocol import PROTOCOL_VERSION

async def main(address):
    azc = AsyncZeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
    services = {}
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command, instance, *txt = line.rstrip("\\n").split("\\t")
        if command == "add":
            info = services[instance] = AsyncServiceInfo(
                SERVICE_TYPE,
                instance + SUFFIX,
                port=41800,
                properties={"id": txt[0], "v": str(PROTOCOL_VERSION), "name": txt[1]},
                addresses=[socket.inet_aton(address)],
                server=f"responder-{len(services)}.local.",
            )
            await (await azc.async_register_service(info, cooperating_responders=True))
        else:
            await (await azc.async_unregister_service(services.pop(instance)))
        print("done", flush=True)
    await azc.async_close()

asyncio.run(main(sys.argv[1]))
"""


class Lines:
    """A process in a namespace of the test's bridge, and the lines it printed."""

    def __init__(self, ns: str, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.seen: list[str] = []
        self._partial = b""

    def expect(self, wanted: str, timeout: float = 20) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted!r} after {timeout} s; printed {self.seen}"
            if select.select([self.proc.stdout], [], [], remaining)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"exited before {wanted!r}; printed {self.seen}"
                *lines, self._partial = (self._partial + chunk).split(b"\n")
                self.seen += [line.decode(errors="replace") for line in lines]

    def tell(self, *fields: str) -> None:
        """A command to the responder, waited on until it is done."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("\t".join(fields).encode() + b"\n")
        self.proc.stdin.flush()
        self.seen = [line for line in self.seen if line != "done"]
        self.expect("done")

    def stop(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def running(ns: str, script: str, *args: str) -> Iterator[Lines]:
    lines = Lines(ns, script, *args)
    try:
        yield lines
    finally:
        lines.stop()


@pytest.mark.slow
def test_withdrawals_reach_the_ids_learnt_for_each_name_and_bad_ids_reach_nothing(
    lan: Lan,
) -> None:
    driver_ns, driver_address = lan.add_host(0)
    responder_ns, address = lan.add_host(1)
    with (
        running(driver_ns, DRIVER, "0" * PEER_ID_LEN, driver_address) as driver,
        running(responder_ns, RESPONDER, address) as responder,
    ):
        responder.tell("add", "Kevin's Rig", A, "Kevin")
        driver.expect(f"found {A} {address} 41800")
        responder.tell("add", B, C, "looks like B")  # a name that is some other id
        driver.expect(f"found {C} {address} 41800")
        # Ids and names no peer may send: never proposed, never withdrawn.
        responder.tell("add", "Evil", "not-an-id", "evil")
        responder.tell("add", "Shouting", A.upper(), "evil")
        responder.tell("add", "Escape", E, "\x1b]0;pwned\x07")
        responder.tell("add", "Sentinel", D, "sentinel")
        driver.expect(f"found {D} {address} 41800")

        responder.tell("remove", "Kevin's Rig")
        driver.expect(f"lost {A}")
        responder.tell("remove", B)
        driver.expect(f"lost {C}")
        for name in ("Evil", "Shouting", "Escape", "Sentinel"):
            responder.tell("remove", name)
        driver.expect(f"lost {D}")
    told = [line for line in driver.seen if line.startswith(("found", "lost"))]
    assert sorted(told) == sorted(
        [f"found {p} {address} 41800" for p in (A, C, D)] + [f"lost {p}" for p in (A, C, D)]
    ), driver.seen
