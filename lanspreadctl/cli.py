"""lanspreadctl: the command-line client (exit codes in SPEC)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from dbus_fast import Message

from lanspreadctl import catalogs, limits
from lanspreadctl.client import (
    BUS_NAME,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    JOB_IFACE,
    MANAGER_IFACE,
    ROOT_PATH,
    UNKNOWN_OBJECT,
    Client,
    ClientError,
    unwrap,
)
from lanspreadctl.terminal import escape, escape_lines


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def snake(props: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in props.items():
        name = "".join("_" + c.lower() if c.isupper() else c for c in key).lstrip("_")
        out[name] = value
    return out


class Output:
    def __init__(self, as_json: bool, stream: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.stream = stream

    def emit(self, data: Any, text: str) -> None:
        if self.as_json:
            print(json.dumps(data, sort_keys=True), file=self.stream, flush=True)
        elif text:
            print(escape_lines(text), file=self.stream, flush=True)


def sharing(game: dict[str, Any]) -> str:
    """'sharing 12 of 24 chunks' while a download serves peers what it has; else ''."""
    total = game.get("SharingTotal", 0)
    return f"sharing {game.get('SharingChunks', 0)} of {total} chunks" if total else ""


def game_table(games: list[dict[str, Any]]) -> str:
    rows = [["ID", "STATE", "INSTALLED", "LOCAL", "CATALOG", "PINNED", "NAME"]]
    for g in games:
        doing = "; ".join(part for part in (g["Operation"], sharing(g)) if part)
        state = g["Availability"] + (f" ({doing})" if doing else "")
        if g.get("UpdateReady"):
            state += " (update ready)"
        elif g["Availability"] == "Ready" and not g["Operation"] and not g.get("Served", True):
            state += " (hashing for peers)"
        elif g["Availability"] == "LocalOnly" and g.get("InstalledVersion", "") not in (
            "",
            g["CatalogVersion"],
        ):
            state += " (not the catalog version)"
        installed = (g.get("InstalledVersion") or "yes") if g["Installed"] else "no"
        local_version = g["LocalVersion"] or "-"
        pinned = "yes" if g.get("Pinned") else "-"
        cells = [g["Id"], state, installed, local_version, g["CatalogVersion"], pinned, g["Name"]]
        rows.append([escape(str(c)) for c in cells])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


class ProgressBar:
    """A one-line bar on a terminal; silent elsewhere."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = escape(label)
        self.stream = stream
        self.enabled = stream.isatty()
        self.last = 0.0

    def show(
        self, done: int, total: int, rate: float, force: bool = False, sources: int = 0
    ) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.1):
            return
        self.last = now
        frac = done / total if total else 0.0
        width = 30
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {frac * 100:5.1f}% "
            f"{human_bytes(done)}/{human_bytes(total)} {human_bytes(rate)}/s"
            + (f" from {sources} peer{'s' if sources != 1 else ''}" if sources else "")
            + "   "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


async def wait_job(client: Client, path: str, label: str, out: Output) -> int:
    """Follow a Job object to its end, drawing progress; exit code from its outcome."""
    done = asyncio.get_running_loop().create_future()
    bar = ProgressBar(label)
    props: dict[str, Any] = {}

    def on_signal(msg: Message) -> None:
        if msg.path != path:
            return
        if msg.member == "PropertiesChanged" and msg.body and msg.body[0] == JOB_IFACE:
            props.update(unwrap(msg.body[1]))
            bar.show(
                props.get("BytesDone", 0),
                props.get("Bytes", 0),
                props.get("Rate", 0),
                sources=len(props.get("Sources", {})),
            )
        elif msg.member == "Completed" and not done.done():
            done.set_result(None)

    await client.subscribe(f"type='signal',sender='{BUS_NAME}',path='{path}'", on_signal)
    await client.watch_daemon()
    try:
        props.update(await client.get_all(path, JOB_IFACE))
        if props["State"] == "running":
            try:
                await client.until_daemon_gone(done, label)
            except ClientError:
                bar.close()  # the message goes on a line of its own
                raise
            props.update(await client.get_all(path, JOB_IFACE))
    except ClientError as exc:
        if exc.name != UNKNOWN_OBJECT:
            raise
        # Ended jobs leave the bus after a while: this one ended before we looked.
        bar.close()
        out.emit({"job": path, "state": "ended"}, f"{label}: ended (see lanspreadctl log)")
        return EXIT_OK
    bar.show(props["BytesDone"], props["Bytes"], 0, force=True)
    bar.close()
    state = props["State"]
    text = f"{label}: {state}"
    if props["ErrorMessage"]:
        text += f": {escape(props['ErrorMessage'])}"
    out.emit(snake(props) | {"job": path}, text)
    return EXIT_OK if state == "finished" else EXIT_FAILED


