"""lanspread-catalog, the organiser's tool: run as a user runs it, on real files and archives.

A pin must be what seats compute: the manifest root of the file list a daemon serves
(its HashCache) and the tree root of what the daemon's install unpacks. Every bad input
is refused by name and leaves the catalog file as it was.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanspreadd.archive.writer import Entry
from lanspreadd.catalogtool.cli import build_parser, main
from lanspreadd.catalogtool.pinning import pin_game
from lanspreadd.core.catalog import CatalogGame, embedded_catalog_path, write_catalog
from lanspreadd.core.hashes import CHUNK_SIZE, HashCache
from lanspreadd.core.install import GameFiles
from lanspreadd.core.manifest import manifest_root, tree_entries, tree_root
from lanspreadd.core.signedcatalog import key_text, parse_key, parse_signed
from lanspreadd.protocol.paths import LOCAL
from tests.support import SAMPLES, make_game, tree, wait_for
from tests.test_architecture import imported

SubCommands = argparse._SubParsersAction
ROOT = Path(__file__).resolve().parent.parent
TOOL = (sys.executable, "-m", "lanspreadd.catalogtool")


def tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it."""
    return subprocess.run(
        [*TOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def tool_json(*args: str | Path) -> dict[str, Any]:
    done = tool("--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def games_of(shown: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {game["id"]: game for game in shown["games"]}


def test_an_organiser_writes_pins_and_signs_a_catalog(tmp_path: Path) -> None:
    key_file, catalog = tmp_path / "organiser.pem", tmp_path / "party.json"
    made = tool("keygen", key_file)
    assert made.returncode == 0, made.stderr
    public = parse_key(made.stdout.strip())
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert tool("pubkey", key_file).stdout.strip() == key_text(public)
    trusted = frozenset({public})

    assert tool_json("init", "--key", key_file, catalog)["revision"] == 1
    assert parse_signed(catalog.read_bytes(), trusted).games == {}
    signing = ("--key", key_file, catalog)
    tool_json("add", *signing, "quake", "--name", "Quake", "--version", "1.06", "--genre", "FPS",
              "--players", "16", "--description", "Into the slipgate")  # fmt: skip
    tool_json("add", *signing, "doom-2", "--name", "Doom II", "--version", "1.9", "--size", "2000")

    games = tmp_path / "games"
    v106 = make_game(games / "1.06", "quake", "1.06")
    pinned = tool_json("pin", "--key", key_file, catalog, "quake", v106)
    assert pinned["revision"] == 4
    quake = pinned["game"]
    assert quake["pin"]["chunk_size"] == CHUNK_SIZE
    assert quake["size"] == sum(p.stat().st_size for p in v106.iterdir())

    shown = tool_json("show", catalog)
    assert (shown["revision"], shown["signer"]) == (4, key_text(public))
    assert games_of(shown)["quake"] == quake
    assert games_of(shown)["doom-2"]["pin"] is None
    human = tool("show", catalog).stdout
    assert "revision 4, 2 games, signature verified" in human
    assert ["quake", "1.06", "pinned", f"{quake['size']:,}", "16", "Quake"] in [
        line.split() for line in human.splitlines()
    ]

    # A new version drops the old pin; --pin pins the new one in the same revision.
    updated = tool_json("update", "--key", key_file, catalog, "quake", "--version", "1.08")
    assert updated["game"]["pin"] is None and updated["game"]["name"] == "Quake"
    v109 = make_game(games / "1.09", "quake", "1.09", [Entry("quake.exe", b"1.09" * 5000)])
    updated = tool_json(
        "update", "--key", key_file, catalog, "quake", "--version", "1.09", "--pin", v109
    )
    assert updated["game"]["pin"] not in (None, quake["pin"])
    renamed = tool_json("update", "--key", key_file, catalog, "quake", "--name", "Quake 1")
    assert renamed["game"]["pin"] == updated["game"]["pin"]  # same version: pin kept

    assert tool_json("remove", "--key", key_file, catalog, "doom-2")["revision"] == 8
    signed = parse_signed(catalog.read_bytes(), trusted)
    assert (signed.revision, list(signed.games)) == (8, ["quake"])
    assert signed.games["quake"].version == "1.09"
    private = key_file.read_text().splitlines()[1]
    assert private not in catalog.read_text()  # only the public key travels


def real_samples(names: str, directory: Path) -> Path:
    root = directory / "game"
    root.mkdir(parents=True)
    for path in SAMPLES.glob(names):
        shutil.copy(path, root)
    (root / "version.ini").write_text("2\n")
    return root


GAMES = {
    "stored-rar5": lambda d: make_game(d, "game", "2"),
    "stored-rar4": lambda d: make_game(d, "game", "2", fmt="rar4"),
    "rar5-volumes": lambda d: make_game(d, "game", "2", fmt="rar5-volumes"),
    "several-chunks": lambda d: make_game(
        d, "game", "2", [Entry("big.bin", os.urandom(9 << 20)), Entry("x.txt", b"x")]
    ),
    "rar3-solid": lambda d: real_samples("rar3-solid.rar", d),
    "rar5-volume-set": lambda d: real_samples("rar5-vols.part*.rar", d),
    "rar3-subdirs": lambda d: real_samples("rar3-subdirs.rar", d),
    "rar5-hard-link": lambda d: real_samples("rar5-hlink.rar", d),
}


@pytest.mark.parametrize("kind", list(GAMES))
def test_a_pin_is_what_a_daemon_serves_and_a_seat_installs(tmp_path: Path, kind: str) -> None:
    source = GAMES[kind](tmp_path / "organiser")
    before = tree(source)
    pin, size = pin_game("game", "2", source)
    assert tree(source) == before  # the organiser's directory is only read

    seat = tmp_path / "seat" / "game"
    shutil.copytree(source, seat)
    served = HashCache(tmp_path / "state" / "hashes").file_entries("game", seat)
    assert pin.manifest == manifest_root(CHUNK_SIZE, served)
    assert size == sum(f.size for f in served)
    GameFiles(seat).install()
    assert pin.tree == tree_root(tree_entries(seat / LOCAL))


def test_other_content_under_the_same_version_pins_differently(tmp_path: Path) -> None:
    honest = make_game(tmp_path / "honest", "game", "2")
    pin, _ = pin_game("game", "2", honest)
    entries = [Entry("bin/"), Entry("bin/start.sh", b"#!/bin/sh\nrm -rf ~\n", 0o755)]
    forged = make_game(tmp_path / "forged", "game", "2", entries)
    other, _ = pin_game("game", "2", forged)
    assert other.manifest != pin.manifest and other.tree != pin.tree


def test_a_game_directory_the_tool_may_not_write_is_pinned_the_same(
    make_tmpfs: Callable[[int], Path],
) -> None:
    """A compressed game unpacks through hard links beside its archives: on a read-only
    disk (or a seat's directory the daemon owns) it is unpacked from a copy instead."""
    disk = make_tmpfs(8)
    source = real_samples("rar3-solid.rar", disk)
    writable = pin_game("game", "2", source)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    assert pin_game("game", "2", source) == writable


@pytest.fixture
def party(tmp_path: Path) -> Path:
    """An organiser's directory: a key, a catalog with quake 1.0, quake's game directory."""
    assert main(["keygen", str(tmp_path / "key.pem")]) == 0
    assert main(["init", "--key", str(tmp_path / "key.pem"), str(tmp_path / "party.json")]) == 0
    add = ["add", "--key", str(tmp_path / "key.pem"), str(tmp_path / "party.json"), "quake"]
    assert main([*add, "--name", "Quake", "--version", "1.0"]) == 0
    make_game(tmp_path / "games", "quake", "1.0")
    return tmp_path


def refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], name: str, code: int
) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["--json", *argv]) == code
    printed = capsys.readouterr()
    error: dict[str, Any] = json.loads(printed.out)
    assert error["error"] == name, error
    assert f"lanspread-catalog: {name}: " in printed.err
    return error


