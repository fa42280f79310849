"""A text authentication agent, so polkit can ask the person at the terminal.

polkit asks for a password through an agent; a desktop session has one, a text console
or an ssh login has none, and a call that needs authentication is refused. Like
`systemctl` and `pkexec`, lanspreadctl then starts `pkttyagent` (Debian's polkitd
package) for its own process: polkit finds an agent registered for the process behind
a bus name before it looks at the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

AGENT = "pkttyagent"
REGISTER_TIMEOUT = 10.0  # polkitd is bus-activated; it may have to start first


def in_login_session() -> bool:
    """Whether logind has a session for us: a `session-N.scope` in our cgroup, which is
    what sd_pid_get_session() and so polkit look at."""
    try:
        cgroups = Path("/proc/self/cgroup").read_text()
    except OSError:
        return False
    return re.search(r"/session-[^/]+\.scope$", cgroups, re.MULTILINE) is not None


def has_controlling_terminal() -> bool:
    """pkttyagent talks through /dev/tty, and exits 127 when there is none."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


class TextAgent:
    """A running pkttyagent registered for this process; stop() ends it."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, polkit_bus: str | None) -> TextAgent | None:
        """Start pkttyagent and wait until it has registered with the polkit on
        `polkit_bus` (None: the system bus). None if it cannot help here."""
        path = shutil.which(AGENT)
        if path is None or not has_controlling_terminal():
            return None
        env = dict(os.environ)
        if polkit_bus is not None:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = polkit_bus
        read_fd, write_fd = os.pipe()
        argv = [path, "--process", str(os.getpid()), "--notify-fd", str(write_fd)]
        if in_login_session():
            # As systemctl does: the session's desktop agent, if any, asks instead. Without
            # a session polkit (122) ignores a fallback agent altogether, and there is no
            # session agent to defer to.
            argv.insert(3, "--fallback")
        try:
            # Popen, not asyncio's: stop() must work from the client's synchronous close().
            proc = await asyncio.to_thread(subprocess.Popen, argv, pass_fds=(write_fd,), env=env)
        except OSError:
            os.close(read_fd)
            return None
        finally:
            os.close(write_fd)
        # pkttyagent closes the fd once registered, or exits (127) when it cannot register.
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def on_closed() -> None:
            if not closed.done():
                closed.set_result(None)

        loop.add_reader(read_fd, on_closed)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed, REGISTER_TIMEOUT)
        finally:
            loop.remove_reader(read_fd)
            os.close(read_fd)
        return cls(proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
