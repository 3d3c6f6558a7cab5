"""Fault injection for the simulated API server: error answers, throttling, added latency.

Rules match on verb and a path regex (see ``PODS_STATUS``), so a test can fail only the status
patches and leave the watch alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PODS_STATUS = r"/pods/[^/]+/status$"
PODS = r"/pods(/[^/]+)?$"
LEASES = r"/leases(/[^/]+)?$"


@dataclass
class _Rule:
    verb: str | None
    path: re.Pattern[str] | None
    remaining: int | None  # None: until cleared

    def matches(self, verb: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.verb is not None and self.verb != verb:
            return False
        return self.path is None or self.path.search(path) is not None

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@dataclass
class ErrorRule(_Rule):
    status: int = 500
    retry_after: float | None = None


@dataclass
class DelayRule(_Rule):
    seconds: float = 0.0


class Faults:
    """The active fault rules; the API server consults ``error_for`` and ``delay_for`` per request."""

    def __init__(self) -> None:
        self.errors: list[ErrorRule] = []
        self.delays: list[DelayRule] = []
        self.force_410 = 0  # the next N watch requests get 410 Expired
        self.injected = 0  # requests answered with an injected error so far

    def fail(
        self,
        count: int = 1,
        status: int = 500,
        *,
        verb: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> ErrorRule:
        """Answer the next ``count`` matching requests with ``status`` (Retry-After if given)."""
        rule = ErrorRule(verb, re.compile(path) if path else None, count, status, retry_after)
        self.errors.append(rule)
        return rule

    def throttle(
        self, count: int = 1, retry_after: float = 1.0, *, verb: str | None = None, path: str | None = None
    ) -> ErrorRule:
        """Answer the next ``count`` matching requests 429 Too Many Requests with Retry-After."""
        return self.fail(count, 429, verb=verb, path=path, retry_after=retry_after)

    def delay(
        self, seconds: float, *, count: int | None = None, verb: str | None = None, path: str | None = None
    ) -> DelayRule:
        """Add ``seconds`` of latency to matching requests (all of them until cleared, or ``count``)."""
        rule = DelayRule(verb, re.compile(path) if path else None, count, seconds)
        self.delays.append(rule)
        return rule

    def expire_next_watch(self, count: int = 1) -> None:
        """Answer the next ``count`` watch requests with a 410 Expired ERROR event."""
        self.force_410 += count

    def clear(self) -> None:
        self.errors.clear()
        self.delays.clear()
        self.force_410 = 0

    def error_for(self, verb: str, path: str) -> ErrorRule | None:
        for rule in self.errors:
            if rule.matches(verb, path):
                rule.consume()
                self.injected += 1
                return rule
        return None

    def delay_for(self, verb: str, path: str) -> float:
        total = 0.0
        for rule in self.delays:
            if rule.matches(verb, path):
                rule.consume()
                total += rule.seconds
        return total
