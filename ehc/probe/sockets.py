"""What every prober that connects shares: starting a non-blocking connect, naming a failed one,
and the base that holds one deadline FIFO and delivers results decided inside ``start()`` later.

Sockets are the C-level ``_socket.socket``: the ``socket.socket`` wrapper's Python ``__init__`` and
``close`` cost more than the connect itself at these rates, and nothing here needs its extras.  They
are closed with SO_LINGER 0, so they send RST and leave no TIME_WAIT behind: a checker making 10k
connects a second would otherwise exhaust its ephemeral ports.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
import struct
import time

from ehc.probe import FAIL, LOCAL_ERRNOS, LOCAL_ERROR, Later, describe_errno
from ehc.probe.deadlines import Deadlines

_LINGER_RST = struct.pack("ii", 1, 0)
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def connect_failed(code: int) -> tuple[int, str]:
    """The outcome and detail of a connect that failed with errno ``code``: a local error (ours, not
    the endpoint's) or a failure."""
    if code in LOCAL_ERRNOS:
        return LOCAL_ERROR, f"connect: {describe_errno(code)}"
    return FAIL, describe_errno(code)


def start_connect(ip: str, family: int, port: int, start: float) -> _socket.socket | tuple[int, float, str]:
    """A socket connected or connecting to ``ip:port``; or, when that failed at once, what to report:
    ``(outcome, latency since start, detail)``."""
    try:
        sock = _socket.socket(family, _SOCK_TYPE)
    except OSError as exc:
        return LOCAL_ERROR, 0.0, f"socket: {describe_errno(exc.errno or 0)}"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    try:
        code = sock.connect_ex((ip, port))
    except (OSError, OverflowError, TypeError, ValueError) as exc:  # an address the kernel cannot take
        sock.close()
        return LOCAL_ERROR, 0.0, f"connect {ip!r} port {port!r}: {exc}"
    if code in (0, errno.EINPROGRESS):  # 0: loopback can complete at once; it is writable then
        return sock
    sock.close()
    outcome, detail = connect_failed(code)
    return outcome, 0.0 if outcome == LOCAL_ERROR else time.monotonic() - start, detail


class ConnectingProber:
    """The base of the probers that connect: one timeout, one deadline FIFO, ``in_flight``."""

    __slots__ = ("_deadlines", "_later", "_loop", "in_flight", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self.in_flight = 0
        self._deadlines = Deadlines(loop)
        self._later = Later(loop)

    def open(self) -> str:
        return ""

    def close(self) -> None:
        """Abandon every attempt in flight (their callbacks are not called)."""
        self._later.closed = True
        for attempt in self._deadlines.clear():
            attempt.finish()  # type: ignore[attr-defined]
