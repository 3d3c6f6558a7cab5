"""Probes: one non-blocking attempt against one endpoint, reported through a callback.

Every probe kind is a module with one ``Prober`` and an entry in ``ehc.probe.registry``; the engine
knows no kind by name.  Probes are callback-based (no task or future per attempt) so thousands can be
in flight per worker at the cost of a socket and a deadline-queue entry each.
"""

from __future__ import annotations

import asyncio
import errno
import resource
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


SILENCE = frozenset({"timeout", "timeout connecting", "hostunreach", "hostdown", "netunreach", "timedout"})
"""Failure details that mean the endpoint's host said nothing at all (no reset, no status, no reply):
the evidence a powered-off node leaves.  Any other failure is an answer from the host: refused, an
HTTP status, or a timeout after the connection was made ("timeout waiting for the response")."""


def silent(detail: str) -> bool:
    return detail in SILENCE


# Errors that describe this process or host, not the endpoint: they never count against a target.
LOCAL_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,  # no free ephemeral port
        errno.EAGAIN,  # for TCP connect: no free local port
        errno.EPERM,  # a local firewall rule rejected the packet before it left
        errno.EACCES,
    }
)


def describe_errno(code: int) -> str:
    if code in (errno.EMFILE, errno.ENFILE):  # say what to fix, not just the errno
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        which = "this process" if code == errno.EMFILE else "the whole host"
        return f"too many open files (limit {limit}; {which} ran out of file descriptors)"
    return errno.errorcode.get(code, str(code)).lower().removeprefix("e") if code else "ok"


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