Handler = Callable[[Client, argparse.Namespace, Output], Awaitable[int]]


async def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    props = await client.get_all(ROOT_PATH, MANAGER_IFACE)
    games = await client.manager("ListGames")
    counts: dict[str, int] = {}
    for g in games:
        counts[g["Availability"]] = counts.get(g["Availability"], 0) + 1
    installed = sum(1 for g in games if g["Installed"])
    busy = [g["Id"] for g in games if g["Operation"]]
    pinned = sum(1 for g in games if g.get("Pinned"))
    refusals: dict[str, int] = props.get("Refusals", {})
    data = snake(props) | {
        "games": len(games),
        "pinned": pinned,
        "installed": installed,
        "availability": counts,
        "busy": busy,
    }
    text = "\n".join(
        [
            f"lanspreadd {props['Version']} ({escape(props['Name'])}): " + escape(props["Status"]),
            f"game dir:   {escape(props['GameDir'])} ({human_bytes(props['FreeSpace'])} free)",
            f"catalog:    {escape(props['Catalog'])} ({len(games)} games, {pinned} pinned)",
            f"            {catalogs.describe(props)}; "
            f"{len(props.get('TrustedKeys', []))} organiser key(s) trusted",
            f"games:      {installed} installed, "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
            f"operations: {', '.join(busy) if busy else 'none'}",
            f"limits:     {limits.describe(props)}",
            "sharing:    "
            + (
                "games whole and downloads in progress (their verified chunks)"
                if props.get("ShareWhileDownloading", True)
                else "whole games only (share_while_downloading is off)"
            ),
            "refused:    "
            + (", ".join(f"{n} {cause}" for cause, n in sorted(refusals.items())) or "nothing"),
        ]
    )
    out.emit(data, text)
    return EXIT_OK


async def cmd_games(client: Client, args: argparse.Namespace, out: Output) -> int:
    games = await client.manager("ListGames")
    props = await catalogs.catalog_props(client)
    out.emit([snake(g) for g in games], f"{game_table(games)}\ncatalog {catalogs.describe(props)}")
    return EXIT_OK


async def cmd_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    game = await client.manager("GetGame", "s", args.game)
    props = await catalogs.catalog_props(client)
    game |= {k: props[k] for k in ("CatalogRevision", "CatalogSigner")}
    lines = [f"{k}: {escape(str(v))}" for k, v in game.items() if not k.startswith("Sharing")]
    if game.get("SharingTotal") or game["Operation"] == "download":
        shared = f"{sharing(game) or 'sharing nothing'} while downloading"
        if not props.get("ShareWhileDownloading", True):
            shared += " (share_while_downloading is off)"
        lines.append(f"Sharing: {shared}")
    out.emit(snake(game), "\n".join(lines))
    return EXIT_OK


def operation(member: str, verb: str) -> Handler:
    async def run(client: Client, args: argparse.Namespace, out: Output) -> int:
        path = await client.manager(member, "s", args.game)
        if args.no_wait:
            out.emit({"job": path}, f"{verb} of {args.game} started: {path}")
            return EXIT_OK
        return await wait_job(client, path, f"{verb} {args.game}", out)

    return run


async def cmd_download(client: Client, args: argparse.Namespace, out: Output) -> int:
    path = await client.manager("Download", "sb", args.game, args.install)
    if args.no_wait:
        out.emit({"job": path}, f"download of {args.game} started: {path}")
        return EXIT_OK
    verb = "download and install" if args.install else "download"
    return await wait_job(client, path, f"{verb} {args.game}", out)


