"""Configuration: `/etc/lanspread/lanspreadd.toml`, overridden by command-line flags."""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lanspreadd.core.ratelimit import check_rate
from lanspreadd.core.signedcatalog import parse_key
from lanspreadd.errors import CatalogError, ConfigError
from lanspreadd.protocol.text import first_unprintable

DEFAULT_CONFIG = Path("/etc/lanspread/lanspreadd.toml")
DEFAULT_PORT = 41800
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Config:
    bus: str = "system"
    game_dir: Path = Path("/var/lib/lanspread/games")
    state_dir: Path = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/lanspread").split(":")[0])
    catalog: Path | None = None
    port: int = DEFAULT_PORT
    name: str = socket.gethostname()
    mdns: bool = True
    log_file: Path | None = None
    log_level: str = "info"
    log_max_bytes: int = 2 << 20
    polkit: str = "auto"
    fallback_scan_interval: float = 300.0
    listen: str = "0.0.0.0"  # noqa: S104 - peers on the LAN must reach us
    mdns_interfaces: tuple[str, ...] = ()
    # Bytes per second, 0 unlimited: what peers pull from us in all, and what all our
    # downloads and stream installs pull. Set at run time (D-Bus), they are kept in the
    # state directory and win over this file at the next start; a flag wins over both.
    upload_limit: int = 0
    download_limit: int = 0
    # Concurrent bulk data connections: a receiver opens two per game it fetches from
    # us; anything beyond these is refused before it holds a descriptor for long.
    data_connections_per_address: int = 32
    data_connections: int = 512
    # download --install streams the installed tree instead when the disk cannot hold
    # both the archives and the install (about twice the catalog size).
    stream_install_when_low_disk: bool = True
    # Serve the chunks of a download in progress to peers downloading the same files
    # (the swarm): a crowd starting together then fills at about the speed of one copy.
    share_while_downloading: bool = True
    # Peer connections kept once nothing needs more (`core.mesh`, the bounded mesh): we
    # dial half of them; a download dials holders beyond it, up to four times as many.
    max_peers: int = 8
    # Organiser keys ("ed25519:<base64>") whose signed catalogs we adopt; those trusted at
    # run time (`lanspreadctl catalog trust`, kept in the state directory) count too.
    trusted_keys: tuple[str, ...] = ()
    explicit: frozenset[str] = frozenset()

    @property
    def use_polkit(self) -> bool:
        """On a session bus only the owner can connect, so polkit is off unless asked for."""
        if self.polkit == "auto":
            return self.bus == "system"
        return self.polkit == "on"

    @property
    def log_path(self) -> Path:
        if self.log_file is not None:
            return self.log_file
        logs = os.environ.get("LOGS_DIRECTORY")
        return (Path(logs.split(":")[0]) if logs else self.state_dir) / "lanspread.log"


_TYPES: dict[str, type] = {
    "bus": str,
    "game_dir": Path,
    "state_dir": Path,
    "catalog": Path,
    "port": int,
    "name": str,
    "mdns": bool,
    "log_file": Path,
    "log_level": str,
    "log_max_bytes": int,
    "polkit": str,
    "fallback_scan_interval": float,
    "listen": str,
    "mdns_interfaces": tuple,
    "upload_limit": int,
    "download_limit": int,
    "data_connections_per_address": int,
    "data_connections": int,
    "stream_install_when_low_disk": bool,
    "share_while_downloading": bool,
    "max_peers": int,
    "trusted_keys": tuple,
}


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty path string")
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of strings")
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _check_rates(config: Config) -> None:
    for key in ("upload_limit", "download_limit"):
        why = check_rate(getattr(config, key))
        if why is not None:
            raise ConfigError(f"{key}: {why}")


