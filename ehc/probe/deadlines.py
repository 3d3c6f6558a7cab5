"""One timer for every attempt of a prober.

All attempts of a prober share one timeout, so their deadlines expire in the order the attempts
started: they wait in a FIFO, and a single loop timer is set for the oldest one still active, instead
of a timer created and cancelled per attempt (``perf/bench_probe.py`` measures the difference).
Attempts that finish early stay queued, marked inactive, until they reach the head.
Deadlines are ``time.monotonic()`` values, the clock loop timers run on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol


class Expiring(Protocol):
    deadline: float
    active: bool

    def expire(self) -> None:
        """The deadline passed while the attempt was still active."""


class Deadlines:
    __slots__ = ("_loop", "_queue", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[Expiring] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, attempt: Expiring) -> None:
        """Queue an attempt whose deadline is no earlier than any queued one's."""
        queue = self._queue
        # Attempts mostly finish in the order they started: dropping finished ones from the head here
        # keeps the queue about as long as what is in flight, and spreads that work over the adds
        # instead of one sweep walking a whole interval's worth of finished attempts at once.
        while queue and not queue[0].active:
            queue.popleft()
        queue.append(attempt)
        if self._timer is None:
            self._timer = self._loop.call_at(attempt.deadline, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        queue = self._queue
        while queue:
            attempt = queue[0]
            if attempt.active and attempt.deadline > now:
                self._timer = self._loop.call_at(attempt.deadline, self._sweep)
                return
            queue.popleft()
            if attempt.active:
                attempt.expire()
        self._timer = None

    def clear(self) -> list[Expiring]:
        """Stop the timer; return the attempts still active (the caller abandons them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        active = [a for a in self._queue if a.active]
        self._queue.clear()
        return active
