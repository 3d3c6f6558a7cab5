"""ICMP echo probe: one socket per address family multiplexes every in-flight ping.

Why one socket and not one per ping (as ``aioping`` does): every raw ICMP socket on a host receives a
copy of every echo reply, so N sockets for N concurrent pings cost N² packet copies and wake-ups.  A
single socket per family, read with ``loop.add_reader`` and drained until EAGAIN, costs one copy per
reply; ``perf/bench_icmp.py`` measures the difference.

Socket modes, tried in this order for each family:

``dgram``
    The unprivileged "ping socket" (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`` and its IPv6 twin),
    allowed when the process's group is inside ``net.ipv4.ping_group_range`` (a per network namespace
    sysctl that covers IPv6 too).  The kernel assigns the identifier, computes the checksum and hands
    this socket only the replies carrying its identifier, without IP header.
``raw``
    ``SOCK_RAW`` (needs CAP_NET_RAW).  We choose a random identifier and compute the IPv4 checksum
    ourselves (the constant part is precomputed, so each ping costs one add and fold); the kernel fills
    in the ICMPv6 checksum.  IPv4 packets arrive with their IP header (skipped using IHL).  A kernel
    filter (``ICMP_FILTER`` / ``ICMP6_FILTER``) passes only echo replies, so the echo requests a raw
    socket sees on loopback and other ICMP traffic never reach Python; echo replies meant for other
    processes still do and are ignored by identifier and payload cookie.
``unavailable``
    Neither works; every ping to that family reports ``LOCAL_ERROR`` with the reason.

Matching: every request carries the family's identifier, a 16-bit sequence number and an 8-byte random
cookie (fixed per pinger) as payload.  A reply must have the echo-reply type, the identifier (raw mode;
the kernel checks it in dgram mode), the cookie, and a (source address, sequence) pair that is pending.
Pending pings are keyed by (address, sequence), so when the sequence wraps at 16 bits a collision is
only possible with an older ping to the same address still in flight; the next free sequence is used
then.

Latency is ``time.monotonic()`` from send to reply (the clock loop timers run on; uvloop's own
``loop.time()`` is cached per iteration at millisecond resolution).  Deadlines wait in the pinger's
``Deadlines`` FIFO, like TCP's: one loop timer for every ping in flight.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time

from ehc.probe import FAIL, LOCAL_ERROR, OK, Done, Later
from ehc.probe.deadlines import Deadlines
from ehc.wire.checks import Icmp

__all__ = ["IcmpPinger"]

log = logging.getLogger("ehc.probe.icmp")

DGRAM = "dgram"
RAW = "raw"
UNAVAILABLE = "unavailable"

RCVBUF_BYTES = 8 << 20
"""Requested receive buffer: a burst of thousands of replies must not be dropped (a drop is a false
failure).  Root gets it with SO_RCVBUFFORCE; otherwise it is capped by ``net.core.rmem_max``."""
RCVBUF_WARN_BYTES = 1 << 20
"""Below this (about a thousand queued replies) ``open()`` warns that bursts may be dropped."""
SNDBUF_BYTES = 4 << 20

_ICMP_ECHO_REPLY = 0
_ICMP_ECHO_REQUEST = 8
_ICMP6_ECHO_REQUEST = 128
_ICMP6_ECHO_REPLY = 129
_SOL_RAW = 255
_ICMP_FILTER = 1  # <linux/icmp.h>, level SOL_RAW: bit set = type blocked
_ICMP6_FILTER = 1  # <linux/icmpv6.h>, level IPPROTO_ICMPV6: bit set = type blocked
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_MAX_SEQ_PROBES = 64
"""How many following sequence numbers to try when (address, sequence) is already pending."""

_RECV_SIZE = 256  # an IPv4 header (≤ 60 bytes) + our 16-byte ICMP message; longer foreign ones truncate
_REQ = struct.Struct("!BBHHH8s")  # type, code, checksum, identifier, sequence, cookie
_REQ_TAIL = struct.Struct("!HHH")  # checksum, identifier, sequence (packed into the request buffer)
_REPLY = struct.Struct("!B3xHH8s")  # type, (code, checksum), identifier, sequence, cookie

_FAMILY_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}

# sendto() errors that are evidence against the target (or its network), not a local problem.
_FAIL_ERRNOS = {
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host down",
    errno.ENETDOWN: "network down",
    errno.ECONNREFUSED: "refused",
}


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class _Family:
    """State for one address family: its socket, mode and pending pings."""

    __slots__ = (
        "buf",
        "csum_base",
        "family",
        "ident",
        "mode",
        "name",
        "pending",
        "reason",
        "reply_type",
        "seq",
        "sock",
        "strip_ip",
    )

    def __init__(self, family: int) -> None:
        self.family = family
        self.name = _FAMILY_NAMES[family]
        self.sock: socket.socket | None = None
        self.mode = UNAVAILABLE
        self.reason = "not opened"
        self.ident = -1  # -1: not checked by us (dgram: the kernel owns and filters the identifier)
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.pending: dict[tuple[str, int], _Ping] = {}
        self.buf = bytearray(_REQ.size)
        self.csum_base = -1  # ≥ 0: raw IPv4, checksum = ~fold(csum_base + seq)
        self.reply_type = _ICMP_ECHO_REPLY if family == socket.AF_INET else _ICMP6_ECHO_REPLY
        self.strip_ip = False


class _Ping:
    """One echo request in flight: whom to tell, and when it times out."""

    __slots__ = ("active", "deadline", "done", "family", "key", "pinger", "sent")

    def __init__(self, pinger: IcmpPinger, family: _Family, key: tuple[str, int], done: Done) -> None:
        self.pinger = pinger
        self.family = family
        self.key = key
        self.done = done
        self.sent = time.monotonic()
        self.deadline = self.sent + pinger.timeout
        self.active = True

    def expire(self) -> None:
        self.pinger._expire(self)


def _ping_group_range() -> str:
    try:
        with open("/proc/sys/net/ipv4/ping_group_range", "rb") as f:
            return " ".join(f.read().decode().split())
    except OSError:
        return "?"


class IcmpPinger:
    """ICMP echo for one event loop: ``open()``, then ``start()`` any number of pings concurrently.

    ``done(outcome, latency, detail)`` is called exactly once per ``start()`` (unless ``close()`` came
    first): ``OK`` on a matching reply, ``FAIL`` with "timeout" when none came within ``timeout``
    seconds or with the reason when the kernel refused the send for routing reasons (unreachable),
    ``LOCAL_ERROR`` when the ping could not be sent (no socket for the family, send buffer full, local
    firewall, bad address).  It is never called from inside ``start()`` itself: immediate results are
    delivered with ``loop.call_soon``.

    Attributes after ``open()``:

    - ``mode``: ``"dgram"``, ``"raw"`` or ``"unavailable"``: the IPv4 mode, or the IPv6 one when IPv4 is
      unavailable; ``"unavailable"`` only when no family works.
    - ``modes``: the mode per family, ``{socket.AF_INET: ..., socket.AF_INET6: ...}``.
    - ``description``: the one-line summary ``open()`` returned (also logged at INFO).
    - ``foreign``: packets read and ignored (other processes' replies, other cookies); ``stray``: well-
      formed replies with no pending ping (late after a timeout, duplicates, wrong source address).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self._deadlines = Deadlines(loop)
        self._later = Later(loop)
        self._cookie = os.urandom(8)
        self._fams = {f: _Family(f) for f in (socket.AF_INET, socket.AF_INET6)}
        self._opened = False
        self.mode = UNAVAILABLE
        self.modes = {f: UNAVAILABLE for f in self._fams}
        self.description = "icmp: not opened"
        self.foreign = 0
        self.stray = 0

    # -- set-up ---------------------------------------------------------------------------------

    def open(self) -> str:
        """Open one socket per family (datagram if allowed, else raw) and start reading replies.

        Returns a one-line description of the mode in use or of why ICMP is unavailable."""
        if self._opened:
            return self.description
        self._opened = True
        dgram_denied = ""
        for st in self._fams.values():
            why = self._open_family(st)
            if why:
                dgram_denied = why
        for f, st in self._fams.items():
            self.modes[f] = st.mode
        v4, v6 = self._fams[socket.AF_INET], self._fams[socket.AF_INET6]
        self.mode = v4.mode if v4.mode != UNAVAILABLE else v6.mode
        self.description = self._describe(dgram_denied)
        log.info("%s", self.description)
        return self.description

    def _open_family(self, st: _Family) -> str:
        """Open ``st``'s socket; returns why datagram ICMP was refused ("" when it was not tried/refused
        for that reason)."""
        fam = st.family
        proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
        dgram_denied = ""
        errors = []
        sock = None
        try:
            sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
            st.mode = DGRAM
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                dgram_denied = f"datagram ICMP not allowed by net.ipv4.ping_group_range={_ping_group_range()}"
                errors.append(f"{dgram_denied} for gid {os.getgid()}")
            else:
                errors.append(f"datagram socket: {exc.strerror or exc}")
        if sock is None:
            try:
                sock = socket.socket(fam, socket.SOCK_RAW, proto)
                st.mode = RAW
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    errors.append("raw socket not permitted (needs CAP_NET_RAW)")
                else:
                    errors.append(f"raw socket: {exc.strerror or exc}")
        if sock is None:
            st.mode = UNAVAILABLE
            st.reason = "; ".join(errors)
            return dgram_denied
        try:
            self._configure(st, sock)
        except OSError as exc:
            sock.close()
            st.mode = UNAVAILABLE
            st.reason = f"socket set-up failed: {exc.strerror or exc}"
            return dgram_denied
        st.sock = sock
        st.reason = ""
        self._loop.add_reader(sock.fileno(), self._on_readable, st)
        return dgram_denied

    def _configure(self, st: _Family, sock: socket.socket) -> None:
        sock.setblocking(False)
        for force, plain, size in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF_BYTES),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)  # capped by net.core.[rw]mem_max
        v4 = st.family == socket.AF_INET
        req_type = _ICMP_ECHO_REQUEST if v4 else _ICMP6_ECHO_REQUEST
        if st.mode == RAW:
            st.ident = int.from_bytes(os.urandom(2), "big")
            if v4:
                st.strip_ip = True
                blocked = 0xFFFFFFFF & ~(1 << _ICMP_ECHO_REPLY)
                sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", blocked))
                # One's complement sum of everything but the sequence number (which is added per ping).
                hdr = _REQ.pack(req_type, 0, 0, st.ident, 0, self._cookie)
                st.csum_base = _fold(sum(struct.unpack("!8H", hdr)))
            else:
                words = [0xFFFFFFFF] * 8
                words[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
                sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *words))
        _REQ.pack_into(st.buf, 0, req_type, 0, 0, max(st.ident, 0), 0, self._cookie)

    def _describe(self, dgram_denied: str) -> str:
        by_mode: dict[str, list[_Family]] = {}
        for st in self._fams.values():
            by_mode.setdefault(st.mode, []).append(st)
        if list(by_mode) == [UNAVAILABLE]:
            reasons = sorted({st.reason for st in self._fams.values()})
            return "icmp: unavailable: " + " / ".join(reasons)
        parts = []
        labels = {DGRAM: "unprivileged datagram sockets", RAW: "raw sockets"}
        for mode in (DGRAM, RAW):
            if mode in by_mode:
                names = ", ".join(st.name for st in by_mode[mode])
                parts.append(f"{labels[mode]} ({names})")
        desc = "icmp: " + " and ".join(parts)
        if RAW in by_mode and dgram_denied:
            desc += f"; {dgram_denied}"
        for st in by_mode.get(UNAVAILABLE, ()):
            desc += f"; {st.name} unavailable: {st.reason}"
        small = []
        for st in self._fams.values():
            if st.sock is not None:
                got = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
                if got < RCVBUF_WARN_BYTES:
                    small.append(f"{st.name} {got // 1024} KiB")
        if small:
            desc += (
                f"; receive buffer capped by net.core.rmem_max ({', '.join(small)}):"
                " large reply bursts may be dropped"
            )
        return desc

    # -- probing --------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Pings sent and not yet answered or timed out."""
        return sum(len(st.pending) for st in self._fams.values())

    def start(self, ip: str, family: int, check: Icmp, done: Done) -> None:
        """Send one echo request to ``ip`` (of ``family``); ``done`` is called once with the outcome."""
        st = self._fams.get(family)
        if st is None or st.sock is None:
            if st is None:
                why = f"unsupported address family {family!r}"
            elif not self._opened:
                why = "icmp pinger not opened"
            else:
                why = f"icmp unavailable for {st.name}: {st.reason}"
            self._later(done, LOCAL_ERROR, 0.0, why)
            return
        try:
            addr = socket.inet_ntop(family, socket.inet_pton(family, ip))
        except (OSError, ValueError, TypeError):
            self._later(done, LOCAL_ERROR, 0.0, f"bad {st.name} address {ip!r}")
            return
        pending = st.pending
        seq = (st.seq + 1) & 0xFFFF
        key = (addr, seq)
        if key in pending:
            for _ in range(_MAX_SEQ_PROBES):
                seq = (seq + 1) & 0xFFFF
                key = (addr, seq)
                if key not in pending:
                    break
            else:
                self._later(done, LOCAL_ERROR, 0.0, f"too many pings in flight to {addr}")
                return
        st.seq = seq
        buf = st.buf
        base = st.csum_base
        if base >= 0:
            s = base + seq
            s = (s & 0xFFFF) + (s >> 16)
            _REQ_TAIL.pack_into(buf, 2, ~s & 0xFFFF, st.ident, seq)
        else:
            _REQ_TAIL.pack_into(buf, 2, 0, st.ident if st.ident >= 0 else 0, seq)
        try:
            st.sock.sendto(buf, (addr, 0))
        except BlockingIOError:
            self._later(done, LOCAL_ERROR, 0.0, "icmp send buffer full")
            return
        except OSError as exc:
            fail = _FAIL_ERRNOS.get(exc.errno)  # type: ignore[arg-type]
            if fail is not None:
                self._later(done, FAIL, 0.0, fail)
            else:
                self._later(done, LOCAL_ERROR, 0.0, f"icmp sendto: {exc.strerror or exc}")
            return
        ping = pending[key] = _Ping(self, st, key, done)
        self._deadlines.add(ping)

    def _expire(self, ping: _Ping) -> None:
        # A late loop may sweep the deadline before reading a reply that did arrive in time: read
        # what is queued first, so only a ping really unanswered counts as a timeout.
        self._on_readable(ping.family)
        if ping.active:
            ping.active = False
            del ping.family.pending[ping.key]
            ping.done(FAIL, time.monotonic() - ping.sent, "timeout")

    def _on_readable(self, st: _Family) -> None:
        sock = st.sock
        if sock is None:
            return
        recvfrom = sock.recvfrom
        unpack_from = _REPLY.unpack_from
        pending_pop = st.pending.pop
        reply_type = st.reply_type
        ident = st.ident
        cookie = self._cookie
        strip_ip = st.strip_ip
        now = time.monotonic
        while True:
            try:
                data, src = recvfrom(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:  # an asynchronous socket error; the reader fires again if more is queued
                log.debug("icmp %s recvfrom: %s", st.name, exc)
                return
            off = (data[0] & 0x0F) << 2 if strip_ip else 0
            if len(data) < off + 16:
                self.foreign += 1
                continue
            typ, pid, seq, ck = unpack_from(data, off)
            if typ != reply_type or ck != cookie or (ident >= 0 and pid != ident):
                self.foreign += 1
                continue
            p = pending_pop((src[0], seq), None)
            if p is None:
                self.stray += 1
                continue
            p.active = False
            try:
                p.done(OK, now() - p.sent, "")
            except Exception:
                log.exception("icmp done callback failed")

    def close(self) -> None:
        """Stop reading, close the sockets, abandon the pings in flight (their callbacks are not called)."""
        self._later.closed = True
        for ping in self._deadlines.clear():
            ping.active = False
        for st in self._fams.values():
            if st.sock is not None:
                self._loop.remove_reader(st.sock.fileno())
                st.sock.close()
                st.sock = None
                st.reason = "pinger closed"
            st.pending = {}
