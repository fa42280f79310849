from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from lanspreadd.app.logs import (
    UNPACK_LOG_KEEP,
    JournalFormatter,
    LogLine,
    LogSink,
    UnpackLogs,
    clean_terminal_output,
)
from tests.support import Daemon, wait_for


def test_terminal_output_is_cleaned() -> None:
    raw = "Extracting  10%\rExtracting  55%\rExtracting 100%\nOK\n"
    assert clean_terminal_output(raw) == "Extracting 100%\nOK"
    assert clean_terminal_output("abc\b\bXY\n") == "aXY"
    assert clean_terminal_output("\x1b[1;32mgreen\x1b[0m done\x07\n") == "green done"
    assert clean_terminal_output("a\r\nb\n\n\n") == "a\nb"
    assert clean_terminal_output("long line\rshort\n") == "shortline"


def test_journal_priority_prefixes() -> None:
    fmt = JournalFormatter("%(message)s")
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "two\nlines", None, None)
    assert fmt.format(record) == "<3>two\n<3>lines"
    record = logging.LogRecord("x", logging.DEBUG, "f", 1, "dbg", None, None)
    assert fmt.format(record) == "<7>dbg"


def _logger(sink: LogSink, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers = [sink]
    logger.setLevel(logging.INFO)
    return logger


def test_log_file_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "lanspread.log"
    sink = LogSink(path, max_bytes=8192)
    lines: list[LogLine] = []
    sink.listeners.append(lines.append)
    logger = _logger(sink, "bounded")
    for i in range(2000):
        logger.info("message number %05d", i)
    sink.close()
    assert path.stat().st_size <= 8192 + 200
    text = path.read_text()
    assert "message number 01999" in text
    assert "message number 00000" not in text
    assert all(line.endswith(tuple("0123456789")) for line in text.splitlines())
    assert [line.seq for line in lines] == list(range(1, 2001))


def test_history_reads_never_see_a_torn_file(tmp_path: Path) -> None:
    sink = LogSink(tmp_path / "lanspread.log", max_bytes=4096)
    logger = _logger(sink, "concurrent")
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        last_seq = 0
        while not stop.is_set():
            seq, lines = sink.history(1000)
            if seq < last_seq:
                problems.append("watermark went backwards")
            last_seq = seq
            for line in lines:
                if not line.endswith("end"):
                    problems.append(f"torn line {line!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(3000):
        logger.info("line %d end", i)
    stop.set()
    thread.join()
    sink.close()
    assert problems == []
    reopened = LogSink(tmp_path / "lanspread.log")
    _seq, lines = reopened.history(5)
    reopened.close()
    assert lines[-1].endswith("line 2999 end")


def test_unpack_logs_persist_and_keep_the_last_twenty(tmp_path: Path) -> None:
    path = tmp_path / "unpack-logs.json"
    logs = UnpackLogs(path)
    for i in range(25):
        logs.add(f"g{i}", "install", float(i), i % 2 == 0, ["unar"], "", f"50%\r100%\nrun {i}\n")
    again = UnpackLogs(path)
    assert len(again.runs) == UNPACK_LOG_KEEP
    newest = again.newest_first()
    assert newest[0].game_id == "g24"
    assert newest[0].output == "100%\nrun 24"
    assert len(json.loads(path.read_text())) == UNPACK_LOG_KEEP


def test_unreadable_unpack_log_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "unpack-logs.json"
    path.write_text("{not json")
    assert UnpackLogs(path).runs == []


def test_any_string_reaches_every_sink_escaped(tmp_path: Path) -> None:
    """A lone surrogate made the strict UTF-8 log file raise inside a peer handler
    and stopped the daemon; a NUL is no valid D-Bus string for the LogLine signal."""
    sink = LogSink(tmp_path / "lanspread.log")
    seen: list[LogLine] = []
    sink.listeners.append(seen.append)

    def failing_listener(line: LogLine) -> None:
        raise RuntimeError("a reader went away")

    sink.listeners.append(failing_listener)
    hostile = "x\ud800 \x00 \x1b]0;owned\x07 done"
    _logger(sink, "anything").info("peer %s left", hostile)
    expected = "peer x\\ud800 \\x00 \\x1b]0;owned\\x07 done left"
    assert seen[0].text.endswith(expected)
    seen[0].text.encode("utf-8")  # valid UTF-8 for D-Bus
    _seq, lines = sink.history(10)
    assert lines[-1].endswith(expected)
    fmt = JournalFormatter("%(message)s")
    record = logging.LogRecord("x", logging.INFO, "f", 1, hostile, None, None)
    fmt.format(record).encode("utf-8")
    sink.close()


def test_quic_connections_log_no_info_lines(make_peer: Callable[..., Daemon]) -> None:
    """aioquic logged 'Negotiated protocol version' and 'ALPN negotiated' per connection."""
    first, second = make_peer("first").start(), make_peer("second").start()
    assert first.ctl_json("connect", f"127.0.0.1:{second.port}")["peer_id"]

    def logged(daemon: Daemon) -> list[str]:
        out = daemon.ctl("--json", "logs").stdout
        return [json.loads(line)["line"] for line in out.splitlines()]

    def connection_logged(daemon: Daemon) -> bool:
        return any("connected from" in line for line in logged(daemon))

    for daemon in (first, second):  # the log works
        wait_for(partial(connection_logged, daemon), 20, f"{daemon.name} to log the connection")
        lines = logged(daemon)
        assert not [line for line in lines if " quic: " in line], lines
        assert "quic: [" not in daemon.stderr()
