"""TCP connect probe: success once the three-way handshake completes.

One non-blocking socket per attempt, watched with ``add_writer``; deadlines wait in the prober's
``Deadlines`` FIFO (one loop timer for all).  Latency uses ``time.monotonic``, the clock loop timers
run on (uvloop's ``loop.time()`` is cached per iteration at millisecond resolution).

The socket, its RST close and the naming of a failed connect are ``ehc.probe.sockets``, shared with
the probes that talk.
"""

from __future__ import annotations

import _socket
import socket
import time

from ehc.probe import FAIL, OK, Done
from ehc.probe.sockets import ConnectingProber, connect_failed, start_connect
from ehc.wire.checks import Tcp


class TcpProber(ConnectingProber):
    """Makes TCP connect attempts with one timeout on one event loop; any number may be in flight."""

    __slots__ = ()

    def start(self, ip: str, family: int, check: Tcp, done: Done) -> None:
        """Start one connect to ``ip:check.port``; ``done`` is called exactly once, never synchronously."""
        start = time.monotonic()
        got = start_connect(ip, family, check.port, start)
        if isinstance(got, tuple):
            self._later(done, *got)
        else:
            self._deadlines.add(_Attempt(self, got, start, done))


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
        outcome, detail = connect_failed(code) if code else (OK, "")
        self.done(outcome, latency, detail)

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
        else:
            outcome, detail = connect_failed(code) if code else (FAIL, "timeout")
            self.done(outcome, latency, detail)