def validate(config: Config) -> Config:
    if not 1 <= config.port <= 65535:
        raise ConfigError(f"port {config.port} is out of range 1-65535")
    if config.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if config.polkit not in ("auto", "on", "off"):
        raise ConfigError(f"polkit {config.polkit!r} is not one of auto, on, off")
    _check_rates(config)
    if config.data_connections_per_address < 1 or config.data_connections < 1:
        raise ConfigError("data_connections_per_address and data_connections must be positive")
    if not 1 <= config.max_peers <= 1024:
        raise ConfigError(f"max_peers must be 1-1024, not {config.max_peers}")
    if config.log_max_bytes < 4096:
        raise ConfigError("log_max_bytes must be at least 4096")
    if config.fallback_scan_interval <= 0:
        raise ConfigError("fallback_scan_interval must be positive")
    if not config.name or len(config.name) > 63:
        raise ConfigError("name must be 1-63 characters")
    if first_unprintable(config.name) is not None:
        raise ConfigError(f"name {config.name!r} holds an unprintable character: peers refuse it")
    for key in config.trusted_keys:
        try:
            parse_key(key)
        except CatalogError as exc:
            raise ConfigError(f"trusted_keys: {exc}") from None
    return config


def load_file(path: Path, base: Config, required: bool) -> Config:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return base
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    known = {f.name for f in fields(Config)} - {"explicit"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}")
    values = {key: _coerce(key, value, str(path)) for key, value in data.items()}
    return replace(base, **values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lanspreadd", description="lanspread system daemon")
    p.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG})")
    p.add_argument("--bus", help="system, session, or a D-Bus address")
    p.add_argument("--game-dir", type=Path)
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--catalog", type=Path, help="game.db to use instead of the embedded one")
    p.add_argument("--port", type=int, help="UDP port for QUIC")
    p.add_argument("--name", help="name shown to peers")
    p.add_argument("--no-mdns", action="store_true", default=None)
    p.add_argument(
        "--no-share-while-downloading",
        action="store_true",
        default=None,
        help="serve a game only once it is whole, not the chunks of a download in progress",
    )
    p.add_argument("--log-file", type=Path)
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--polkit", choices=("auto", "on", "off"))
    p.add_argument(
        "--upload-limit", type=int, metavar="BYTES_PER_S", help="cap what peers download from us"
    )
    p.add_argument(
        "--download-limit",
        type=int,
        metavar="BYTES_PER_S",
        help="cap what all our downloads and stream installs pull from peers",
    )
    p.add_argument(
        "--data-connections-per-address",
        type=int,
        metavar="N",
        help="cap concurrent data connections from one address (default 32)",
    )
    p.add_argument(
        "--max-peers",
        type=int,
        metavar="N",
        help="peer connections kept when idle (default 8); downloads may open more to holders",
    )
    p.add_argument("--listen", help="address for the QUIC and data ports (default all)")
    p.add_argument(
        "--mdns-interface",
        action="append",
        dest="mdns_interfaces",
        metavar="IP",
        help="announce and browse mDNS only on this address (repeatable)",
    )
    p.add_argument(
        "--trust-key",
        action="append",
        dest="trusted_keys",
        metavar="KEY",
        help="adopt catalogs signed by this organiser key, ed25519:<base64> (repeatable; "
        "replaces the file's trusted_keys)",
    )
    return p


def from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    config = load_file(config_path, Config(), required=args.config is not None)
    overrides: dict[str, Any] = {}
    for key in (
        "bus",
        "game_dir",
        "state_dir",
        "catalog",
        "port",
        "name",
        "log_file",
        "log_level",
        "polkit",
        "listen",
        "upload_limit",
        "download_limit",
        "data_connections_per_address",
        "max_peers",
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.no_mdns:
        overrides["mdns"] = False
    if args.no_share_while_downloading:
        overrides["share_while_downloading"] = False
    if args.mdns_interfaces:
        overrides["mdns_interfaces"] = tuple(args.mdns_interfaces)
    if args.trusted_keys:
        overrides["trusted_keys"] = tuple(args.trusted_keys)
    return validate(replace(config, explicit=frozenset(overrides), **overrides))
