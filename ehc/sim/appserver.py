"""The process that makes pods' HTTP and gRPC probe ports answer as real applications do, with servers
nobody here wrote: aiohttp for the HTTP ports and grpcio with the official
``grpc_health.v1.health.HealthServicer`` for the gRPC ports.

Runs apart from the API server (``python -m ehc.sim.appserver --http 8080,9100 --grpc 9090``), like
the listener process, so probe traffic never steals the server's CPU. Each pod's application health is
its own: HTTP decides by the address the connection came in on (503 while the pod is unhealthy), gRPC
by service name (the fleet gives each pod's grpc probe ``service: <pod name>``; NOT_SERVING while
unhealthy). Ports keep accepting TCP either way, so a TCP probe still succeeds.

Every listening socket has TCP_DEFER_ACCEPT, grpc's too (set on its descriptors after it binds, as
grpcio has no option for it): a probe that connects and resets without sending anything never reaches
either server, so TCP probe storms cost them no CPU.

Modes: ``--wildcard`` binds one dual-stack ``[::]:PORT`` per port (inside the fleet's namespace, where
it serves every pod address); without it, stdin ``{"op": "open"|"close", "addrs": [[ip, port], …]}``
binds or closes per-address listeners (the fallback without root; a gRPC port change restarts the gRPC
server on the remaining addresses, as grpcio cannot drop one port). ``{"op": "health", "healthy": bool,
"pods": [[ip, name], …]}`` sets pods' application health. Each line is answered ``ok``. The process
exits when stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import socket
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import uvloop
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ehc.worker.limits import raise_fd_limit

PATHS = frozenset({"/", "/healthz", "/readyz", "/livez", "/metrics"})
"""Paths a pod's HTTP server knows; others are 404, as in a real application."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def canonical(host: str) -> str:
    """One spelling per address: a v4-mapped IPv6 address (dual-stack sockets) as plain IPv4."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``::`` = dual-stack wildcard) with TCP_DEFER_ACCEPT; the
    server that takes it calls listen()."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def defer_accept_on_listeners(ports: set[int]) -> int:
    """Set TCP_DEFER_ACCEPT on every listening TCP socket of this process on ``ports`` (grpcio's, which
    it binds itself); returns how many it found."""
    found = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and sock.getsockname()[1] in ports
            ):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
                found += 1
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor stays grpc's
    return found


def warn(msg: str) -> None:
    print(f"appserver: {msg}", file=sys.stderr, flush=True)


class Apps:
    """The HTTP and gRPC servers of every pod, and each pod's application health."""

    def __init__(self, http_ports: list[int], grpc_ports: list[int]) -> None:
        self.http_ports = set(http_ports)
        self.grpc_ports = set(grpc_ports)
        self.sick: set[str] = set()  # addresses whose HTTP endpoints answer 503
        self.health = health.HealthServicer()
        self.runner = web.ServerRunner(web.Server(self.handle, access_log=None))
        self.sites: dict[tuple[str, int], web.SockSite] = {}
        self.grpc_addrs: set[tuple[str, int]] = set()
        self.grpc: grpc.Server | None = None
        self.pool: ThreadPoolExecutor | None = None  # the gRPC server's; grpc does not shut it down

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.path not in PATHS:
            return web.Response(status=404, text="not found\n")
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if sockname is None or canonical(sockname[0]) in self.sick:
            return web.Response(status=503, text="unhealthy\n")
        return web.Response(text="ok\n")

    async def start(self, wildcard: bool) -> None:
        await self.runner.setup()
        if wildcard:
            await self.open([("::", p) for p in sorted(self.http_ports | self.grpc_ports)])

    async def open(self, addrs: list[tuple[str, int]]) -> None:
        grpc_changed = False
        for host, port in addrs:
            if port in self.grpc_ports:
                grpc_changed |= (host, port) not in self.grpc_addrs
                self.grpc_addrs.add((host, port))
            elif port in self.http_ports and (host, port) not in self.sites:
                try:
                    site = web.SockSite(self.runner, bind(host, port), backlog=4096)
                    await site.start()
                except OSError as exc:
                    warn(f"cannot serve HTTP on {host}:{port}: {exc}")
                    continue
                self.sites[(host, port)] = site
        if grpc_changed:
            self.restart_grpc()

    async def close(self, addrs: list[tuple[str, int]]) -> None:
        grpc_changed = False
        for host, port in addrs:
            site = self.sites.pop((host, port), None)
            if site is not None:
                await site.stop()
            if (host, port) in self.grpc_addrs:
                self.grpc_addrs.discard((host, port))
                grpc_changed = True
        if grpc_changed:
            self.restart_grpc()

    def restart_grpc(self) -> None:
        """(Re)start the gRPC server on the current addresses; grpcio cannot close a single port."""
        self.stop_grpc()
        if not self.grpc_addrs:
            return
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc")
        # No SO_REUSEPORT: a second process on the same port would silently take half the connections.
        server = grpc.server(self.pool, options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for host, port in sorted(self.grpc_addrs):
            try:
                server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            except RuntimeError as exc:
                warn(f"cannot serve gRPC on {host}:{port}: {exc}")
        server.start()
        if not defer_accept_on_listeners(self.grpc_ports):
            warn("found no gRPC listening socket to set TCP_DEFER_ACCEPT on")
        self.grpc = server

    def set_health(self, healthy: bool, pods: list[tuple[str, str]]) -> None:
        for ip, name in pods:
            if healthy:
                self.sick.discard(canonical(ip))
            else:
                self.sick.add(canonical(ip))
            self.health.set(name, SERVING if healthy else NOT_SERVING)

    async def command(self, cmd: dict[str, Any]) -> None:
        op = cmd["op"]
        if op == "health":
            self.set_health(bool(cmd["healthy"]), [(ip, name) for ip, name in cmd["pods"]])
        elif op in ("open", "close"):
            addrs = [(canonical(h), int(p)) for h, p in cmd["addrs"]]
            await (self.open(addrs) if op == "open" else self.close(addrs))
        else:
            warn(f"unknown op {op!r}")

    def stop_grpc(self) -> None:
        if self.grpc is not None:
            self.grpc.stop(None).wait()
            self.grpc = None
        if self.pool is not None:
            self.pool.shutdown(wait=False)
            self.pool = None

    async def stop(self) -> None:
        self.stop_grpc()
        await self.runner.cleanup()


def stdin_lines() -> asyncio.Queue[bytes | None]:
    """Lines from stdin as they arrive; None at end of input (the parent is gone)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    pending = b""

    def readable() -> None:
        nonlocal pending
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            loop.remove_reader(fd)
            queue.put_nowait(None)
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                queue.put_nowait(line)

    loop.add_reader(fd, readable)
    return queue


async def serve(args: argparse.Namespace) -> int:
    apps = Apps(args.http, args.grpc)
    await apps.start(args.wildcard)
    print("ready", flush=True)
    lines = stdin_lines()
    try:
        while (line := await lines.get()) is not None:
            try:
                await apps.command(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                warn(f"bad command {line[:200]!r}: {exc}")
            print("ok", flush=True)
    finally:
        await apps.stop()
    return 0


def ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ehc.sim.appserver", description=__doc__)
    parser.add_argument("--http", type=ports, default=[], help="HTTP ports, comma-separated")
    parser.add_argument("--grpc", type=ports, default=[], help="gRPC ports, comma-separated")
    parser.add_argument("--wildcard", action="store_true", help="serve every address ([::]:PORT)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    # Ctrl-C on `ehc sim` reaches the whole process group: leave with the parent (stdin closing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
