"""TCP connect probe: success once the three-way handshake completes.

One non-blocking socket per attempt, watched with ``add_writer``.  Every attempt of a prober has the
same timeout, so deadlines expire in the order attempts started: they wait in a FIFO swept by a
single loop timer set for the oldest unfinished attempt, instead of a timer created and cancelled per
attempt (``perf/bench_probe.py`` measures the difference that makes).  Latency uses
``time.monotonic``, the clock loop timers run on (uvloop's ``loop.time()`` is cached per iteration
at millisecond resolution).

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
from collections import deque

from ehc.probe import FAIL, LOCAL_ERROR, OK, Done

_LINGER_RST = struct.pack("ii", 1, 0)
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

# Errors that describe this process or host, not the endpoint: they never count against a target.
_LOCAL_ERRNOS = frozenset(
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


def _describe(code: int) -> str:
    return errno.errorcode.get(code, str(code)).lower().removeprefix("e") if code else "ok"


class TcpProber:
    """Makes TCP connect attempts with one timeout on one event loop; any number may be in flight."""

    __slots__ = ("_deadlines", "_loop", "_sweeper", "in_flight", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self.in_flight = 0
        self._deadlines: deque[_Attempt] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    def probe(self, ip: str, port: int, family: int, done: Done) -> None:
        """Start one connect to ``ip:port``; ``done`` is called exactly once, never synchronously."""
        loop = self._loop
        start = time.monotonic()
        try:
            sock = _socket.socket(family, _SOCK_TYPE)
        except OSError as exc:
            loop.call_soon(done, LOCAL_ERROR, 0.0, f"socket: {_describe(exc.errno or 0)}")
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        code = sock.connect_ex((ip, port))
        if code == errno.EINPROGRESS:
            attempt = _Attempt(self, sock, start, done)
            self._deadlines.append(attempt)
            if self._sweeper is None:
                self._sweeper = loop.call_at(attempt.deadline, self._sweep)
            return
        sock.close()
        if code == 0:  # loopback can complete at once
            loop.call_soon(done, OK, time.monotonic() - start, "")
        elif code in _LOCAL_ERRNOS:
            loop.call_soon(done, LOCAL_ERROR, 0.0, f"connect: {_describe(code)}")
        else:
            loop.call_soon(done, FAIL, time.monotonic() - start, _describe(code))

    def _sweep(self) -> None:
        """Expire attempts past their deadline; re-arm for the oldest one still in flight."""
        now = time.monotonic()
        queue = self._deadlines
        while queue:
            attempt = queue[0]
            if attempt.sock is not None and attempt.deadline > now:
                self._sweeper = self._loop.call_at(attempt.deadline, self._sweep)
                return
            queue.popleft()
            if attempt.sock is not None:
                attempt.expire()
        self._sweeper = None

    def close(self) -> None:
        """Abandon every attempt in flight (their callbacks are not called)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._deadlines:
            attempt = self._deadlines.popleft()
            if attempt.sock is not None:
                attempt.finish()


class _Attempt:
    """One connect in flight: its socket, its deadline and whom to tell."""

    __slots__ = ("deadline", "done", "fd", "prober", "sock", "start")

    def __init__(self, prober: TcpProber, sock: _socket.socket, start: float, done: Done) -> None:
        self.prober = prober
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
        elif code in _LOCAL_ERRNOS:
            self.done(LOCAL_ERROR, latency, f"connect: {_describe(code)}")
        else:
            self.done(FAIL, latency, _describe(code))

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
        elif code in _LOCAL_ERRNOS:
            self.done(LOCAL_ERROR, latency, f"connect: {_describe(code)}")
        elif code:
            self.done(FAIL, latency, _describe(code))
        else:
            self.done(FAIL, latency, "timeout")