def peer_table(peers: list[dict[str, Any]]) -> str:
    rows = [["ID", "NAME", "ADDRESS", "DIRECTION", "GAMES"]]
    for p in peers:
        games = ", ".join(f"{g} {v}" for g, v in sorted(p["Games"].items())) or "-"
        cells = [p["Id"][:12], p["Name"], p["Address"], p["Direction"], games]
        rows.append([escape(c) for c in cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


async def cmd_peers(client: Client, args: argparse.Namespace, out: Output) -> int:
    peers = await client.manager("ListPeers")
    out.emit([snake(p) for p in peers], peer_table(peers) if peers else "no peers connected")
    return EXIT_OK


async def cmd_connect(client: Client, args: argparse.Namespace, out: Output) -> int:
    peer_id = await client.manager("ConnectPeer", "s", args.address)
    out.emit({"peer_id": peer_id}, f"connected to {args.address} (peer {peer_id[:12]})")
    return EXIT_OK


async def cmd_wait_peers(client: Client, args: argparse.Namespace, out: Output) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        peers = await client.manager("ListPeers")
        if len(peers) >= args.count:
            out.emit([snake(p) for p in peers], f"{len(peers)} peer(s) connected")
            return EXIT_OK
        if time.monotonic() >= deadline:
            out.emit(
                {"error": "timeout", "peers": len(peers)},
                f"only {len(peers)} of {args.count} peer(s) after {args.timeout:g}s",
            )
            return EXIT_FAILED
        await asyncio.sleep(0.2)


async def cmd_cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    path = await client.manager("Cancel", "s", args.game)
    out.emit({"job": path}, f"cancel requested for {args.game}")
    return EXIT_OK


async def cmd_set_game_dir(client: Client, args: argparse.Namespace, out: Output) -> int:
    """As root on the packaged service it also gives the service access (see gamedir)."""
    from lanspreadctl.gamedir import set_game_dir

    done = await set_game_dir(client, args.path)
    text = "\n".join([*done.steps, f"game directory is now {done.path}"])
    out.emit({"game_dir": done.path, "steps": done.steps}, text)
    return EXIT_OK


async def cmd_reload(client: Client, args: argparse.Namespace, out: Output) -> int:
    count = await client.manager("ReloadCatalog")
    out.emit({"games": count}, f"catalog reloaded: {count} games")
    return EXIT_OK


async def cmd_logs(client: Client, args: argparse.Namespace, out: Output) -> int:
    queue: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
    if args.follow:

        def on_line(msg: Message) -> None:
            if msg.member == "LogLine" and msg.path == ROOT_PATH:
                queue.put_nowait((msg.body[0], msg.body[1], msg.body[2]))

        await client.subscribe(
            f"type='signal',sender='{BUS_NAME}',path='{ROOT_PATH}',member='LogLine'", on_line
        )
    watermark, lines = await client.manager("GetLogs", "u", args.lines)
    if args.follow:
        await client.watch_daemon()
    for line in lines:
        out.emit({"line": line}, escape(line))
    while args.follow:
        seq, level, text = await client.until_daemon_gone(queue.get(), "log lines")
        if seq > watermark:
            out.emit({"seq": seq, "level": level, "line": text}, escape(text))
    return EXIT_OK


async def cmd_unpack_logs(client: Client, args: argparse.Namespace, out: Output) -> int:
    runs = await client.manager("GetUnpackLogs")
    parts = []
    for run in runs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["Finished"]))
        result = "ok" if run["Success"] else f"FAILED: {escape(run['Error'])}"
        parts.append(f"== {when} {run['Operation']} {run['GameId']}: {result}\n{run['Output']}")
    out.emit([snake(r) for r in runs], "\n".join(parts) or "no unpack runs yet")
    return EXIT_OK


