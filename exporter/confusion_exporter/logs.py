"""logfmt logging: one line per event, machine-greppable, no secrets.

A value cannot forge a line or a key: values with spaces, quotes, '=' or backslashes are
quoted, quotes and backslashes inside escaped, and control and format characters written as
escapes (:func:`printable`), so every event is exactly one line of ``key=value`` pairs that
a logfmt parser reads back as written. Registered secrets are scrubbed from each value
before it is quoted (:mod:`redaction`).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from . import redaction
from .printable import printable

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+,*%-]+$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def logfmt_value(value: Any, *, quote: bool = False) -> str:
    """One logfmt value: bare when it is a plain token, else quoted with Go-style escapes."""
    text = redaction.scrub(str(value))
    if not quote and _BARE.match(text):
        return text
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def logfmt_key(key: str) -> str:
    return _KEY_UNSAFE.sub("_", key) or "_"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = record.levelname.lower()
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={level} logger={logfmt_value(record.name)} "
            f"msg={logfmt_value(record.getMessage(), quote=True)}"
        )
        for key, value in getattr(record, "fields", {}).items():
            line += f" {logfmt_key(key)}={logfmt_value(value)}"
        return line


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library warnings would go to stderr raw; through logging they become logfmt lines too.
    logging.captureWarnings(True)
    # Alembic narrates every plugin it loads at INFO; its migration lines are WARNING-worthy only on error.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
