"""Probes: one non-blocking attempt against one endpoint, reported through a callback.

Every probe kind is a module with one ``Prober`` and an entry in ``ehc.probe.registry``; the engine
knows no kind by name.  Probes are callback-based (no task or future per attempt) so thousands can be
in flight per worker at the cost of a socket and a deadline-queue entry each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ehc.wire.checks import Check

OK = 0
"""The endpoint answered."""
FAIL = 1
"""The endpoint did not answer (refused, unreachable, timed out): evidence against it."""
LOCAL_ERROR = 2
"""The probe could not be made (no file descriptors, no ephemeral port, no ICMP socket...).

This says nothing about the endpoint, so it never counts towards flipping a target."""

Done = Callable[[int, float, str], None]
"""``done(outcome, latency_seconds, detail)``; detail is "" on success, else a short reason."""


class Prober(Protocol):
    """Makes attempts of one kind on one event loop, all with the same timeout.

    - ``start()`` begins one attempt; ``done`` is called exactly once, never from inside ``start()``
      itself, within about ``timeout`` seconds.  Whatever goes wrong (a bad address, a full socket
      buffer, an exception) is reported through ``done``, never raised.
    - ``close()`` abandons every attempt in flight: no ``done`` is called after it returns.
    """

    in_flight: int

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None: ...

    def open(self) -> str:
        """Acquire what the kind needs (sockets); return a line for the start-up log, or ""."""
        ...

    def start(self, ip: str, family: int, check: Check, done: Done) -> None: ...

    def close(self) -> None: ...


class Later:
    """Delivers a result decided inside ``start()`` on the next loop iteration, unless the prober was
    closed in between: what keeps ``done`` from ever being called from ``start()`` or after ``close()``."""

    __slots__ = ("_loop", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.closed = False

    def __call__(self, done: Done, outcome: int, latency: float, detail: str) -> None:
        self._loop.call_soon(self._deliver, done, outcome, latency, detail)

    def _deliver(self, done: Done, outcome: int, latency: float, detail: str) -> None:
        if not self.closed:
            done(outcome, latency, detail)
