"""Settings shared by every part of ehc, and the Go-style duration syntax they are written in."""

from __future__ import annotations

import re

import msgspec

from ehc.wire.checks import Check

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string (``500ms``, ``1s``, ``1m30s``) into seconds.

    Raises ``ValueError`` with a message saying what is allowed.
    """
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(
                f"invalid duration {text!r}: expected a number with a unit (ns, us, ms, s, m, h), "
                "e.g. 500ms, 1s, 1m30s"
            )
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}: empty")
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of a duration, for messages and --help."""
    if seconds == 0:
        return "0s"
    if seconds < 1 and (seconds * 1000) == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    if minutes and secs == 0:
        return f"{int(minutes)}m"
    if minutes:
        return f"{int(minutes)}m{secs:g}s"
    return f"{secs:g}s"


class ProbeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How targets are probed and when their state flips.

    ``retry_count`` keeps the reference checker's meaning: a target is unhealthy after
    ``1 + retry_count`` failed attempts in a row.  The confirmations after the first failure run in
    parallel, ``confirm_spacing`` apart, so detection takes about one timeout plus the spread instead
    of ``(1 + retry_count) × timeout``.
    """

    interval: float = 1.0
    timeout: float = 0.5
    retry_count: int = 5
    recovery_threshold: int = 2
    confirm_spacing: float = 0.05
    node_evidence: int = 10
    """Unanswered attempts on a node's targets, with no answer from any of them since the first, that
    judge the whole node down at once (0: every target is judged alone)."""
    witness: Check | None = None
    """What to check on each node's own address as its witness (None: no witness)."""
    heartbeat: float = 0.1
    """How often the witness is checked; an attempt times out after two heartbeats."""

    def validate(self) -> ProbeSettings:
        """Return self, or raise ValueError naming the bad field and what is allowed."""
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0, got {format_duration(self.interval)}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {format_duration(self.timeout)}")
        if self.retry_count < 0:
            raise ValueError(f"retry count must be >= 0, got {self.retry_count}")
        if self.recovery_threshold < 1:
            raise ValueError(f"recovery threshold must be >= 1, got {self.recovery_threshold}")
        if self.witness is not None and not self.heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0, got {format_duration(self.heartbeat)}")
        if self.node_evidence < 0:
            raise ValueError(f"node evidence must be >= 0, got {self.node_evidence}")
        if self.confirm_spacing < 0:
            raise ValueError(f"confirm spacing must be >= 0, got {format_duration(self.confirm_spacing)}")
        return self
