"""Hand freed memory back to the system after each job.

A download or install moves gigabytes through 4 MiB buffers in worker threads;
glibc keeps what they freed in per-thread arenas, so a daemon that has just
finished a job sits on tens of MiB it will not use until the next one, on a
machine that is about to start a game. `malloc_trim` returns it. Elsewhere than
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _load_trim()


def release_freed_memory() -> None:
    if _trim is not None:
        _trim(0)
