"""`lanspreadctl limit`: the upload and download limits, shown and set.

Rates are bytes per second; K, M and G multiply by 1024, 1024^2 and 1024^3, as curl's,
rsync's and wget's limits do. 0 or "none" is unlimited. The client checks only that a
rate is one; what the daemon refuses (2^63 or more) comes back with its error name.
"""

from __future__ import annotations

import argparse
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from lanspreadctl.client import (
    ERROR_PREFIX,
    EXIT_OK,
    EXIT_USAGE,
    MANAGER_IFACE,
    ROOT_PATH,
    Client,
    ClientError,
)

if TYPE_CHECKING:
    from lanspreadctl.cli import Output

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
RATE = re.compile(r"(\d+(?:\.\d+)?)([KMG]?)", re.IGNORECASE)
LARGEST = (1 << 64) - 1  # what D-Bus `t` carries
UNLIMITED = ("none", "unlimited")
# The command's options and the Manager properties they set.
PROPERTIES = {"upload": "UploadLimit", "download": "DownloadLimit"}


def parse_rate(text: str) -> int:
    """Bytes per second from "0", "none", "750000", "500K", "1.5M", "1G"."""
    if text.strip().lower() in UNLIMITED:
        return 0
    found = RATE.fullmatch(text.strip())
    if found is None:
        why = "a limit cannot be negative" if text.strip().startswith("-") else "not a rate"
        raise ClientError(
            f"{text!r}: {why}; give bytes per second, e.g. 500K, 10M or 1G (0 or none: unlimited)",
            EXIT_USAGE,
            ERROR_PREFIX + "InvalidArgument",
        )
    rate = int(Decimal(found[1]) * UNITS[found[2].upper()])
    if rate > LARGEST:
        raise ClientError(
            f"{text!r} is more than any rate can be ({LARGEST} bytes per second)",
            EXIT_USAGE,
            ERROR_PREFIX + "InvalidArgument",
        )
    return rate


def show_rate(rate: int) -> str:
    if not rate:
        return "unlimited"
    for unit in ("G", "M", "K"):
        if rate >= UNITS[unit]:
            return f"{rate / UNITS[unit]:.4g} {unit}iB/s"
    return f"{rate} B/s"


def describe(props: dict[str, Any]) -> str:
    """'upload 10 MiB/s, download unlimited', from the Manager's properties."""
    return ", ".join(f"{name} {show_rate(props[prop])}" for name, prop in PROPERTIES.items())


async def cmd_limit(client: Client, args: argparse.Namespace, out: Output) -> int:
    # Every rate given is checked before any is set.
    wanted = {
        prop: parse_rate(text)
        for option, prop in PROPERTIES.items()
        if (text := getattr(args, option)) is not None
    }
    for prop, rate in wanted.items():
        await client.set_manager_property(prop, "t", rate)
    props = await client.get_all(ROOT_PATH, MANAGER_IFACE)
    out.emit(
        {f"{option}_limit": props[prop] for option, prop in PROPERTIES.items()},
        "\n".join(
            f"{option + ':':9} {show_rate(props[prop])}" for option, prop in PROPERTIES.items()
        ),
    )
    return EXIT_OK


def add_command(sub: Any, add_common: Any) -> None:
    """`limit [--upload RATE] [--download RATE]` under the top-level subcommands."""
    limit = add_common(
        sub, "limit", cmd_limit, "show the upload and download limits, or set them (kept)"
    )
    limit.add_argument(
        "--upload",
        metavar="RATE",
        help="what peers may pull from us in all, e.g. 10M (0 or none: unlimited)",
    )
    limit.add_argument(
        "--download",
        metavar="RATE",
        help="what all our downloads and stream installs may pull, e.g. 50M (0 or none: unlimited)",
    )
