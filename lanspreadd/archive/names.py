"""What archive files are called: `*.rar`, and multi-volume sets `*.partN.rar`."""

from __future__ import annotations

import re

VOLUME_RE = re.compile(r"^(?P<stem>.+)\.part(?P<num>\d+)\.rar$", re.IGNORECASE)
