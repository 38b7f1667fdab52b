"""JSON lines on stderr, shaped like Go's slog JSON handler.

hourglassd passes its workers' stderr through to its own log, so a Python
worker's lines sit next to the Go worker's and the executor's and can be
searched the same way: {"time", "level", "msg", key: value...}. Durations
are written in nanoseconds, as slog writes a time.Duration.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from typing import Any, Optional, TextIO

_lock = threading.Lock()


class Logger:
    """A minimal structured logger: ``log.info("msg", key=value, ...)``."""

    def __init__(self, stream: Optional[TextIO] = None, **fields: Any) -> None:
        self._stream = stream
        self._fields = fields

    def with_fields(self, **fields: Any) -> "Logger":
        merged = dict(self._fields)
        merged.update(fields)
        return Logger(self._stream, **merged)

    def _write(self, level: str, msg: str, fields: dict) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).astimezone()
        rec = {"time": now.isoformat(timespec="microseconds"), "level": level, "msg": msg}
        rec.update(self._fields)
        rec.update(fields)
        line = json.dumps(rec, default=str, ensure_ascii=False)
        stream = self._stream or sys.stderr
        with _lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed: nothing sensible left to do

    def debug(self, msg: str, **fields: Any) -> None:
        self._write("DEBUG", msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._write("INFO", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self._write("WARN", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._write("ERROR", msg, fields)


def nanoseconds(seconds: float) -> int:
    return int(seconds * 1e9)
