"""The upload and download limits as an administrator sees them: configured, changed
at run time, kept across restarts (see `app.settings` for which wins).

The limiters themselves belong to what they slow down: the data server's to what we
serve, the job runner's to every download and stream install; a change reaches the
transfers running at once.
"""

from __future__ import annotations

import asyncio
import logging

from lanspreadd.app.config import Config
from lanspreadd.app.settings import Settings
from lanspreadd.core.ratelimit import check_rate
from lanspreadd.errors import InvalidArgument, LanspreadError
from lanspreadd.net.ratelimit import RateLimiter

log = logging.getLogger(__name__)

KEYS = ("upload_limit", "download_limit")


def describe(rate: int) -> str:
    return f"{rate} B/s" if rate else "unlimited"


class Limits:
    def __init__(
        self, config: Config, settings: Settings, upload: RateLimiter, download: RateLimiter
    ) -> None:
        self.settings = settings
        self.limiters = {"upload_limit": upload, "download_limit": download}
        self._setting = asyncio.Lock()  # sets one after the other: what is kept is what applies
        for key, limiter in self.limiters.items():
            limiter.rate = self._initial(config, key)

    def _initial(self, config: Config, key: str) -> int:
        """A flag, else the rate set at run time, else lanspreadd.toml's."""
        configured: int = getattr(config, key)
        if key in config.explicit:
            return configured
        saved = self.settings.limit(key)
        if saved is None:
            return configured
        if saved != configured:
            log.info(
                "%s: %s as set at run time (lanspreadd.toml says %s)",
                key,
                describe(saved),
                describe(configured),
            )
        return saved

    def rate(self, key: str) -> int:
        return self.limiters[key].rate

    async def set(self, key: str, rate: int) -> None:
        """Keep the new rate, then apply it to every transfer now; on a failure to keep
        it nothing changes."""
        why = check_rate(rate)
        if why is not None:
            raise InvalidArgument(f"{key}: {why}")
        limiter = self.limiters[key]
        async with self._setting:
            try:
                await asyncio.to_thread(self.settings.save_limit, key, rate)
            except OSError as exc:
                raise LanspreadError(f"cannot keep {key} in {self.settings.path}: {exc}") from exc
            old, limiter.rate = limiter.rate, rate
        if rate != old:
            log.info("%s is now %s (was %s)", key, describe(rate), describe(old))
