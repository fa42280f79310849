"""The folders are the architecture: dependencies run one way, and a test keeps them so.

Layers, top to bottom (each may import those below it, never those above):

    lanspreadd.main   the entry point: the daemon and its D-Bus adapter together
    catalogtool/      the organiser's `lanspread-catalog`: files only, no daemon, no network
    dbus/             the D-Bus adapter: the only layer that knows D-Bus names
    app/              composition root and roles: daemon, games, host, downloader
    net/              adapters to the world: the only layer that opens sockets
    core/             the pure domain: no sockets, no asyncio, no D-Bus
    archive/          RAR listing, checks, extraction (core.install unpacks through it)
    protocol/         sans-IO peer protocol: imports nothing of lanspreadd outside itself
    errors            every error, a leaf

lanspreadctl is a separate client: it imports nothing of the daemon but the POSIX ACL
codec, which root's side of `set-game-dir` shares with the daemon.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lanspreadd"
MAX_CLASS_LINES = 250

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "protocol": {"protocol"},
    "archive": {"archive", "protocol", "errors"},
    "core": {"core", "archive", "protocol", "errors"},
    "net": {"net", "core", "archive", "protocol", "errors"},
    "app": {"app", "net", "core", "archive", "protocol", "errors"},
    "dbus": {"dbus", "app", "net", "core", "archive", "protocol", "errors"},
    "catalogtool": {"catalogtool", "core", "archive", "protocol", "errors"},
}
# Third-party and standard modules a layer must not use.
FORBIDDEN_MODULES: dict[str, set[str]] = {
    "protocol": {"asyncio", "socket", "subprocess", "sqlite3", "cryptography", "rarfile"},
    "core": {"asyncio", "socket", "dbus_fast", "aioquic", "zeroconf"},
    "archive": {"asyncio", "socket", "dbus_fast", "aioquic", "zeroconf"},
    "catalogtool": {"asyncio", "socket", "dbus_fast", "aioquic", "zeroconf"},
}
# Calls that open sockets: only net/ (and the bus connection in dbus/) make them.
SOCKET_OPENERS = {"create_connection", "start_server", "open_connection", "socket"}


def layer_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] in ALLOWED:
        return rel.parts[0]
    if rel.name == "errors.py" and len(rel.parts) == 1:
        return "errors"
    return None  # the entry point and tools on top may import anything


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.parts)


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "lanspreadd":
                names.update(f"lanspreadd.{a.name}" for a in node.names)
    return names


def lanspreadd_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "lanspreadd" or len(parts) == 1 or parts[1].startswith("__"):
        return None  # the package itself (its version) belongs to no layer
    return "errors" if parts[1] == "errors" else parts[1]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_run_one_way(path: Path) -> None:
    layer = layer_of(path)
    if layer is None:
        return
    tree = ast.parse(path.read_text())
    names = imported(tree)
    wrong = sorted(
        name
        for name in names
        if (target := lanspreadd_layer(name)) is not None and target not in ALLOWED[layer]
    )
    assert not wrong, f"{layer}/ may not import {wrong}"
    banned = sorted(n for n in names if n.split(".")[0] in FORBIDDEN_MODULES.get(layer, set()))
    assert not banned, f"{layer}/ may not use {banned}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_network_layer_opens_sockets(path: Path) -> None:
    if layer_of(path) in ("net", "dbus"):
        return
    tree = ast.parse(path.read_text())
    opened = [
        f"line {node.lineno}: {node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SOCKET_OPENERS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("socket", "asyncio")
    ]
    assert not opened, f"{path.name} opens sockets outside net/: {opened}"


def test_only_the_dbus_layer_knows_dbus_error_names() -> None:
    knows = sorted(
        str(p.relative_to(ROOT))
        for p in modules()
        if "org.lanspread.Lanspread1.Error" in p.read_text() and layer_of(p) != "dbus"
    )
    assert not knows


CLIENT_MAY_USE = {"lanspreadd.core", "lanspreadd.core.acl"}


def test_the_client_imports_nothing_of_the_daemon() -> None:
    for path in sorted((ROOT / "lanspreadctl").rglob("*.py")):
        names = imported(ast.parse(path.read_text()))
        daemon = {n for n in names if n.split(".")[0] == "lanspreadd"} - CLIENT_MAY_USE
        assert not daemon, f"{path.name} imports {sorted(daemon)}"


def test_no_class_does_everything() -> None:
    """A class over 250 lines is a module's worth of jobs: split it by role."""
    large = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    large.append(f"{path.relative_to(ROOT)}:{node.name} ({size} lines)")
    assert not large
