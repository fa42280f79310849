"""Flooding attacks from a hostile host, each a separate process as it would be on the LAN.

`hostile_flood` is the scenario (`tests.scenarios.run --only hostile-flood`); the
modes below are what the hostile host runs.

- `quic-flood HOST PORT COUNT SECONDS SOURCE...`: sends COUNT QUIC Initials, each for a
  new connection, evenly over SECONDS, round-robin from sockets bound to the SOURCE
  addresses (many hosts, or one host spoofing its address); answers nothing. Prints
  `ready` once its packets are built and waits for a line on stdin, then `sent N`.
- `quic-hold HOST PORT COUNT SOURCE...`: opens COUNT QUIC connections (answering the
  Retry, completing the TLS handshake) from the SOURCE addresses in turn, then says
  nothing on them; prints `held N of COUNT` and holds them until its stdin closes.
- `mdns-fake COUNT HOST PORT INTERFACE`: registers COUNT lanspread services with made-up
  peer ids, all pointing at HOST:PORT, until its stdin closes. Prints `announced N`.
- `count HOST PORT`: counts the UDP datagrams that reach HOST:PORT, where nothing
  answers; prints the running count after each line read on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from lanspreadd.protocol import ALPN, PROTOCOL_VERSION


def build_initials(host: str, port: int, count: int) -> list[bytes]:
    """`count` client Initials, each opening its own connection (its own connection id)."""
    packets = []
    for _ in range(count):
        conn = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        )
        conn.connect((host, port), now=time.monotonic())
        packets.append(conn.datagrams_to_send(now=time.monotonic())[0][0])
    return packets


def quic_flood(host: str, port: int, count: int, seconds: float, sources: list[str]) -> None:
    packets = build_initials(host, port, count)
    sockets = []
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        sockets.append(sock)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    sent = 0
    for i, packet in enumerate(packets):
        delay = start + seconds * i / count - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            sockets[i % len(sockets)].sendto(packet, (host, port))
            sent += 1
        except OSError:
            pass  # a full socket buffer: the packet is lost, as on a real LAN
    print(f"sent {sent}", flush=True)
    for sock in sockets:
        sock.close()


async def open_quic(
    source: str, host: str, port: int, timeout: float = 5.0
) -> QuicConnectionProtocol | None:
    """A QUIC connection from `source` (Retry answered, TLS done); None if refused."""
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
    config.verify_mode = ssl.CERT_NONE
    connection = QuicConnection(configuration=config)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: QuicConnectionProtocol(connection), local_addr=(source, 0)
    )
    protocol.connect((host, port))
    try:
        await asyncio.wait_for(protocol.wait_connected(), timeout)
    except (TimeoutError, ConnectionError):
        waiter = protocol._connected_waiter  # abandoned: its error is ours to take
        if waiter is not None:
            waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
        protocol.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.wait_closed(), 3)
        assert protocol._transport is not None
        protocol._transport.close()
        return None
    return protocol


async def quic_hold(host: str, port: int, count: int, sources: list[str]) -> None:
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> QuicConnectionProtocol | None:
        async with gate:
            return await open_quic(sources[i % len(sources)], host, port)

    opened = await asyncio.gather(*(one(i) for i in range(count)))
    held = [p for p in opened if p is not None]
    print(f"held {len(held)} of {count}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for protocol in held:
        protocol.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(p.wait_closed() for p in held)), 5)


async def mdns_fake(count: int, host: str, port: int, interface: str) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from lanspreadd.net.discovery import SERVICE_TYPE

    azc = AsyncZeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    try:
        registered = []
        for i in range(count):
            peer_id = os.urandom(16).hex()
            info = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{peer_id}.{SERVICE_TYPE}",
                port=port,
                properties={"id": peer_id, "v": str(PROTOCOL_VERSION), "name": f"fake{i}"},
                addresses=[socket.inet_aton(host)],
                server=f"fake-{peer_id[:12]}.local.",
            )
            # A hostile responder does not probe for conflicts first.
            registered.append(await azc.async_register_service(info, cooperating_responders=True))
        await asyncio.gather(*registered)  # probed all at once, not one after another
        print(f"announced {count}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await azc.async_unregister_all_services()
        await azc.async_close()


def count_datagrams(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    print("listening", flush=True)
    received = 0
    for _line in sys.stdin:
        while True:
            try:
                sock.recv(65536)
            except BlockingIOError:
                break
            received += 1
        print(received, flush=True)
    sock.close()


# ---- the scenario ------------------------------------------------------------------------
PER_DIAL = 8  # datagrams of one dial: an Initial and its retransmissions until it gives up
HOSTILE = [sys.executable, "-m", "tests.scenarios.hostile_flood"]


def hostile_flood(
    runs: int, fakes: int, window: float, initials: int, seconds: float
) -> tuple[int, int, str]:
    """Fake mDNS services aimed at a target that never answers, then a QUIC Initial
    flood from 50 addresses of a hostile host. Honest peers meet, download and connect
    all the while; the target gets a few packets; the victim's memory comes back."""
    from tests.netns import SUBNET, ip
    from tests.scenarios.run import (  # run.py registers this scenario: imported late
        GAME,
        MiB,
        _rss_kib,
        check,
        cluster,
        downloads,
        payload,
        show,
    )
    from tests.support import make_game, wait_for

    passed = 0
    figures = []
    for run in range(runs):
        with cluster(use_lan=True) as c:
            victim, receiver, late = c.add("victim"), c.add("receiver"), c.add("late")
            root = make_game(victim.game_dir, GAME, "1.0", payload(16 * MiB, run))
            assert c.lan is not None
            ns, target = c.lan.add_host(len(c.peers))
            hostile = ["ip", "netns", "exec", ns, *HOSTILE]
            counter = start_hostile([*hostile, "count", target, "9"], "listening")
            fake = start_hostile(
                [*hostile, "mdns-fake", str(fakes), target, "9", target], "announced"
            )
            announced = time.monotonic()
            try:
                victim.start()
                receiver.start()
                wait_for(lambda: show(receiver)["sources"] == 1, 60, "the victim as a source")
                result = receiver.ctl_json("download", GAME)
                check(result["state"] == "finished", f"download among fakes: {result}")
                check(downloads(receiver.game_dir / GAME) == downloads(root), "content differs")
                time.sleep(max(0.0, window - (time.monotonic() - announced)))
                packets = ask(counter)
                # Per daemon: a dial, another 10 s later, then one a minute at most.
                bound = 2 * PER_DIAL * (2 + int(window // 60))
                check(packets <= bound, f"{packets} packets at the target (at most {bound})")
            finally:
                finish(fake)
                finish(counter)
            refusals = victim.ctl_json("status")["refusals"]
            check(refusals.get("mdns-too-many-peers", 0) > 0, f"refusals {refusals}")

            sources = [f"{SUBNET}.{100 + i}" for i in range(50)]
            for address in sources:
                ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            assert victim.proc is not None
            rss_before = _rss_kib(victim.proc.pid)
            flood_args = ["quic-flood", victim.listen, str(victim.port), str(initials)]
            flood = start_hostile([*hostile, *flood_args, str(seconds), *sources], "ready")
            try:
                late.start()
                assert flood.stdin is not None
                flood.stdin.write("go\n")
                flood.stdin.flush()
                started = time.monotonic()
                answer = late.ctl("connect", f"{victim.listen}:{victim.port}")
                connect_time = time.monotonic() - started
                check(answer.returncode == 0, f"an honest connect during the flood: {answer}")
                result = late.ctl_json("download", GAME)
                check(result["state"] == "finished", f"download during the flood: {result}")
                check(downloads(late.game_dir / GAME) == downloads(root), "content differs")
                assert flood.stdout is not None
                sent = flood.stdout.readline().split()
                check(sent[:1] == ["sent"], f"flood: {sent}")
            finally:
                finish(flood)
            grew = wait_for(
                lambda: _rss_kib(victim.proc.pid) - rss_before < 20 * 1024,  # type: ignore[union-attr]
                60,
                "the victim's memory back within 20 MiB",
            )
            check(victim.ctl("status").returncode == 0, "the victim stopped serving")
            figures.append(
                f"{packets} packets at the fakes' target in {window:.0f} s; {sent[1]} Initials: "
                f"honest connect {connect_time:.2f} s (lanspreadctl), memory back in {grew:.0f} s"
            )
            passed += 1
    return runs, passed, "; ".join(figures[-1:])


def start_hostile(cmd: list[str], first_word: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(first_word):
        finish(proc)
        raise AssertionError(f"{cmd[5:7]}: {line!r}")
    return proc


def ask(counter: subprocess.Popen[str]) -> int:
    assert counter.stdin is not None and counter.stdout is not None
    counter.stdin.write("\n")
    counter.stdin.flush()
    return int(counter.stdout.readline())


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "quic-flood":
        quic_flood(args[0], int(args[1]), int(args[2]), float(args[3]), args[4:])
    elif mode == "quic-hold":
        asyncio.run(quic_hold(args[0], int(args[1]), int(args[2]), args[3:]))
    elif mode == "mdns-fake":
        asyncio.run(mdns_fake(int(args[0]), args[1], int(args[2]), args[3]))
    elif mode == "count":
        count_datagrams(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