def test_a_key_that_is_not_the_signer_is_refused(
    party: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = party / "party.json"
    assert main(["keygen", str(party / "other.pem")]) == 0
    document = catalog.read_bytes()
    other = ["--key", str(party / "other.pem"), str(catalog)]
    for argv in (
        ["add", *other, "doom", "--name", "Doom", "--version", "1.9"],
        ["update", *other, "quake", "--version", "6.66"],
        ["pin", *other, "quake", str(party / "games" / "quake")],
        ["remove", *other, "quake"],
    ):
        error = refused(capsys, argv, "NotAuthorized", 1)
        assert "only the key that signed a catalog may change it" in error["message"]
        assert catalog.read_bytes() == document


def write_pem(path: Path, key: Any, password: bytes | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )


def corrupt_archive(party: Path) -> None:
    archive = party / "games" / "quake" / "quake.rar"
    archive.write_bytes(archive.read_bytes()[:5000])


# (what is wrong, its arguments after the command, how to break the input, error, exit code)
BAD_INPUTS: list[tuple[str, list[str], Any, str, int]] = [
    ("an id that is no directory name", ["add", "{key}", "{cat}", "Quake/../x", "--name", "Q",
     "--version", "1"], None, "InvalidArgument", 2),
    ("an id already there", ["add", "{key}", "{cat}", "quake", "--name", "Q", "--version", "2"],
     None, "InvalidArgument", 2),
    ("a version no version.ini holds", ["add", "{key}", "{cat}", "doom", "--name", "Doom",
     "--version", "[1]"], None, "InvalidArgument", 2),
    ("a name with an escape sequence", ["update", "{key}", "{cat}", "quake", "--name",
     "Quake\x1b]0;pwned\x07"], None, "InvalidArgument", 2),
    ("nothing to change", ["update", "{key}", "{cat}", "quake"], None, "InvalidArgument", 2),
    ("an unknown game", ["remove", "{key}", "{cat}", "doom"], None, "NotFound", 1),
    ("pinning an unknown game", ["pin", "{key}", "{cat}", "doom", "{game}"], None, "NotFound", 1),
    ("a missing game directory", ["pin", "{key}", "{cat}", "quake", "{game}/nope"], None,
     "NotFound", 1),
    ("a game without version.ini", ["pin", "{key}", "{cat}", "quake", "{game}"],
     lambda p: (p / "games/quake/version.ini").unlink(), "InvalidState", 1),
    ("another version than the catalog's", ["pin", "{key}", "{cat}", "quake", "{game}"],
     lambda p: (p / "games/quake/version.ini").write_text("1.1\n"), "InvalidState", 1),
    ("a game without archives", ["pin", "{key}", "{cat}", "quake", "{game}"],
     lambda p: (p / "games/quake/quake.rar").unlink(), "InvalidState", 1),
    ("a corrupt archive", ["pin", "{key}", "{cat}", "quake", "{game}"], corrupt_archive,
     "ArchiveError", 1),
    ("an archive that climbs out", ["pin", "{key}", "{cat}", "quake", "{game}"],
     lambda p: shutil.copy(SAMPLES / "rar5-evil-symlink-traversal.rar", p / "games/quake"),
     "UnsafeArchive", 1),
    ("a missing key file", ["remove", "--key", "{dir}/nokey.pem", "{cat}", "quake"], None,
     "NotFound", 1),
    ("a key file that is no key", ["remove", "{key}", "{cat}", "quake"],
     lambda p: (p / "key.pem").write_text("hello\n"), "InvalidArgument", 2),
    ("a key file that is a directory", ["remove", "--key", "{dir}/games", "{cat}", "quake"],
     None, "InvalidArgument", 2),
    ("an encrypted key", ["remove", "{key}", "{cat}", "quake"],
     lambda p: write_pem(p / "key.pem", Ed25519PrivateKey.generate(), b"secret"),
     "InvalidArgument", 2),
    ("a key of another kind", ["remove", "{key}", "{cat}", "quake"],
     lambda p: write_pem(p / "key.pem", ec.generate_private_key(ec.SECP256R1())),
     "InvalidArgument", 2),
    ("a tampered catalog", ["remove", "{key}", "{cat}", "quake"],
     lambda p: (p / "party.json").write_text(
         (p / "party.json").read_text().replace('"Quake"', '"Quake II"')),
     "CatalogError", 1),
    ("a file that is no catalog", ["add", "{key}", "{cat}", "doom", "--name", "Doom",
     "--version", "1"], lambda p: (p / "party.json").write_text("[]"), "CatalogError", 1),
    ("a missing catalog", ["remove", "{key}", "{dir}/none.json", "quake"], None, "NotFound", 1),
    ("a catalog made twice", ["init", "{key}", "{cat}"], None, "InvalidArgument", 2),
    ("a key made twice", ["keygen", "{dir}/key.pem"], None, "InvalidArgument", 2),
    ("a game.db that is none", ["import-db", "{key}", "{dir}/key.pem", "{dir}/new.json"], None,
     "CatalogError", 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "breaking", "name", "code"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_is_refused_by_name_and_changes_nothing(
    party: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    breaking: Any,
    name: str,
    code: int,
) -> None:
    if breaking is not None:
        breaking(party)
    before = {p.name: p.read_bytes() for p in party.iterdir() if p.is_file()}
    game_before = tree(party / "games")
    refused(capsys, [word for arg in argv for word in filled(arg, party)], name, code)
    assert {p.name: p.read_bytes() for p in party.iterdir() if p.is_file()} == before
    assert tree(party / "games") == game_before


def filled(arg: str, party: Path) -> list[str]:
    """One argument of BAD_INPUTS with the party's paths in."""
    if arg == "{key}":
        return ["--key", str(party / "key.pem")]
    arg = arg.replace("{cat}", "{dir}/party.json").replace("{game}", "{dir}/games/quake")
    return [arg.replace("{dir}", str(party))]


def test_a_pinned_game_keeps_its_real_size(party: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, catalog = str(party / "key.pem"), str(party / "party.json")
    assert main(["pin", "--key", key, catalog, "quake", str(party / "games" / "quake")]) == 0
    document = Path(catalog).read_bytes()
    refused(capsys, ["update", "--key", key, catalog, "quake", "--size", "1"], "InvalidArgument", 2)
    assert Path(catalog).read_bytes() == document


def test_a_scratch_directory_too_small_is_named(
    party: Path, capsys: pytest.CaptureFixture[str], make_tmpfs: Callable[[int], Path]
) -> None:
    scratch = make_tmpfs(1)
    key, catalog = str(party / "key.pem"), party / "party.json"
    document = catalog.read_bytes()
    game = str(party / "games" / "quake")
    argv = ["pin", "--key", key, str(catalog), "quake", game, "--scratch", str(scratch)]
    refused(capsys, argv, "DiskFull", 1)
    assert catalog.read_bytes() == document
    assert list(scratch.iterdir()) == []


def locks_waiting() -> set[int]:
    """Processes waiting for a file lock (`->` lines of /proc/locks)."""
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->":
            waiting.add(int(fields[5]))
    return waiting


def test_changes_at_the_same_time_wait_for_each_other(party: Path) -> None:
    """Two organisers' commands at once: neither change is lost."""
    catalog = party / "party.json"
    document = catalog.read_bytes()
    commands = []
    with catalog.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        for game_id in ("doom", "hexen"):
            proc = subprocess.Popen(
                [*TOOL, "add", "--key", str(party / "key.pem"), str(catalog), game_id,
                 "--name", game_id.title(), "--version", "1"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            commands.append(proc)

            def waiting(pid: int = proc.pid) -> bool:
                return pid in locks_waiting()

            wait_for(waiting, 30, f"adding {game_id} to wait for the lock")
        assert catalog.read_bytes() == document
    for proc in commands:
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    signed = parse_signed(catalog.read_bytes())
    assert (signed.revision, sorted(signed.games)) == (4, ["doom", "hexen", "quake"])


def test_a_game_db_becomes_a_signed_catalog(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    public = parse_key(tool("keygen", key).stdout)
    db = tmp_path / "game.db"
    games = [
        CatalogGame("quake", "Quake", "Into the slipgate", 300 << 20, "1.06", "FPS", 16),
        CatalogGame("doom-2", "Doom II", "", 0, "1.9"),
    ]
    write_catalog(db, games)
    made = tool_json("import-db", "--key", key, db, tmp_path / "party.json")
    assert made["revision"] == 1
    signed = parse_signed((tmp_path / "party.json").read_bytes(), frozenset({public}))
    assert signed.games == {g.id: g for g in games}
    # The sample catalog the package embeds imports too.
    sample = tool_json("import-db", "--key", key, embedded_catalog_path(), tmp_path / "s.json")
    assert sample["games"]


def test_the_package_ships_the_command_with_its_man_page() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lanspread-catalog"] == "lanspreadd.catalogtool.cli:main"
    assert "debian/lanspread-catalog.1" in (ROOT / "debian/lanspread.manpages").read_text()
    page = (ROOT / "debian/lanspread-catalog.1").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, SubCommands))
    assert len(commands.choices) == 9
    described = {line.split()[1] for line in page.replace("\\-", "-").splitlines()
                 if line.startswith(".BI ")}  # fmt: skip
    assert set(commands.choices) <= described


def test_the_tool_uses_only_the_layers_below_the_daemon() -> None:
    """Files only: no sockets, no D-Bus, no daemon roles; the key never reaches them."""
    allowed = {"core", "archive", "protocol", "errors", "catalogtool"}
    for path in sorted((ROOT / "lanspreadd" / "catalogtool").glob("*.py")):
        names = imported(ast.parse(path.read_text()))
        layers = {n.split(".")[1] for n in names if n.startswith("lanspreadd.")}
        assert layers <= allowed, f"{path.name} imports {sorted(layers - allowed)}"
