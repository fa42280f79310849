"""Arguments as D-Bus callers send them, checked and turned into domain values.

The signature already fixed each argument's type; what is left is its content.
"""

from __future__ import annotations

from lanspreadd.core.catalog import Catalog, check_game_id
from lanspreadd.core.escape import echoed
from lanspreadd.errors import InvalidArgument, NotFound

MAX_ADDRESS = 255


def known_game(catalog: Catalog, game_id: str) -> str:
    """A catalog game's id; checked before polkit is asked, so nobody is prompted for
    a game that does not exist."""
    gid = check_game_id(game_id)
    if catalog.get(gid) is None:
        raise NotFound(f"no game {gid!r} in the catalog")
    return gid


def address(text: str) -> tuple[str, int | None]:
    """HOST, HOST:PORT or [IPv6]:PORT; the port is None when not given."""
    if not text or len(text) > MAX_ADDRESS:
        raise InvalidArgument("give an address as HOST or HOST:PORT")
    host, sep, port_text = text.rpartition(":")
    port: int | None = None
    if not sep or "]" in port_text:
        host = text
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise InvalidArgument(f"invalid port in {echoed(text)!r}") from None
    host = host.strip("[]")
    if not host or (port is not None and not 0 < port < 65536):
        raise InvalidArgument(f"invalid address {echoed(text)!r}")
    return host, port
