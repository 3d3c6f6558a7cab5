"""TCP connect probe: success once the three-way handshake completes.

One non-blocking socket per attempt, watched with ``add_writer``; deadlines wait in the prober's
``Deadlines`` FIFO (one loop timer for all).  Latency uses ``time.monotonic``, the clock loop timers
run on (uvloop's ``loop.time()`` is cached per iteration at millisecond resolution).

Sockets are the C-level ``_socket.socket``: the ``socket.socket`` wrapper's Python ``__init__`` and
``close`` cost more than the connect itself at these rates, and nothing here needs its extras.

The socket is closed with SO_LINGER 0, so it sends RST and leaves no TIME_WAIT behind: a checker
making 10k connects a second would otherwise exhaust its ephemeral ports.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import socket
import struct
import time

from ehc.probe import FAIL, LOCAL_ERRNOS, LOCAL_ERROR, OK, Done, Later, describe_errno
from ehc.probe.deadlines import Deadlines
from ehc.wire.checks import Tcp

_LINGER_RST = struct.pack("ii", 1, 0)
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class TcpProber:
    """Makes TCP connect attempts with one timeout on one event loop; any number may be in flight."""

    __slots__ = ("_deadlines", "_later", "_loop", "in_flight", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self.in_flight = 0
        self._deadlines = Deadlines(loop)
        self._later = Later(loop)

    def open(self) -> str:
        return ""

    def start(self, ip: str, family: int, check: Tcp, done: Done) -> None:
        """Start one connect to ``ip:check.port``; ``done`` is called exactly once, never synchronously."""
        start = time.monotonic()
        try:
            sock = _socket.socket(family, _SOCK_TYPE)
        except OSError as exc:
            self._later(done, LOCAL_ERROR, 0.0, f"socket: {describe_errno(exc.errno or 0)}")
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        try:
            code = sock.connect_ex((ip, check.port))
        except (OSError, OverflowError, TypeError, ValueError) as exc:  # an address the kernel cannot take
            sock.close()
            self._later(done, LOCAL_ERROR, 0.0, f"connect {ip!r} port {check.port!r}: {exc}")
            return
        if code == errno.EINPROGRESS:
            self._deadlines.add(_Attempt(self, sock, start, done))
            return
        sock.close()
        if code == 0:  # loopback can complete at once
            self._later(done, OK, time.monotonic() - start, "")
        elif code in LOCAL_ERRNOS:
            self._later(done, LOCAL_ERROR, 0.0, f"connect: {describe_errno(code)}")
        else:
            self._later(done, FAIL, time.monotonic() - start, describe_errno(code))

    def close(self) -> None:
        """Abandon every attempt in flight (their callbacks are not called)."""
        self._later.closed = True
        for attempt in self._deadlines.clear():
            attempt.finish()  # type: ignore[attr-defined]


class _Attempt:
    """One connect in flight: its socket, its deadline and whom to tell."""

    __slots__ = ("active", "deadline", "done", "fd", "prober", "sock", "start")

    def __init__(self, prober: TcpProber, sock: _socket.socket, start: float, done: Done) -> None:
        self.prober = prober
        self.active = True
        self.sock: _socket.socket | None = sock
        self.start = start
        self.deadline = start + prober.timeout
        self.done = done
        self.fd = sock.fileno()
        prober._loop.add_writer(self.fd, self._on_writable)
        prober.in_flight += 1

    def finish(self) -> float:
        sock = self.sock
        assert sock is not None
        self.sock = None
        self.active = False
        self.prober._loop.remove_writer(self.fd)
        self.prober.in_flight -= 1
        sock.close()
        return time.monotonic() - self.start

    def _on_writable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        latency = self.finish()
        if code == 0:
            self.done(OK, latency, "")
        elif code in LOCAL_ERRNOS:
            self.done(LOCAL_ERROR, latency, f"connect: {describe_errno(code)}")
        else:
            self.done(FAIL, latency, describe_errno(code))

    def expire(self) -> None:
        """The deadline passed.  If the loop was late, the handshake may have completed (or failed)
        without our noticing yet: ask the socket before calling it a timeout, so an overloaded
        checker never blames the endpoint for its own lateness."""
        sock = self.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        connected = False
        if code == 0:
            try:
                sock.getpeername()
                connected = True
            except OSError:
                pass
        latency = self.finish()
        if connected:
            self.done(OK, latency, "")
        elif code in LOCAL_ERRNOS:
            self.done(LOCAL_ERROR, latency, f"connect: {describe_errno(code)}")
        elif code:
            self.done(FAIL, latency, describe_errno(code))
        else:
            self.done(FAIL, latency, "timeout")
