"""lanspread-catalog: the organiser's command line (exit codes as lanspreadctl's: 0 ok,
1 failed, 2 usage). Every failure is a named error; a failed command leaves the catalog
file as it was."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanspreadd.catalogtool.document import (
    Games,
    change_catalog,
    check_game,
    check_signer,
    create_catalog,
    file_error,
    read_catalog,
)
from lanspreadd.catalogtool.keys import create_key, load_key
from lanspreadd.catalogtool.pinning import pin_game
from lanspreadd.core.catalog import Catalog, CatalogGame, Pin, check_game_id
from lanspreadd.core.signedcatalog import SignedCatalog, fingerprint, key_text
from lanspreadd.errors import InvalidArgument, InvalidState, LanspreadError, NotFound
from lanspreadd.protocol.text import printable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
SHOWN = 1 << 16  # characters of one printed value; the catalog allows 4096 per text

Handler = Callable[[argparse.Namespace, "Output"], int]


class Output:
    """Human text on a terminal (every unprintable character escaped), or JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: dict[str, Any], text: str) -> None:
        if self.as_json:
            print(json.dumps(data, sort_keys=True, ensure_ascii=False), flush=True)
        else:
            print(_escaped(text), flush=True)

    def step(self, what: str) -> None:
        """Progress of a long command, for people: a pin unpacks a whole game."""
        if not self.as_json and sys.stderr.isatty():
            print(f"lanspread-catalog: {_escaped(what)} ...", file=sys.stderr, flush=True)

    def fail(self, exc: LanspreadError) -> int:
        if self.as_json:
            print(json.dumps({"error": exc.name, "message": str(exc)}), flush=True)
        print(f"lanspread-catalog: {exc.name}: {_escaped(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_FAILED


def _escaped(text: str) -> str:
    return "\n".join(printable(line, SHOWN) for line in text.split("\n"))


def _games(count: int) -> str:
    return f"{count} game" if count == 1 else f"{count} games"


def cmd_keygen(args: argparse.Namespace, out: Output) -> int:
    key = create_key(args.keyfile)
    return _emit_key(out, key, args.keyfile)


def cmd_pubkey(args: argparse.Namespace, out: Output) -> int:
    return _emit_key(out, load_key(args.keyfile), args.keyfile)


def _emit_key(out: Output, key: Ed25519PrivateKey, path: Path) -> int:
    public = key.public_key().public_bytes_raw()
    data = {"key_file": str(path), "key": key_text(public), "fingerprint": fingerprint(public)}
    out.emit(data, key_text(public))  # alone on stdout, for KEY=$(lanspread-catalog pubkey K)
    return EXIT_OK


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    signed = create_catalog(args.catalog, load_key(args.key), {})
    return _emit_change(out, args.catalog, signed, "created, no games")


def cmd_import_db(args: argparse.Namespace, out: Output) -> int:
    key = load_key(args.key)
    games = Catalog.load(args.gamedb).games
    signed = create_catalog(args.catalog, key, games)
    return _emit_change(
        out, args.catalog, signed, f"created from {args.gamedb}, {_games(len(games))}"
    )


def cmd_add(args: argparse.Namespace, out: Output) -> int:
    game = check_game(
        CatalogGame(
            id=check_game_id(args.id),
            name=args.name,
            description=args.description or "",
            size=args.size or 0,
            version=args.version,
            genre=args.genre or "",
            max_players=args.players or 0,
        )
    )

    def add(games: Games) -> Games:
        if game.id in games:
            raise InvalidArgument(f"{game.id} is already in the catalog: change it with update")
        return games | {game.id: game}

    signed = change_catalog(args.catalog, load_key(args.key), add)
    return _emit_change(out, args.catalog, signed, f"added {game.id} {game.version}", game.id)


def cmd_update(args: argparse.Namespace, out: Output) -> int:
    check_game_id(args.id)
    key = load_key(args.key)
    seen = _game_of(args.catalog, key, args.id)
    changes = {
        field: value
        for field, value in (
            ("name", args.name),
            ("description", args.description),
            ("version", args.version),
            ("genre", args.genre),
            ("max_players", args.players),
            ("size", args.size),
        )
        if value is not None
    }
    if not changes and args.pin is None:
        raise InvalidArgument("nothing to change: give --name, --version, ... or --pin DIR")
    game = check_game(dataclasses.replace(seen, **changes))
    if game.version != seen.version:
        game = dataclasses.replace(game, pin=None)  # a pin is of one version's content
    if args.pin is not None:
        if args.size is not None:
            raise InvalidArgument("--size and --pin: a pinned game's size is its real size")
        pin, size = pin_game(game.id, game.version, args.pin, args.scratch, out.step)
        game = dataclasses.replace(game, pin=pin, size=size)
    elif args.size is not None and game.pin is not None:
        raise InvalidArgument(f"{game.id} is pinned: its size is the pinned download's size")
    signed = change_catalog(args.catalog, key, _replace(seen, game))
    what = "updated" if changes else "pinned"
    return _emit_change(out, args.catalog, signed, f"{what} {game.id} {game.version}", game.id)


def cmd_pin(args: argparse.Namespace, out: Output) -> int:
    check_game_id(args.id)
    key = load_key(args.key)
    seen = _game_of(args.catalog, key, args.id)
    pin, size = pin_game(seen.id, seen.version, args.gamedir, args.scratch, out.step)
    game = dataclasses.replace(seen, pin=pin, size=size)
    signed = change_catalog(args.catalog, key, _replace(seen, game))
    return _emit_change(out, args.catalog, signed, f"pinned {game.id} {game.version}", game.id)


def cmd_remove(args: argparse.Namespace, out: Output) -> int:
    game_id = check_game_id(args.id)

    def remove(games: Games) -> Games:
        if games.pop(game_id, None) is None:
            raise NotFound(f"{game_id} is not in the catalog")
        return games

    signed = change_catalog(args.catalog, load_key(args.key), remove)
    return _emit_change(out, args.catalog, signed, f"removed {game_id}")


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    signed = read_catalog(args.catalog)
    rows = [["ID", "VERSION", "PINNED", "SIZE", "PLAYERS", "NAME"]]
    for game in signed.games.values():
        pinned = "pinned" if game.pin is not None else "-"
        players = str(game.max_players or "-")
        rows.append([game.id, game.version, pinned, f"{game.size:,}", players, game.name])
    rows = [[_escaped(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    text = "\n".join(
        [
            f"revision {signed.revision}, {_games(len(signed.games))}, signature verified",
            f"signer   {key_text(signed.signer)} (fingerprint {signed.signer_fingerprint})",
            "",
            *table,
        ]
    )
    out.emit(_catalog_json(args.catalog, signed), text)
    return EXIT_OK


def _game_of(path: Path, key: Ed25519PrivateKey, game_id: str) -> CatalogGame:
    """The game as the catalog holds it now, read before a long pin: a wrong key or an
    unknown id is refused before minutes of hashing, not after."""
    current = read_catalog(path)
    check_signer(path, current, key)
    game = current.games.get(game_id)
    if game is None:
        raise NotFound(f"{game_id} is not in the catalog: add it first")
    return game


def _replace(seen: CatalogGame, game: CatalogGame) -> Callable[[Games], Games]:
    """An edit that puts `game` in place of `seen`, if no one changed it meanwhile."""

    def replace(games: Games) -> Games:
        if games.get(seen.id) != seen:
            raise InvalidState(f"{seen.id} changed in the catalog meanwhile: run the command again")
        return games | {game.id: game}

    return replace


def _emit_change(
    out: Output, path: Path, signed: SignedCatalog, what: str, game_id: str = ""
) -> int:
    data = _catalog_json(path, signed) | {"changed": what}
    if game_id:
        data["game"] = _game_json(signed.games[game_id])
    text = f"{path}: revision {signed.revision}: {what}"
    game = signed.games.get(game_id)
    if game is not None and game.pin is not None:
        text += f" (pinned: {game.size:,} bytes, manifest {game.pin.manifest[:16]}…)"
    out.emit(data, text)
    return EXIT_OK


def _catalog_json(path: Path, signed: SignedCatalog) -> dict[str, Any]:
    return {
        "catalog": str(path),
        "revision": signed.revision,
        "signer": key_text(signed.signer),
        "fingerprint": signed.signer_fingerprint,
        "games": [_game_json(game) for game in signed.games.values()],
    }


def _game_json(game: CatalogGame) -> dict[str, Any]:
    return {
        "id": game.id,
        "name": game.name,
        "description": game.description,
        "version": game.version,
        "genre": game.genre,
        "players": game.max_players,
        "size": game.size,
        "pin": _pin_json(game.pin),
    }


def _pin_json(pin: Pin | None) -> dict[str, Any] | None:
    if pin is None:
        return None
    return {"manifest": pin.manifest, "chunk_size": pin.chunk_size, "tree": pin.tree}


def _count(text: str) -> int:
    """A whole number of at least 0 (players, bytes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lanspread-catalog",
        description="Write, pin and sign a LAN party's catalog (files only: no daemon).",
        epilog="Exit codes: 0 success, 1 failed, 2 usage.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sp.set_defaults(handler=handler)
        return sp

    def signing(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sp = add(name, handler, help_text)
        sp.add_argument(
            "--key", required=True, type=Path, metavar="KEYFILE", help="the organiser's key"
        )
        return sp

    def catalog(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("catalog", type=Path, metavar="CATALOG", help="the signed catalog file")
        return sp

    def scratch(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--scratch",
            type=Path,
            metavar="DIR",
            help="where to unpack the game to hash its installed tree (default: $TMPDIR "
            "or /tmp; needs the installed size free)",
        )

    def fields(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("--name", required=required, help="the name players see")
        sp.add_argument(
            "--version",
            required=required,
            help="the version seats must hold (what the game's version.ini says)",
        )
        sp.add_argument("--description", metavar="TEXT", help="a line or a few about the game")
        sp.add_argument("--genre", metavar="TEXT")
        sp.add_argument("--players", type=_count, metavar="N", help="most players at once")
        sp.add_argument(
            "--size", type=_count, metavar="BYTES", help="download size, until the game is pinned"
        )

    add(
        "keygen",
        cmd_keygen,
        "make a new organiser key (file mode 0600; never overwritten) "
        "and print its public key, which seats trust",
    ).add_argument("keyfile", type=Path, metavar="KEYFILE")
    add("pubkey", cmd_pubkey, "print the public key of a key file").add_argument(
        "keyfile", type=Path, metavar="KEYFILE"
    )
    catalog(signing("init", cmd_init, "create a signed catalog: revision 1, no games"))
    imp = signing("import-db", cmd_import_db, "create a signed catalog from a game.db's games")
    imp.add_argument("gamedb", type=Path, metavar="GAMEDB")
    catalog(imp)
    sp = catalog(signing("add", cmd_add, "add a game"))
    sp.add_argument("id", metavar="ID", help="a-z, 0-9, '.', '_', '-': its directory's name")
    fields(sp, required=True)
    sp = catalog(
        signing(
            "update",
            cmd_update,
            "change a game; a new version drops its pin unless --pin DIR pins the new one",
        )
    )
    sp.add_argument("id", metavar="ID", help="the game's id")
    fields(sp, required=False)
    sp.add_argument("--pin", type=Path, metavar="GAMEDIR", help="pin the version from GAMEDIR")
    scratch(sp)
    sp = catalog(
        signing(
            "pin",
            cmd_pin,
            "pin a game's catalog version to the content of GAMEDIR (its archives and "
            "version.ini, as on a seat): seats then accept only that content",
        )
    )
    sp.add_argument("id", metavar="ID", help="the game's id")
    sp.add_argument("gamedir", type=Path, metavar="GAMEDIR")
    scratch(sp)
    catalog(signing("remove", cmd_remove, "remove a game")).add_argument(
        "id", metavar="ID", help="the game's id"
    )
    catalog(add("show", cmd_show, "verify a catalog's signature and list its games"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    handler: Handler = args.handler
    try:
        return handler(args, out)
    except LanspreadError as exc:
        return out.fail(exc)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a game file that cannot be read while it is hashed, say
        return out.fail(file_error(Path(str(exc.filename or "")), exc, "read"))
    except KeyboardInterrupt:
        print("lanspread-catalog: interrupted; the catalog is unchanged", file=sys.stderr)
        return EXIT_FAILED
