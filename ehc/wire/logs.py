"""The log format both processes write to the shared stderr: text, or one JSON object per line.

The coordinator and its workers write to the same stream, so they must agree: a JSON log pipeline
that receives one text line drops or mangles it.  The coordinator passes its level and format to each
worker on the command line, so the worker's first line is already in the right format.  Tracebacks
that would otherwise escape as raw text (an uncaught exception, a warning) go through the same
handler.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from types import TracebackType

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
EXTRA_FIELDS = ("pod", "node", "ip", "health")
"""Structured fields a log call may attach (``extra=``); JSON lines carry them as keys."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, msg, the extra fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        out.update({k: getattr(record, k) for k in EXTRA_FIELDS if hasattr(record, k)})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str, *, role: str = "") -> None:
    """Send every log line, uncaught exception and warning to stderr in ``fmt`` at ``level``.

    ``role`` (e.g. ``worker[2]``) prefixes text lines so interleaved processes can be told apart.
    Raises ValueError for a level or format outside ``LEVELS`` / ``FORMATS``.
    """
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(
            f"log level must be one of {LEVELS} and format one of {FORMATS}, got {level!r} {fmt!r}"
        )
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        who = f"{role} " if role else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("ehc").critical("uncaught exception", exc_info=(kind, exc, tb))


class Every:
    """Says a repeated failure at most once per ``seconds``: when a line is due, ``due()`` gives the
    suffix counting the ones left unsaid since the last (often ""); otherwise None, and counts it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._said_at = -math.inf
        self._unsaid = 0

    def due(self) -> str | None:
        now = self._clock()
        if now - self._said_at < self._seconds:
            self._unsaid += 1
            return None
        more = f" ({self._unsaid} more since the last report)" if self._unsaid else ""
        self._said_at, self._unsaid = now, 0
        return more
