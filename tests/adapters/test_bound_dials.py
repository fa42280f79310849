"""Our dials leave from the listen address, on real loopback sockets.

A daemon listening on 127.0.0.2 must reach its peers from 127.0.0.2 (QUIC and the data
channel alike): the peer records the address it sees, binds grants to it, opens data
channels back to it and counts it against per-address caps. Any 127.x address is this
host's, so each end here has an address of its own, as on a LAN.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol

from lanspreadd.core.identity import load_or_create
from lanspreadd.net.dataclient import open_data_channel
from lanspreadd.net.transport import connect, outgoing_host, quic_configuration
from lanspreadd.protocol.datachannel import GREETING_LEN

T = TypeVar("T")
TOKEN = b"t" * 32


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.2", "127.0.0.2"), ("::1", "::1"), ("0.0.0.0", ""), ("::", ""), ("", "")],  # noqa: S104
)
def test_only_a_specific_listen_address_binds_our_dials(listen: str, expected: str) -> None:
    assert outgoing_host(listen) == expected


def first_datagram_from(local_host: str, tmp_path: Path) -> str:
    """The source address of the first QUIC packet our `connect` sends to 127.0.0.3."""
    identity = load_or_create(tmp_path / "identity", "alpha")

    async def body() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind(("127.0.0.3", 0))
            server.setblocking(False)
            port = server.getsockname()[1]
            loop = asyncio.get_running_loop()
            async with connect(
                "127.0.0.3",
                port,
                local_host=local_host,
                configuration=quic_configuration(identity, is_client=True),
                create_protocol=lambda quic, **_: QuicConnectionProtocol(quic),
            ) as protocol:
                protocol.transmit()
                _, (host, _) = await loop.sock_recvfrom(server, 2048)
                return str(host)

    return run(body())


def test_quic_dials_leave_from_the_listen_address(tmp_path: Path) -> None:
    assert first_datagram_from("127.0.0.2", tmp_path) == "127.0.0.2"


def test_a_wildcard_listen_address_dials_as_aioquic_does(tmp_path: Path) -> None:
    # aioquic's own dual-stack socket on ("::", 0): the route picks 127.0.0.1.
    assert first_datagram_from("", tmp_path) == "127.0.0.1"


def test_an_ipv4_listen_address_cannot_dial_an_ipv6_peer(tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "identity", "alpha")

    async def body() -> None:
        async with connect(
            "::1",
            4433,
            local_host="127.0.0.2",
            configuration=quic_configuration(identity, is_client=True),
            create_protocol=lambda quic, **_: QuicConnectionProtocol(quic),
        ):
            raise AssertionError("an IPv4 socket dialled an IPv6 address")

    with pytest.raises(OSError, match="family"):
        run(body())


@pytest.mark.parametrize(("local_host", "seen"), [("127.0.0.2", "127.0.0.2"), ("", "127.0.0.1")])
def test_data_channels_leave_from_the_listen_address(local_host: str, seen: str) -> None:
    with socket.create_server(("127.0.0.3", 0)) as server:
        port = server.getsockname()[1]
        sock = open_data_channel("127.0.0.3", port, TOKEN, local_host)
        with sock, server.accept()[0] as accepted:
            assert accepted.getpeername()[0] == seen
            assert len(accepted.recv(GREETING_LEN, socket.MSG_WAITALL)) == GREETING_LEN
