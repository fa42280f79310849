"""Entry point: parse configuration, run the daemon and the D-Bus API until signalled."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from lanspreadd.app.config import from_args
from lanspreadd.app.daemon import Daemon
from lanspreadd.app.logs import setup_logging
from lanspreadd.dbus.api import DBusApi, parse_bus_spec
from lanspreadd.errors import LanspreadError
from lanspreadd.net.notify import Notifier

log = logging.getLogger("lanspreadd")

EXIT_CONFIG = 2
EXIT_FAILED = 1


async def serve(daemon: Daemon, api: DBusApi, notifier: Notifier) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, daemon.stop)
    loop.add_signal_handler(signal.SIGHUP, _reload, daemon, notifier)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(daemon.run(ready))
        ready_wait = tg.create_task(ready.wait())
        await asyncio.wait([run, ready_wait], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            await api.connect()
            notifier.ready(daemon.status)
            watchdog = tg.create_task(notifier.watchdog())
            bus_lost = tg.create_task(api.wait_disconnected())
            await asyncio.wait([run, bus_lost], return_when=asyncio.FIRST_COMPLETED)
            if bus_lost.done() and not run.done():
                log.error("lost the D-Bus connection; stopping")
                daemon.failure = "lost the D-Bus connection"
                daemon.stop()
            notifier.stopping()
            await run
            watchdog.cancel()
            bus_lost.cancel()
            api.close()
        else:
            ready_wait.cancel()
    return EXIT_FAILED if daemon.failure else 0


def _reload(daemon: Daemon, notifier: Notifier) -> None:
    """SIGHUP (what `systemctl reload` sends): re-read the catalog, then say READY again.

    Before start-up is announced there is no reload for systemd to wait on.
    """
    announce = notifier.ready_sent
    if announce:
        notifier.reloading()
    try:
        daemon.reload_catalog()
    except LanspreadError as exc:
        log.error("catalog reload failed, keeping the old catalog: %s", exc)
    finally:
        if announce:
            notifier.ready(daemon.status)


def main(argv: list[str] | None = None) -> int:
    try:
        config = from_args(argv)
        parse_bus_spec(config.bus)
    except LanspreadError as exc:
        print(f"lanspreadd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        sink = setup_logging(config.log_level, config.log_path)
    except OSError as exc:
        print(f"lanspreadd: cannot open log file {config.log_path}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    sink.max_bytes = config.log_max_bytes
    notifier = Notifier()
    try:
        daemon = Daemon(config, sink)
        api = DBusApi(daemon, config.bus, config.use_polkit)
        code = asyncio.run(serve(daemon, api, notifier))
    except (OSError, LanspreadError) as exc:
        log.error("fatal: %s", exc)
        return EXIT_FAILED
    except ExceptionGroup as group:
        for error in group.exceptions:
            log.error("fatal: %s", error)
        return EXIT_FAILED
    finally:
        sink.close()
    log.info("lanspreadd stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
