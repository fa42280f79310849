"""Logging: journal-friendly stderr, a bounded log file with live sequence ids,
and the persistent history of unpack runs."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lanspreadd.core.escape import escape_unsafe
from lanspreadd.core.install import atomic_write

# sd-daemon(3) priorities, read by journald from a `<N>` line prefix.
PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
ANSI_RE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
UNPACK_LOG_KEEP = 20
UNPACK_OUTPUT_LIMIT = 64 * 1024


def priority_of(levelno: int) -> int:
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority so journald keeps the level."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority_of(record.levelno)}>"
        text = escape_unsafe(super().format(record))
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def clean_terminal_output(text: str) -> str:
    """Collapse what a terminal would show: CR redraws, backspaces, escapes removed."""
    text = ANSI_RE.sub("", text.replace("\r\n", "\n"))
    lines: list[str] = []
    for raw_line in text.split("\n"):
        line: list[str] = []
        col = 0
        for ch in raw_line:
            if ch == "\r":
                col = 0
            elif ch == "\b":
                col = max(0, col - 1)
            elif ch == "\t" or (ch >= " " and ch != "\x7f"):
                if col < len(line):
                    line[col] = ch
                else:
                    line.append(ch)
                col += 1
        lines.append("".join(line).rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


@dataclass(frozen=True)
class LogLine:
    seq: int
    level: str
    text: str


LogListener = Callable[[LogLine], None]


class LogSink(logging.Handler):
    """The bounded `lanspread.log`.

    One lock serialises appends, trimming and history reads, so a reader never
    sees a half-trimmed file and trimming never drops a line appended after the
    history was taken. Sequence ids let a client join history and live lines
    without duplicates.
    """

    def __init__(self, path: Path | None, max_bytes: int = 2 << 20) -> None:
        super().__init__()
        self.path = path
        self.max_bytes = max_bytes
        self.seq = 0
        self.listeners: list[LogListener] = []
        self._lock = threading.Lock()
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8", errors="backslashreplace")
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = escape_unsafe(self.format(record))
        except Exception:  # a broken record must not kill the daemon
            self.handleError(record)
            return
        with self._lock:
            self.seq += 1
            line = LogLine(self.seq, record.levelname, text)
            if self._fh is not None:
                self._fh.write(text.replace("\n", "\n  ") + "\n")
                self._fh.flush()
                if self._fh.tell() > self.max_bytes:
                    self._trim()
        for listener in list(self.listeners):
            try:
                listener(line)
            except Exception:  # a failing reader must not fail the code that logged
                self.handleError(record)

    def _trim(self) -> None:
        """Keep the newest half, cut at a line boundary; called with the lock held."""
        assert self.path is not None
        assert self._fh is not None
        self._fh.close()
        data = self.path.read_bytes()
        keep = data[len(data) - self.max_bytes // 2 :]
        newline = keep.find(b"\n")
        keep = keep[newline + 1 :] if newline >= 0 else b""
        atomic_write(self.path, keep, durable=False)  # any thread may log: no fsync
        self._fh = self.path.open("a", encoding="utf-8", errors="backslashreplace")

    def history(self, max_lines: int) -> tuple[int, list[str]]:
        """Return the watermark (last seq written) and up to max_lines newest lines."""
        with self._lock:
            if self.path is None or not self.path.exists():
                return self.seq, []
            lines = self.path.read_text("utf-8", "replace").splitlines()
            return self.seq, lines[-max_lines:] if max_lines > 0 else []

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        super().close()


def setup_logging(level: str, log_file: Path | None) -> LogSink:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    root.addHandler(stderr)
    sink = LogSink(log_file)
    root.addHandler(sink)
    # aioquic logs two info lines per QUIC connection (its logger is plain "quic"):
    # noise in a party of dozens of peers. Its warnings still come through.
    logging.getLogger("quic").setLevel(logging.WARNING)
    return sink


@dataclass(frozen=True)
class UnpackRun:
    game_id: str
    operation: str
    started: float
    finished: float
    success: bool
    backends: list[str]
    error: str
    output: str


class UnpackLogs:
    """The last unpack runs, persisted in `unpack-logs.json` across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: list[UnpackRun] = []
        try:
            data = json.loads(path.read_text("utf-8"))
            self.runs = [UnpackRun(**item) for item in data][-UNPACK_LOG_KEEP:]
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as exc:
            logging.getLogger(__name__).warning("ignoring unreadable %s: %s", path, exc)

    def add(
        self,
        game_id: str,
        operation: str,
        started: float,
        success: bool,
        backends: list[str],
        error: str,
        output: str,
    ) -> None:
        cleaned = clean_terminal_output(output)[-UNPACK_OUTPUT_LIMIT:]
        self.runs.append(
            UnpackRun(game_id, operation, started, time.time(), success, backends, error, cleaned)
        )
        self.runs = self.runs[-UNPACK_LOG_KEEP:]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps([asdict(r) for r in self.runs], indent=1).encode())

    def newest_first(self) -> list[UnpackRun]:
        return sorted(self.runs, key=lambda r: r.finished or r.started, reverse=True)
