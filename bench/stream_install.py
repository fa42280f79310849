"""Stream install time versus download-then-install of the same game, side by side.

One source and one receiver on loopback, each on its own private D-Bus. The
receiver installs a generated game twice, once by `download --install` and
once by `stream-install`, starting from nothing each time.

    python bench/stream_install.py --size 1G
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datapath import GAME, make_game, parse_size, run_job
from lanspreadd.core.hashes import HashCache
from tests.support import Daemon, PrivateBus


def timed(receiver: Daemon, member: str, signature: str, body: list[object]) -> float:
    return asyncio.run(run_job(receiver.bus.address, member, signature, body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="lanspread-bench-") as tmp:
        scratch = Path(tmp)
        peers: list[Daemon] = []
        try:
            for name in ("source", "receiver"):
                base = scratch / name
                (base / "bus").mkdir(parents=True)
                (base / "games").mkdir()
                peers.append(Daemon(PrivateBus(base / "bus"), base / "games", base / "state"))
            source, receiver = peers
            make_game(source.game_dir / GAME, size)
            HashCache(source.state_dir / "hashes").file_entries(GAME, source.game_dir / GAME)
            for peer in peers:
                peer.start()
            assert receiver.ctl("connect", f"127.0.0.1:{source.port}").returncode == 0
            while receiver.ctl_json("show", GAME)["sources"] < 1:
                time.sleep(0.1)
            download = timed(receiver, "Download", "sb", [GAME, True])
            shutil.rmtree(receiver.game_dir / GAME)
            while receiver.ctl_json("show", GAME)["availability"] != "Absent":
                time.sleep(0.1)
            streamed = timed(receiver, "StreamInstall", "s", [GAME])
        finally:
            for peer in peers:
                peer.stop()
                peer.bus.stop()
    print(f"game: {size / 1e9:.2f} GB stored RAR, one source, loopback")
    print(f"{'download + install s':>22} {'stream install s':>17} {'ratio':>6}")
    print(f"{download:>22.1f} {streamed:>17.1f} {streamed / download:>6.2f}")


if __name__ == "__main__":
    main()
