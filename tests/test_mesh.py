"""The bounded mesh: its policy in memory, and real daemons that find a holder through a
neighbour or are turned away by a full one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lanspreadd.core.mesh import HOLDER_DIALS, MAX_GAMES_PER_PEER, MIN_AGE, Link, MeshPolicy
from tests.scenarios.hostile import run_exchange_liar
from tests.support import Daemon, wait_for
from tests.test_peers import GAME, MiB, connect, downloads, game_entries, seed_game, sources_of

MakePeer = Callable[..., Daemon]


def test_we_dial_half_the_cap_and_accept_up_to_four_times_it() -> None:
    policy = MeshPolicy(8)
    assert policy.room(connected=0, connecting=0) == 4
    assert policy.room(connected=2, connecting=1) == 1
    assert policy.room(connected=6, connecting=0) == 0  # peers that dialled us fill the rest
    assert policy.admit(32) and not policy.admit(33)
    assert MeshPolicy(1).room(0, 0) == 1
    with pytest.raises(ValueError, match="at least 1"):
        MeshPolicy(0)


def test_holders_of_a_needed_game_are_dialled_beyond_the_room_but_not_the_hard_cap() -> None:
    policy = MeshPolicy(2)  # hard cap 8
    for peer in ("h1", "h2", "h3"):
        policy.heard(peer, ["game"])
    policy.heard("other", ["another-game"])
    assert policy.knows_holder("game") and not policy.knows_holder("nobody-has-it")

    chosen = policy.holders_to_dial(["game"], {}, connected=2, connecting=0)
    assert len(chosen) == HOLDER_DIALS and chosen <= {"h1", "h2", "h3"}
    # One holder connected already: one more is enough.
    assert len(policy.holders_to_dial(["game"], {"game": 1}, 2, 0)) == HOLDER_DIALS - 1
    assert policy.holders_to_dial(["game"], {"game": HOLDER_DIALS}, 2, 0) == set()
    assert len(policy.holders_to_dial(["game"], {}, connected=7, connecting=0)) == 1
    assert policy.holders_to_dial(["game"], {}, connected=8, connecting=0) == set()

    policy.forget(["h1", "h2", "h3"])
    assert not policy.knows_holder("game")
    policy.heard("many", [f"g{i}" for i in range(100)])
    assert policy.knows_holder(f"g{MAX_GAMES_PER_PEER - 1}")
    assert not policy.knows_holder(f"g{MAX_GAMES_PER_PEER}")  # a neighbour's claim is bounded


def test_trim_lets_go_of_the_oldest_connections_that_serve_nothing() -> None:
    policy = MeshPolicy(2)
    now = 1000.0
    links = [
        Link("useful-old", since=0.0, useful=True),
        Link("idle-old", since=10.0, useful=False),
        Link("idle-older", since=5.0, useful=False),
        Link("idle-young", since=now - 1, useful=False),
    ]
    assert policy.trim(links, now) == ["idle-older", "idle-old"]  # 4 down to 2
    assert policy.trim(links[:2], now) == []  # within the cap
    # Young connections are kept while the mesh forms, even beyond the cap...
    young = [Link(f"p{i}", since=now - MIN_AGE + 1, useful=False) for i in range(5)]
    assert policy.trim(young, now) == []
    # ... unless a holder a download needs must get in: then the oldest idle one goes.
    assert policy.trim([*young, Link("useful", 0.0, True)], now, make_room=1) == ["p0"]
    # Connections that serve something are never let go.
    busy = [Link(f"b{i}", since=0.0, useful=True) for i in range(5)]
    assert policy.trim(busy, now, make_room=2) == []


def holder_behind_a_relay(make_peer: MakePeer) -> tuple[Daemon, Daemon, Path]:
    """A source with the game and a relay connected to it; the relay, a receiver
    connected to neither yet, and the game's root on the source."""
    source, relay, receiver = make_peer("source"), make_peer("relay"), make_peer("receiver")
    root = seed_game(source, game_entries(3 * MiB))
    for peer in (source, relay, receiver):
        peer.start()
    connect(relay, source)
    wait_for(lambda: sources_of(relay) == 1, 10, "the source's snapshot at the relay")
    return relay, receiver, root


@pytest.mark.slow
def test_a_download_reaches_a_holder_only_a_neighbour_knows(make_peer: MakePeer) -> None:
    """The receiver is connected to a relay only, and the relay to the source: the
    relay's exchange names the source as a holder, the download starts, and the mesh
    dials the source for it."""
    relay, receiver, root = holder_behind_a_relay(make_peer)
    connect(receiver, relay)
    assert sources_of(receiver) == 0
    assert [p["name"] for p in receiver.ctl_json("peers")] == ["relay"]

    def download() -> subprocess.CompletedProcess[str]:
        return receiver.ctl("--json", "download", GAME)

    # Refused at once while the receiver has heard of no holder (the relay tells its
    # peers within a few seconds); then the download waits for the mesh's dial.
    results: list[subprocess.CompletedProcess[str]] = []

    def started() -> bool:
        results.append(download())
        return results[-1].returncode == 0

    wait_for(started, 30, "a download that starts")
    refusals = [r.stderr for r in results[:-1]]
    assert all("no connected peer has" in r for r in refusals), refusals
    assert '"finished"' in results[-1].stdout, results[-1].stdout
    assert downloads(receiver.game_dir / GAME) == downloads(root)
    assert {p["name"] for p in receiver.ctl_json("peers")} == {"relay", "source"}


@pytest.mark.slow
def test_a_full_daemon_turns_a_peer_away_and_names_whom_else_to_try(make_peer: MakePeer) -> None:
    """--max-peers 1: four peers get in (four times the cap), the fifth is told the
    reason and the others' addresses, and dials them instead."""
    full = make_peer("full", extra_args=["--max-peers", "1"])
    inside = [make_peer(f"in{i}") for i in range(4)]
    late = make_peer("late")
    for peer in (full, *inside, late):
        peer.start()
    for peer in inside:
        connect(peer, full)
    # Its handshake completes (it may even see `full` for a moment), then it is told.
    late.ctl("connect", f"{full.listen}:{full.port}")
    wait_for(lambda: "too many peers connected" in late.stderr(), 20, "the reason, told")
    assert {p["name"] for p in full.ctl_json("peers")} == {p.name for p in inside}
    # The referral named the four inside, and `late` (room to dial 4) reaches them.
    names = {p.name for p in inside}
    wait_for(
        lambda: {p["name"] for p in late.ctl_json("peers")} == names,
        30,
        "the late peer connected to those the full one named",
    )


@pytest.mark.slow
def test_made_up_holders_from_a_neighbour_do_not_keep_the_real_one_undialled(
    make_peer: MakePeer, tmp_path: Path
) -> None:
    """A prankster connected to the receiver names 32 holders of the game where nothing
    answers, before the relay names the real one: the receiver tries a few, and while
    their addresses back off it dials the real holder and downloads from it."""
    relay, receiver, root = holder_behind_a_relay(make_peer)
    with run_exchange_liar(tmp_path / "liar", receiver):
        connect(receiver, relay)
        wait_for(
            lambda: receiver.ctl("--json", "download", GAME).returncode == 0,
            90,
            "a download that finishes",
        )
        assert downloads(receiver.game_dir / GAME) == downloads(root)
        names = {p["name"] for p in receiver.ctl_json("peers")}
        assert {"relay", "source", "hostile"} <= names, names
