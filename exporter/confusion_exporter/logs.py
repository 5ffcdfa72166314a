"""logfmt logging: one line per event, machine-greppable, no secrets."""

from __future__ import annotations

import logging
import sys
import time


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage().replace('"', "'").replace("\n", " ")
        level = record.levelname.lower()
        line = f'ts={ts}.{int(record.msecs):03d}Z level={level} logger={record.name} msg="{message}"'
        for key, value in getattr(record, "fields", {}).items():
            text = str(value).replace('"', "'").replace("\n", " ")
            line += f' {key}="{text}"' if " " in text or not text else f" {key}={text}"
        return line


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every plugin it loads at INFO; its migration lines are WARNING-worthy only on error.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