async def cmd_monitor(client: Client, args: argparse.Namespace, out: Output) -> int:
    stop = asyncio.get_running_loop().create_future()

    def on_signal(msg: Message) -> None:
        if msg.member == "NameOwnerChanged":
            if msg.body and msg.body[0] == BUS_NAME and not msg.body[2] and not stop.done():
                stop.set_result(None)
            return
        body = unwrap(list(msg.body))
        out.emit(
            {"path": msg.path, "interface": msg.interface, "member": msg.member, "body": body},
            f"{msg.path} {msg.member} {json.dumps(body)}",
        )

    await client.subscribe(f"type='signal',sender='{BUS_NAME}'", on_signal)
    await client.subscribe(
        f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BUS_NAME}'",
        on_signal,
    )
    await stop
    out.emit({"event": "daemon-stopped"}, "lanspreadd stopped")
    return EXIT_UNREACHABLE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lanspreadctl", description="Control lanspreadd.")
    bus = p.add_mutually_exclusive_group()
    bus.add_argument(
        "--system",
        dest="bus",
        action="store_const",
        const="system",
        help="talk to lanspreadd on the system bus, where the packaged service runs (default)",
    )
    bus.add_argument(
        "--session",
        dest="bus",
        action="store_const",
        const="session",
        help="talk to a lanspreadd started by hand with --bus session",
    )
    bus.add_argument("--address", dest="bus", metavar="ADDRESS", help="a D-Bus address")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_in(parent: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        sp.set_defaults(handler=handler)
        return sp

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        return add_in(sub, name, handler, help_text)

    add("status", cmd_status, "daemon status")
    add("games", cmd_games, "list catalog games and their state")
    add("show", cmd_show, "show one game").add_argument("game")
    for name, member, verb in (
        ("install", "Install", "install"),
        ("update", "Update", "update"),
        ("uninstall", "Uninstall", "uninstall"),
        ("remove", "RemoveDownload", "remove"),
        ("stream-install", "StreamInstall", "stream-install"),
    ):
        sp = add(name, operation(member, verb), f"{verb} a game")
        sp.add_argument("game")
        sp.add_argument("--no-wait", action="store_true", help="return once started")
    dl = add("download", cmd_download, "download a game from peers")
    dl.add_argument("game")
    dl.add_argument("--install", action="store_true", help="install once downloaded")
    dl.add_argument("--no-wait", action="store_true", help="return once started")
    add("peers", cmd_peers, "list connected peers")
    add("connect", cmd_connect, "connect to a peer by address").add_argument(
        "address", metavar="HOST[:PORT]"
    )
    wp = add("wait-peers", cmd_wait_peers, "wait until N peers are connected")
    wp.add_argument("count", type=int, metavar="N")
    wp.add_argument("--timeout", type=float, default=30.0, metavar="S")
    add("cancel", cmd_cancel, "cancel the running operation of a game").add_argument("game")
    add(
        "set-game-dir",
        cmd_set_game_dir,
        "use PATH for games; as root (or a player through polkit) also give the service "
        "access to it",
    ).add_argument("path", metavar="PATH")
    add("reload-catalog", cmd_reload, "re-read the catalog")
    limits.add_command(sub, add_in)
    catalogs.add_commands(sub, add_in)
    logs = add("logs", cmd_logs, "daemon log")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    add("unpack-logs", cmd_unpack_logs, "output of the last unpack runs")
    add("monitor", cmd_monitor, "print daemon events as they happen")
    return p


async def run(args: argparse.Namespace, out: Output) -> int:
    client = Client(args.bus or "system")
    try:
        await client.connect()
        handler: Handler = args.handler
        return await handler(client, args, out)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "lines", 0) < 0:
        parser.error("--lines must not be negative")
    out = Output(args.json)
    try:
        return asyncio.run(run(args, out))
    except ClientError as exc:
        if args.json:
            print(json.dumps({"error": exc.name or "error", "message": str(exc)}), flush=True)
        hint = ""
        if exc.code == EXIT_DENIED:
            hint = " (ask an administrator, or run with the rights polkit requires)"
        print(f"lanspreadctl: {escape(str(exc))}{hint}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK


__all__ = ["EXIT_USAGE", "main"]
