"""Memory back once a flood is over.

A flood of connections leaves its garbage behind: aioquic's connections hold
themselves in reference cycles, which only a full collection frees, and glibc
keeps what they freed. A flood shows as refusals, so once they stop, the garbage
is collected and handed back, a few times over (connections caught mid-handshake
end within seconds): 640 proven QUIC connections in 10 s from 20 addresses left a
daemon 38 MiB up, 21 MiB once given back (what stays is Python's own arenas).
"""

from __future__ import annotations

import asyncio
import gc

from lanspreadd.app.memory import release_freed_memory
from lanspreadd.core.refusals import RefusalTally

QUIET = 5.0
RELEASES = 3


async def release_after_floods(refusals: RefusalTally, quiet: float = QUIET) -> None:
    seen = refusals.totals.total()
    pending = 0
    while True:
        await asyncio.sleep(quiet)
        total = refusals.totals.total()
        if total != seen:
            seen, pending = total, RELEASES
        elif pending:
            pending -= 1
            gc.collect()
            release_freed_memory()
