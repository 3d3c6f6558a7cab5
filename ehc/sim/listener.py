"""The process that makes pod ports answer: accept and close at once, as fast as the kernel queues.

Runs apart from the API server (``python -m ehc.sim.listener``) so a probe storm does not steal the
server's CPU and a full accept queue never makes healthy pods time out.

Modes: ``--wildcard PORT,…`` binds one dual-stack ``[::]:PORT`` socket per port number (inside the
fleet's namespace, where it serves every pod address); without it, stdin JSON lines
``{"op": "open"|"close", "addrs": [[ip, port], …]}`` bind or close per-address sockets (the fallback
without root, where closing a listener is the only failure that can be injected). The process exits
when stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys

from ehc.worker.limits import raise_fd_limit


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # A probe that connects and resets without sending anything (as ehc's do) never reaches the
    # accept queue: the kernel drops the half-open connection on the RST, and this process spends no
    # CPU on it. Clients that send data or close normally are still accepted below.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main(argv: list[str]) -> int:
    raise_fd_limit()
    sel = selectors.DefaultSelector()
    socks: dict[tuple[str, int], socket.socket] = {}

    def open_(host: str, port: int) -> None:
        if (host, port) not in socks:
            try:
                s = _bind(host, port)
            except OSError as exc:
                print(f"listener: cannot bind {host}:{port}: {exc}", file=sys.stderr, flush=True)
                return
            socks[(host, port)] = s
            sel.register(s, selectors.EVENT_READ)

    def close(host: str, port: int) -> None:
        s = socks.pop((host, port), None)
        if s is not None:
            sel.unregister(s)
            s.close()

    if len(argv) >= 2 and argv[0] == "--wildcard":
        for p in argv[1].split(","):
            open_("::", int(p))
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    sel.register(stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.fileobj == stdin:
                try:
                    chunk = os.read(stdin, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    return 0
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    fn = open_ if cmd["op"] == "open" else close
                    for host, port in cmd["addrs"]:
                        fn(host, int(port))
                    print("ok", flush=True)
                continue
            lsock = key.fileobj
            assert isinstance(lsock, socket.socket)
            while True:  # drain the accept queue; _accept returns a bare fd, cheaper than a socket object
                try:
                    fd, _addr = lsock._accept()  # type: ignore[attr-defined]
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
