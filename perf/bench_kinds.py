"""HTTP and gRPC probes: ehc's own clients against the libraries, and one worker's capacity per kind.

    .venv/bin/python perf/bench_kinds.py                 # full run, about 7 minutes
    .venv/bin/python perf/bench_kinds.py --quick         # a sanity run, about 2 minutes
    .venv/bin/python perf/bench_kinds.py --json perf/results/bench_kinds.json

Needs ``nginx`` (Debian: ``apt-get install nginx-light``; run as a child process with a generated
config, nothing installed as a service is used), and in the venv ``grpcio``,
``grpcio-health-checking``, ``h2``, ``h11``, ``aiohttp`` (and ehc's own ``httptools``, ``hpack``);
``py-spy`` (``.venv/bin/pip install py-spy``) for the profiles, which are skipped without it.  What
is missing is named at start-up, before anything runs.  Without nginx, ``--http-server aiohttp``
serves HTTP from several aiohttp processes (a slower server: its CPU column shows whether it was
the limit) and gRPC only from grpcio.

What it measures, in one invocation, all on loopback (targets are distinct 127.x.y.z addresses; the
servers listen on 0.0.0.0 and run in their own processes):

0. **The machine now**: ``bench_probe``'s bare uvloop connect loop, to relate the figures to other runs.
1. **Parsing one reply** (timeit, no sockets): ehc's HTTP exchange (httptools) against one on
   ``h11``; ehc's gRPC exchange (its own HTTP/2 frames + hpack) against one on an ``h2`` connection.
2. **Library choice**: each client in its own process (so its CPU is its own), 64 probes in
   flight, every probe a new connection, against the same server, rounds interleaved.
   HTTP: ehc's ``HttpProber``; ehc's socket machinery with ``h11`` as the parser; ``aiohttp`` as
   its authors intend (one ``ClientSession``, ``TCPConnector(force_close=True)``, ``session.get``
   with a timeout).  gRPC: ehc's ``GrpcProber``; ehc's socket machinery with one ``h2``
   ``H2Connection`` per probe; ``grpc.aio`` with a new channel per probe (closed after);
   ``grpc.aio`` with one persistent channel, for reference only (it reuses its connection).
3. **Capacity per kind** on one worker (real ``WorkerPool`` through ``bench_probe.run_pool``, its
   rule: ≥ 99 % of the scheduled probes done, schedule-lag p99 ≤ 100 ms, no failures) at a 1 s
   interval: TCP (``bench_probe``'s kernel listener), HTTP (nginx ``return 200``), gRPC against
   nginx on cleartext HTTP/2 answering SERVING (a fast server, so the figure is the worker's) and
   against grpcio servers with the official ``HealthServicer``.  Each run also shows the servers'
   CPU and where the machine's busy time went.  Then the kinds at one common load, interleaved, for
   the CPU ratios (with TCP against nginx too, which accepts every connection).
4. **Profiles**: py-spy on the worker at its HTTP and its gRPC capacity.

The servers and the worker share the machine's cores and compete for them: the busy-cores line
under each run says whether the worker, the server or the machine was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import hashlib
import importlib.util
import json
import linecache
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import asdict
from typing import Any

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_probe
from bench_probe import PoolRun, address, run_pool

from ehc.coordinator.pool import WorkerPool
from ehc.probe import FAIL, OK
from ehc.probe.grpc import GrpcProber
from ehc.probe.http import HttpProber
from ehc.probe.stream import StreamProber
from ehc.wire.checks import Grpc, Http, Tcp
from ehc.wire.messages import Health, Target
from ehc.wire.settings import ProbeSettings
from ehc.worker.limits import raise_fd_limit

# bench_probe.run_pool makes its WorkerPool with the default log level: its workers' start-up lines
# would bury the figures, so the pools it makes here log warnings and errors only.
bench_probe.WorkerPool = functools.partial(WorkerPool, log_level="warning")  # type: ignore[misc]

GOAL_HTTP_TARGETS = 15_000
GOAL_HTTP_CPU_VS_TCP = 3.0
GOAL_GRPC_TARGETS = 5_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODULES = {  # module -> the PyPI package that has it
    "grpc": "grpcio",
    "grpc_health": "grpcio-health-checking",
    "h2": "h2",
    "h11": "h11",
    "aiohttp": "aiohttp",
    "httptools": "httptools",
    "hpack": "hpack",
}

# ---- what the benchmark needs --------------------------------------------------------------------


def missing_requirements(http_server: str) -> list[str]:
    problems = [
        f"the Python module {m!r} (.venv/bin/pip install {package})"
        for m, package in MODULES.items()
        if importlib.util.find_spec(m) is None
    ]
    if http_server == "nginx" and nginx_path() is None:
        problems.append(
            "nginx (apt-get install nginx-light; or run with --http-server aiohttp, a slower server)"
        )
    return problems


def ehc_source() -> dict[str, Any]:
    """Which ehc is measured: the commit, whether ehc/ differs from it, and a hash of ehc/'s sources.

    Worker processes import ehc afresh each time they start, so an edit during a run would mix
    versions; the hash, taken again at the end, tells."""
    import ehc

    root = os.path.dirname(os.path.abspath(ehc.__file__))
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else "?"

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "ehc_modified": bool(git("status", "--porcelain", "--", ".")),
        "sources_sha256": digest.hexdigest()[:16],
    }


def py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


# ---- servers, each in its own processes ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log crit;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 0.0.0.0:{port} reuseport backlog=65535;
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{  # gRPC over cleartext HTTP/2: every call answered SERVING, the status in the trailers
        listen 0.0.0.0:{h2c_port} http2 reuseport backlog=65535;
        keepalive_requests 1000000;
        location / {{
            default_type application/grpc;
            add_trailer grpc-status 0;
            return 200 "{grpc_reply}";
        }}
    }}
}}
"""
GRPC_SERVING = "\x00\x00\x00\x00\x02\x08\x01"
"""A gRPC message (uncompressed, 2 bytes): HealthCheckResponse{status: SERVING}, as nginx's raw body."""


class Servers:
    """The servers, each kind in its own processes, and their CPU time.

    ``http``: nginx (``return 200``) or, without nginx, aiohttp processes sharing the port.
    ``grpc``: nginx on cleartext HTTP/2 answering every call SERVING: a fast gRPC health responder,
    so the figures are about the client (absent without nginx).  ``grpcio``: grpcio server processes
    with the official ``grpc_health.v1.health.HealthServicer``, sharing the port (SO_REUSEPORT).
    """

    def __init__(self, http_server: str, nginx_workers: int, grpcio_servers: int) -> None:
        self.http_server, self.nginx_workers, self.grpcio_servers = http_server, nginx_workers, grpcio_servers
        self.ports: dict[str, int | None] = {
            "http": free_port(),
            "grpc": free_port() if http_server == "nginx" else None,
            "grpcio": free_port(),
        }
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {"nginx": [], "aiohttp": [], "grpcio": []}
        self._dir = tempfile.mkdtemp(prefix="ehc-bench-kinds-")

    def start(self) -> None:
        if self.http_server == "nginx":
            conf = os.path.join(self._dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(
                    NGINX_CONF.format(
                        workers=self.nginx_workers,
                        dir=self._dir,
                        port=self.ports["http"],
                        h2c_port=self.ports["grpc"],
                        grpc_reply=GRPC_SERVING,
                    )
                )
            args = [
                nginx_path() or "nginx",
                "-p",
                self._dir,
                "-c",
                conf,
                "-e",
                os.path.join(self._dir, "error.log"),
            ]
            self.procs["nginx"].append(subprocess.Popen(args))
        else:
            for _ in range(self.nginx_workers):
                self.procs["aiohttp"].append(self._child("--http-server-child", self.ports["http"]))
        for _ in range(self.grpcio_servers):
            self.procs["grpcio"].append(self._child("--grpc-server-child", self.ports["grpcio"]))
        for port in self.ports.values():
            if port is not None:
                wait_listening(port)
        for p in self._all():
            if p.poll() is not None:
                raise SystemExit(f"a server exited at start-up (code {p.returncode}): {p.args}")

    def _child(self, mode: str, port: int | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, __file__, mode, str(port)], stdin=subprocess.DEVNULL)

    def _all(self) -> list[subprocess.Popen[bytes]]:
        return [p for procs in self.procs.values() for p in procs]

    def stop(self) -> None:
        for name, procs in self.procs.items():
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)  # nginx: graceful
        for p in self._all():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def server_of(self, kind: str) -> str | None:
        """Which processes serve a kind's probes."""
        if kind == "tcp":
            return None
        if kind == "grpcio":
            return "grpcio"
        if kind == "tcp-nginx":
            return "nginx" if self.http_server == "nginx" else "aiohttp"
        return "nginx" if self.http_server == "nginx" else "aiohttp"

    def cpu_seconds(self) -> dict[str, float]:
        """CPU (user + system) of each server's processes and their children (nginx's workers)."""
        children = _children()
        out = {}
        for name, procs in self.procs.items():
            pids: list[int] = []
            todo = [p.pid for p in procs]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(children.get(pid, ()))
            out[name] = sum(_cpu_of(pid) for pid in pids)
        return out

    def describe(self) -> str:
        if self.http_server == "nginx":
            nginx = f"nginx with {self.nginx_workers} worker processes: HTTP/1.1 `return 200` (http), gRPC on cleartext HTTP/2 answering SERVING (grpc)"
        else:
            nginx = f"{self.nginx_workers} aiohttp processes on SO_REUSEPORT (http); no nginx, so no fast gRPC responder"
        return f"{nginx}; {self.grpcio_servers} grpcio server processes on SO_REUSEPORT with the official HealthServicer (grpcio)"


def nginx_path() -> str | None:
    return shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")


def wait_listening(port: int, seconds: float = 15.0) -> None:
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"no server listening on port {port} after {seconds:.0f} s")


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out[ppid].append(int(entry))
    return out


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy, and in interrupts (softirq: on loopback, much of
    the packet delivery of both ends, charged to no process), since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK  # minus idle and iowait; irq + softirq


def workers_cpu_seconds() -> tuple[float, float]:
    """User and system CPU of this process's ``ehc.worker`` children (the pool run_pool makes)."""
    user = system = 0.0
    for pid in _children().get(os.getpid(), ()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ehc.worker" not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / CLK_TCK
        system += int(fields[12]) / CLK_TCK
    return user, system


def http_server_child(port: int) -> None:
    """Fallback HTTP server: one aiohttp process (several share the port with SO_REUSEPORT)."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    uvloop.install()
    web.run_app(app, host="0.0.0.0", port=port, reuse_port=True, access_log=None, print=None, backlog=65535)


def grpc_server_child(port: int) -> None:
    """One grpcio server process with the official health servicer, the whole server SERVING."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 1)])
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()


# ---- the other clients' exchanges, on ehc's socket machinery -------------------------------------


class H11Exchange:
    """The HTTP exchange with h11 in place of httptools: what the parser alone costs."""

    __slots__ = ("_conn", "_request", "_status", "reply")

    def __init__(self, host: str, path: str) -> None:
        import h11

        self._conn = h11.Connection(h11.CLIENT)
        headers = [("Host", host), ("User-Agent", "bench"), ("Accept", "*/*"), ("Connection", "close")]
        self._request = self._conn.send(h11.Request(method="GET", target=path, headers=headers))
        self._conn.send(h11.EndOfMessage())
        self._status = 0
        self.reply = b""

    def request(self) -> bytes:
        return self._request

    def feed(self, data: bytes) -> tuple[int, str] | None:
        import h11

        conn = self._conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return (FAIL, "connection closed") if not data else None
                if isinstance(event, h11.Response):
                    self._status = event.status_code
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)) or event is h11.PAUSED:
                    ok = 200 <= self._status < 400
                    return (OK, "") if ok else (FAIL, f"HTTP {self._status}")
        except h11.RemoteProtocolError as exc:
            return FAIL, f"malformed response: {exc}"


class H11Prober(HttpProber):
    def exchange(self, ip: str, check: Http) -> H11Exchange:  # type: ignore[override]
        return H11Exchange(f"{ip}:{check.port}", check.path)


class H2Exchange:
    """One unary Health/Check on a fresh ``h2.connection.H2Connection``."""

    __slots__ = ("_conn", "_data", "_request", "reply")

    def __init__(self, authority: str, service: str, timeout: float) -> None:
        import h2.config
        import h2.connection

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/grpc.health.v1.Health/Check"),
                (b":authority", authority.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-timeout", b"%dm" % max(1, round(timeout * 1000))),
                (b"user-agent", b"bench"),
            ],
        )
        message = b"\x0a" + bytes((len(service),)) + service.encode() if service else b""
        conn.send_data(1, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        self._request = conn.data_to_send()
        self._conn = conn
        self._data = b""
        self.reply = b""

    def request(self) -> bytes:
        return self._request

    def feed(self, data: bytes) -> tuple[int, str] | None:
        import h2.events
        import h2.exceptions

        from ehc.probe.grpc import _health  # the same protobuf reading as ehc's, so only framing differs

        if not data:
            return FAIL, "connection closed before the call ended"
        conn = self._conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            return FAIL, f"HTTP/2 error: {exc}"
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._data += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers = dict(event.headers)
                if isinstance(event, h2.events.ResponseReceived) and headers.get(b":status") != b"200":
                    return FAIL, f"HTTP {headers.get(b':status')!r}"
                code = headers.get(b"grpc-status")
                if code is not None:
                    return _health(self._data) if code == b"0" else (FAIL, f"gRPC status {code.decode()}")
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return FAIL, type(event).__name__
        self.reply = conn.data_to_send()
        return None


class H2Prober(StreamProber):
    def exchange(self, ip: str, check: Grpc) -> H2Exchange:  # type: ignore[override]
        return H2Exchange(f"{ip}:{check.port}", check.service, self.timeout)


# ---- library choice: one client per process ------------------------------------------------------

HTTP_CLIENTS = ("ehc", "ehc+h11", "aiohttp")
GRPC_CLIENTS = ("ehc", "ehc+h2", "grpcio", "grpcio-1ch")
CLIENT_LABELS = {
    ("http", "ehc"): "ehc HttpProber (httptools)",
    ("http", "ehc+h11"): "ehc sockets + h11 parser",
    ("http", "aiohttp"): "aiohttp ClientSession force_close",
    ("grpc", "ehc"): "ehc GrpcProber (own frames + hpack)",
    ("grpc", "ehc+h2"): "ehc sockets + h2 H2Connection",
    ("grpc", "grpcio"): "grpc.aio, new channel per probe",
    ("grpc", "grpcio-1ch"): "grpc.aio, ONE channel (reference: reuses its connection)",
}


def client_child(kind: str, name: str, port: int, seconds: float, concurrency: int, timeout: float) -> dict:
    raise_fd_limit()
    if name.startswith("ehc"):
        prober = (
            {"ehc": HttpProber, "ehc+h11": H11Prober}[name]
            if kind == "http"
            else {"ehc": GrpcProber, "ehc+h2": H2Prober}[name]
        )
        check = Http(port, "/") if kind == "http" else Grpc(port)
        return uvloop.run(_drive_prober(prober, check, seconds, concurrency, timeout))
    if name == "aiohttp":
        return uvloop.run(_drive_coroutines(_aiohttp_probe, port, seconds, concurrency, timeout))
    # Every client on uvloop, ehc's loop (grpc.aio measured the same on asyncio's default loop).
    return uvloop.run(
        _drive_coroutines(_grpcio_probe(name == "grpcio-1ch"), port, seconds, concurrency, timeout)
    )


ADDRESSES = 20_000


async def _drive_prober(
    prober_type: type, check: Any, seconds: float, concurrency: int, timeout: float
) -> dict:
    loop = asyncio.get_running_loop()
    prober = prober_type(loop, timeout)
    prober.open()
    ok = failed = started = 0
    details: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + seconds
    finished = loop.create_future()

    def start() -> None:
        nonlocal started
        started += 1
        prober.start(address(started % ADDRESSES), socket.AF_INET, check, done)

    def done(outcome: int, latency: float, detail: str) -> None:
        nonlocal ok, failed
        if outcome == OK:
            ok += 1
        else:
            failed += 1
            details[detail] += 1
        if time.monotonic() < stop_at:
            start()
        elif ok + failed == started and not finished.done():
            finished.set_result(None)

    cpu0, t0 = time.process_time(), time.monotonic()
    for _ in range(concurrency):
        start()
    await finished
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    prober.close()
    return _client_result(ok, failed, details, cpu, wall)


async def _drive_coroutines(probe: Any, port: int, seconds: float, concurrency: int, timeout: float) -> dict:
    ok = failed = 0
    details: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + seconds
    one, close = await probe(port, timeout)

    async def worker(k: int) -> None:
        nonlocal ok, failed
        i = k
        while time.monotonic() < stop_at:
            i += concurrency
            try:
                detail = await one(address(i % ADDRESSES))
            except Exception as exc:  # a library's error is a failed probe, named by its type
                detail = f"{type(exc).__name__}: {str(exc)[:80]}"
            if detail is None:
                ok += 1
            else:
                failed += 1
                details[detail] += 1

    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    await close()
    return _client_result(ok, failed, details, cpu, wall)


async def _aiohttp_probe(port: int, timeout: float) -> tuple[Any, Any]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),  # a new connection for every request
        timeout=aiohttp.ClientTimeout(total=timeout),
    )

    async def one(ip: str) -> str | None:
        async with session.get(f"http://{ip}:{port}/") as response:
            await response.read()  # as ehc, read the (3-byte) body
            return None if 200 <= response.status < 400 else f"HTTP {response.status}"

    return one, session.close


def _grpcio_probe(persistent: bool) -> Any:
    async def make(port: int, timeout: float) -> tuple[Any, Any]:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        request = health_pb2.HealthCheckRequest(service="")
        serving = health_pb2.HealthCheckResponse.SERVING
        # A local subchannel pool: a new channel never borrows another channel's connection.
        options = [("grpc.use_local_subchannel_pool", 1)]

        if persistent:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stub = health_pb2_grpc.HealthStub(channel)

            async def one(ip: str) -> str | None:
                reply = await stub.Check(request, timeout=timeout)
                return None if reply.status == serving else f"status {reply.status}"

            return one, channel.close

        async def one(ip: str) -> str | None:
            async with grpc.aio.insecure_channel(f"{ip}:{port}", options=options) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)
            return None if reply.status == serving else f"status {reply.status}"

        async def close() -> None:
            pass

        return one, close

    return make


def _client_result(ok: int, failed: int, details: collections.Counter[str], cpu: float, wall: float) -> dict:
    total = ok + failed
    return {
        "probes": total,
        "ok": ok,
        "failed": failed,
        "failures": dict(details.most_common(3)),
        "rate": ok / wall,
        "cpu_us_per_probe": cpu / total * 1e6 if total else float("nan"),
        "cpu_percent": cpu / wall * 100,
    }


def run_client(kind: str, name: str, port: int, seconds: float, concurrency: int, timeout: float) -> dict:
    args = [sys.executable, __file__, "--client-child", kind, name, str(port), str(seconds), str(concurrency)]
    out = subprocess.run([*args, str(timeout)], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"client {kind}/{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def library_choice(
    kind: str, servers: Servers, rounds: int, seconds: float, concurrency: int, timeout: float
) -> dict[str, Any]:
    """Every client of ``kind`` against the same server, ``rounds`` interleaved rounds (order alternating)."""
    names = HTTP_CLIENTS if kind == "http" else GRPC_CLIENTS
    target = kind if servers.ports[kind] is not None else "grpcio"  # without nginx, gRPC goes to grpcio
    port, server = servers.ports[target], servers.server_of(target)
    assert port is not None and server is not None
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            cpu0, t0 = servers.cpu_seconds()[server], time.monotonic()
            result = run_client(kind, name, port, seconds, concurrency, timeout)
            server_cpu = servers.cpu_seconds()[server] - cpu0
            result["server_cpu_us_per_probe"] = (
                server_cpu / result["probes"] * 1e6 if result["probes"] else 0.0
            )
            result["server_cpu_percent"] = server_cpu / (time.monotonic() - t0) * 100
            runs[name].append(result)
            print(
                f"    round {r + 1}  {kind:4} {name:11} {result['rate']:7.0f} probes/s  {result['cpu_us_per_probe']:6.1f} us"
                f" CPU/probe  ({result['cpu_percent']:3.0f}% of a core)  server {result['server_cpu_us_per_probe']:6.1f} us/probe"
                f" ({result['server_cpu_percent']:3.0f}%)  failed {result['failed']}"
                + (f" {result['failures']}" if result["failed"] else ""),
                flush=True,
            )
    summary: dict[str, Any] = {"server": server, "port_kind": target}
    for name in names:
        rates = [x["rate"] for x in runs[name]]
        cpus = [x["cpu_us_per_probe"] for x in runs[name]]
        summary[name] = {
            "label": CLIENT_LABELS[(kind, name)],
            "rate_median": statistics.median(rates),
            "rate_range": [min(rates), max(rates)],
            "cpu_us_per_probe_median": statistics.median(cpus),
            "cpu_us_per_probe_range": [min(cpus), max(cpus)],
            "server_cpu_us_per_probe_median": statistics.median(
                x["server_cpu_us_per_probe"] for x in runs[name]
            ),
            "failed": sum(x["failed"] for x in runs[name]),
            "runs": runs[name],
        }
    base = summary["ehc"]
    for name in names:
        s = summary[name]
        s["cpu_vs_ehc"] = s["cpu_us_per_probe_median"] / base["cpu_us_per_probe_median"]
        s["rate_vs_ehc"] = s["rate_median"] / base["rate_median"]
    return summary


def print_library_table(kind: str, summary: dict[str, Any]) -> None:
    names = HTTP_CLIENTS if kind == "http" else GRPC_CLIENTS
    print(f"  {kind} (server: {summary['server']})")
    print(f"    {'client':56} {'probes/s [min-max]':>22} {'CPU us/probe [min-max]':>24} {'CPU x ehc':>9} "
          f"{'rate x ehc':>10} {'server us/probe':>15} {'fails':>5}")  # fmt: skip
    for name in names:
        s = summary[name]
        rate = f"{s['rate_median']:.0f} [{s['rate_range'][0]:.0f}-{s['rate_range'][1]:.0f}]"
        lo, hi = s["cpu_us_per_probe_range"]
        cpu = f"{s['cpu_us_per_probe_median']:.1f} [{lo:.1f}-{hi:.1f}]"
        print(
            f"    {s['label']:56} {rate:>22} {cpu:>24} {s['cpu_vs_ehc']:9.2f} {s['rate_vs_ehc']:10.2f}"
            f" {s['server_cpu_us_per_probe_median']:15.1f} {s['failed']:5}"
        )


# ---- parsing one response, no sockets ------------------------------------------------------------


def capture(port: int, request: bytes, exchange: Any) -> bytes:
    """The server's bytes for one request, read until ``exchange`` judges them."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        got = b""
        while True:
            data = s.recv(65536)
            got += data
            verdict = exchange.feed(data)
            if exchange.reply:
                s.sendall(exchange.reply)
                exchange.reply = b""
            if verdict is not None or not data:
                if verdict is None or verdict[0] != OK:
                    raise SystemExit(f"capturing a reply on port {port} failed: {verdict}")
                return got


class _Sink:
    """httptools callbacks that keep nothing."""

    def on_header(self, name: bytes, value: bytes) -> None:
        pass


def parse_microbench(servers: Servers, seconds: float) -> dict[str, Any]:
    """Per exchange, as each probe makes one: a new parser, the request bytes, the reply parsed, a verdict.

    The replies are captured from the servers first: nginx's HTTP response, grpcio's gRPC reply."""
    import h11
    import httptools

    loop = asyncio.new_event_loop()
    try:
        http, grpc = HttpProber(loop, 1.0), GrpcProber(loop, 1.0)
        http_port, grpcio_port = servers.ports["http"], servers.ports["grpcio"]
        assert http_port is not None and grpcio_port is not None
        hcheck, gcheck = Http(http_port, "/"), Grpc(grpcio_port)
        first = http.exchange("127.0.0.1", hcheck)
        response = capture(http_port, first.request(), first)
        first = grpc.exchange("127.0.0.1", gcheck)
        reply = capture(grpcio_port, first.request(), first)

        def ehc_http() -> Any:
            e = http.exchange("127.0.0.1", hcheck)
            e.request()
            return e.feed(response)

        def h11_http() -> Any:
            e = H11Exchange(f"127.0.0.1:{http_port}", "/")
            e.request()
            return e.feed(response)

        def httptools_parse_only() -> Any:
            p = httptools.HttpResponseParser(_Sink())
            p.feed_data(response)
            return p.get_status_code()

        def h11_parse_only() -> Any:
            conn = h11.Connection(h11.CLIENT)
            conn._cstate.process_event(h11.CLIENT, h11.Request)  # as if the request had been sent
            conn._cstate.process_event(h11.CLIENT, h11.EndOfMessage)
            conn.receive_data(response)
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                assert event is not h11.NEED_DATA
            return event

        def ehc_grpc() -> Any:
            e = grpc.exchange("127.0.0.1", gcheck)
            e.request()
            return e.feed(reply)

        def h2_grpc() -> Any:
            e = H2Exchange(f"127.0.0.1:{grpcio_port}", "", 1.0)
            e.request()
            return e.feed(reply)

        for f in (ehc_http, h11_http, ehc_grpc, h2_grpc):
            assert f()[0] == OK, f
        cases = {
            "http_ehc_exchange": ("HTTP: ehc exchange (request + httptools + verdict)", ehc_http),
            "http_h11_exchange": ("HTTP: h11 exchange (h11 request + h11 parse + verdict)", h11_http),
            "http_httptools_parse": (
                "HTTP: httptools parser alone (new parser + feed)",
                httptools_parse_only,
            ),
            "http_h11_parse": ("HTTP: h11 parser alone (new Connection + receive + events)", h11_parse_only),
            "grpc_ehc_exchange": ("gRPC: ehc exchange (own frames + hpack decode + verdict)", ehc_grpc),
            "grpc_h2_exchange": ("gRPC: h2 exchange (new H2Connection + events + verdict)", h2_grpc),
        }
        out: dict[str, Any] = {"http_response_bytes": len(response), "grpc_reply_bytes": len(reply)}
        for key, (label, f) in cases.items():
            timer = timeit.Timer(f)
            number = max(1, int(timer.autorange()[0] * seconds / 0.2))  # about `seconds` per repeat
            per = min(timer.repeat(number=number, repeat=5)) / number * 1e6
            out[key] = per
            print(f"    {label:62} {per:7.1f} us", flush=True)
        out["h11_over_httptools_parse"] = out["http_h11_parse"] / out["http_httptools_parse"]
        out["h2_over_ehc_grpc_exchange"] = out["grpc_h2_exchange"] / out["grpc_ehc_exchange"]
        print(
            f"    h11 / httptools (parser alone) {out['h11_over_httptools_parse']:.0f} x;"
            f" h2 / ehc (gRPC exchange) {out['h2_over_ehc_grpc_exchange']:.1f} x"
            f"  (HTTP response {len(response)} bytes, gRPC reply {len(reply)} bytes)",
            flush=True,
        )
        return out
    finally:
        loop.close()


# ---- capacity per kind on one worker -------------------------------------------------------------

LOADS = ("tcp", "tcp-nginx", "http", "grpc", "grpcio")
LOAD_LABELS = {
    "tcp": "TCP connect (kernel listener)",
    "tcp-nginx": "TCP connect (nginx accepts)",
    "http": "HTTP GET (nginx)",
    "grpc": "gRPC Check (nginx h2c)",
    "grpcio": "gRPC Check (grpcio server)",
}


def limit_of(runs: list[dict[str, Any]], best: dict[str, Any] | None) -> str:
    """What stopped the worker: read from the failed run nearest above the capacity."""
    above = [r for r in runs if not r["passed"] and r["targets"] > (best["targets"] if best else 0)]
    if not above:
        return "none found (the largest N tried passed)"
    r = min(above, key=lambda x: x["targets"])
    cores, used = os.cpu_count() or 1, r["cores"]
    if r["failures"]:
        return f"probes failed ({r['failures']})"
    if r["machine_busy_cores"] >= 0.95 * cores:
        return "the machine (every core busy)"
    if used["worker"] >= 0.9:
        return f"the worker's core (worker {used['worker']:.2f}, server {used['server']:.2f} cores)"
    if used["server"] >= used["worker"]:
        return f"the server (server {used['server']:.2f}, worker {used['worker']:.2f} cores)"
    return "unclear: neither the worker nor the server was busy (noise?)"


def make_targets(load: str, n: int, tcp_port: int, servers: Servers) -> list[Target]:
    port = tcp_port if load == "tcp" else servers.ports["http" if load == "tcp-nginx" else load]
    assert port is not None
    check = {"http": Http(port, "/"), "grpc": Grpc(port), "grpcio": Grpc(port)}.get(load, Tcp(port))
    return [Target(f"{load}{i}", address(i), (check,), Health.HEALTHY) for i in range(n)]


async def measured_run(
    load: str, n: int, tcp_port: int, servers: Servers, settings: ProbeSettings, warmup: float, measure: float
) -> dict[str, Any]:
    """bench_probe.run_pool with one worker, plus the server's CPU and the machine's busy cores,
    sampled every 0.5 s over the steady part of the run (after the warm-up, before the pool closes)."""
    samples: list[tuple[float, dict[str, float], tuple[float, float], tuple[float, float], float]] = []

    async def sample() -> None:
        while True:
            mine = os.times()
            samples.append(
                (
                    time.monotonic(),
                    servers.cpu_seconds(),
                    machine_seconds(),
                    workers_cpu_seconds(),
                    mine.user + mine.system,
                )
            )
            await asyncio.sleep(0.5)

    sampler = asyncio.ensure_future(sample())
    t0 = time.monotonic()
    try:
        r: PoolRun = await run_pool(
            load, make_targets(load, n, tcp_port, servers), 1, settings, warmup, measure
        )
    finally:
        sampler.cancel()
    t1 = time.monotonic()
    steady = [s for s in samples if t0 + warmup + 0.5 <= s[0] <= t1 - 0.5]
    if len(steady) < 2:
        steady = samples[-2:]
    (ta, ca, ma, wa, sa), (tb, cb, mb, wb, sb) = steady[0], steady[-1]
    span = max(tb - ta, 1e-9)
    out = asdict(r)
    server = servers.server_of(load)
    server_rate = (cb[server] - ca[server]) / span if server else 0.0
    out["server"] = server
    out["server_cpu_percent"] = server_rate * 100
    out["server_cpu_us_per_probe"] = server_rate / r.done_rate * 1e6 if r.done_rate else 0.0
    busy, interrupts = (mb[0] - ma[0]) / span, (mb[1] - ma[1]) / span
    worker_user, worker_system = (wb[0] - wa[0]) / span, (wb[1] - wa[1]) / span
    worker, bench = worker_user + worker_system, (sb - sa) / span
    out["machine_busy_cores"] = busy
    out["worker_system_share"] = worker_system / worker if worker else 0.0
    # Where the machine's busy time went.  The interrupt time (softirq: on loopback, most of the
    # packet delivery for both ends) partly overlaps the processes' system time, so the parts may
    # add up to a little more than the whole.
    out["cores"] = {"worker": worker, "server": server_rate, "coordinator": bench, "softirq": interrupts}
    print_run(out)
    return out


def print_run(r: dict[str, Any]) -> None:
    print(
        f"    {r['kind']:6} targets={r['targets']:>6}  done {r['done_rate']:>6.0f}/s ({r['done_ratio']:6.1%})  "
        f"lag p50 {r['lag_p50'] * 1000:5.1f}ms p99 {r['lag_p99'] * 1000:6.1f}ms  fail {r['failures']:<4} "
        f"worker {r['cpu_us_per_probe']:5.1f}us/probe {r['rss_mb_per_worker']:4.0f}MB  "
        f"server {r['server_cpu_us_per_probe']:5.1f}us/probe  "
        f"{'PASS' if r['passed'] else 'fail'}\n"
        f"{'':17}cores busy {r['machine_busy_cores']:.2f} of {os.cpu_count()}: "
        + ", ".join(f"{name} {v:.2f}" for name, v in r["cores"].items())
        + f" (overlaps system time); the worker's time in the kernel: {r['worker_system_share']:.0%}",
        flush=True,
    )


async def capacity(
    load: str,
    start: int,
    limit: int,
    tcp_port: int,
    servers: Servers,
    settings: ProbeSettings,
    quick: bool,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """bench_probe.capacity's rule for any kind: grow N by half until a run fails (or N reaches
    ``limit``), then bisect three times between the last pass and the failure.  ``quick``: double N,
    no bisection, shorter runs."""
    warmup, measure = (2.0, 3.0) if quick else (3.0, 5.0)
    growth, bisections = (2.0, 0) if quick else (1.5, 3)
    grain = 250 if start < 5_000 else 500
    runs: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    n = start
    while True:
        r = await measured_run(load, n, tcp_port, servers, settings, warmup, measure)
        runs.append(r)
        if not r["passed"]:
            failed = r
            break
        best = r
        if n >= limit:
            break
        n = min(limit, max(n + grain, int(n * growth) // grain * grain))
    if failed is not None:
        low = best["targets"] if best else 0
        for _ in range(bisections):
            mid = (low + failed["targets"]) // 2 // grain * grain
            if mid <= low:
                break
            m = await measured_run(load, mid, tcp_port, servers, settings, warmup, measure)
            runs.append(m)
            if m["passed"]:
                best, low = m, mid
            else:
                failed = m
    return best, runs


async def same_load(
    loads: list[str],
    n: int,
    rounds: int,
    tcp_port: int,
    servers: Servers,
    settings: ProbeSettings,
    quick: bool,
) -> dict[str, Any]:
    """The kinds at the same number of targets, interleaved: worker CPU per probe side by side."""
    warmup, measure = (2.0, 3.0) if quick else (3.0, 5.0)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in loads}
    for r in range(rounds):
        for load in loads if r % 2 == 0 else reversed(loads):
            runs[load].append(await measured_run(load, n, tcp_port, servers, settings, warmup, measure))
    out: dict[str, Any] = {"targets": n, "rounds": rounds}
    for load, rs in runs.items():
        cpus = [x["cpu_us_per_probe"] for x in rs]
        out[load] = {
            "cpu_us_per_probe_median": statistics.median(cpus),
            "cpu_us_per_probe_range": [min(cpus), max(cpus)],
            "server_cpu_us_per_probe_median": statistics.median(x["server_cpu_us_per_probe"] for x in rs),
            "rss_mb_median": statistics.median(x["rss_mb_per_worker"] for x in rs),
            "lag_p99_ms_median": statistics.median(x["lag_p99"] for x in rs) * 1000,
            "all_passed": all(x["passed"] for x in rs),
            "runs": rs,
        }
    tcp = out["tcp"]["cpu_us_per_probe_median"]
    for load in loads:
        out[load]["cpu_vs_tcp"] = out[load]["cpu_us_per_probe_median"] / tcp
    return out


# ---- profile of a worker -------------------------------------------------------------------------


async def profile(
    load: str, n: int, tcp_port: int, servers: Servers, settings: ProbeSettings, seconds: float
) -> dict[str, Any]:
    """py-spy on the one worker while it holds ``n`` targets: the functions with the most samples.

    py-spy pauses the worker for each sample (200 a second) and drops idle ones (the loop waiting in
    epoll), so the shares are of its busy time; a system call's kernel time counts under the line
    that made it, and the uvloop loop's own C code under its caller, ``Runner.run``."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    pool = WorkerPool(
        1, settings, on_transitions=lambda w, t, s: None, on_stats=lambda s: None, log_level="warning"
    )
    await pool.start()
    fd, out_file = tempfile.mkstemp(suffix=".txt", prefix="ehc-pyspy-")
    os.close(fd)
    try:
        pool.upsert(make_targets(load, n, tcp_port, servers))
        await asyncio.sleep(3.0)
        pid = next(iter(pool.stats.values())).pid
        proc = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
            "--format", "raw", "--output", out_file,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            return {"error": f"py-spy failed: {err.decode()[-500:]}"}
    finally:
        await pool.close()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(out_file) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            raw = stack.split(";")
            total += c
            own[raw[-1]] += c
            for fr in {_short(fr) for fr in raw}:
                inclusive[fr] += c
    os.unlink(out_file)
    if not total:
        return {"error": "py-spy recorded no samples"}
    top_own = [
        (f"{_short(frame, line=True)}  {_source(frame)}", c / total) for frame, c in own.most_common(15)
    ]
    root = max(inclusive.values())  # the frames every busy sample passes through: runpy, main, the loop
    top_inclusive = [(name, c / total) for name, c in inclusive.most_common(40) if c < root][:15]
    print(
        f"    py-spy on the worker, {LOAD_LABELS[load]} x {n} targets, {seconds:.0f} s, {total} busy samples:"
    )
    print("      own time (the function itself, with the system calls it makes):")
    for name, share in top_own:
        print(f"        {share:6.1%}  {name}")
    print("      inclusive (with what it calls):")
    for name, share in top_inclusive:
        print(f"        {share:6.1%}  {name}")
    return {"load": load, "targets": n, "samples": total, "own": top_own, "inclusive": top_inclusive}


def _source(frame: str) -> str:
    """The line of source a py-spy frame points at."""
    path, _, number = frame.partition(" (")[2].rstrip(")").rpartition(":")
    return linecache.getline(path, int(number)).strip()[:60] if number.isdigit() else ""


def _short(frame: str, line: bool = False) -> str:
    """``fn (/path/to/ehc/probe/stream.py:12)`` -> ``fn (ehc/probe/stream.py)``, or ``...py:12)`` with
    ``line``; a frame of the uvloop loop's own C code shows as its caller, ``Runner.run``."""
    name, _, where = frame.partition(" (")
    path, _, number = where.rstrip(")").rpartition(":")
    parts = path.split("/")
    tail = "/".join(parts[parts.index("ehc") :]) if "ehc" in parts[:-1] else parts[-1]
    return f"{name} ({tail}:{number})" if line else f"{name} ({tail})"


# ---- main ----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    quick = args.quick
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": cores,
        "quick": quick,
        "command": " ".join(sys.argv),
        "ehc": ehc_source(),
    }
    servers = Servers(args.http_server, args.nginx_workers, args.grpcio_servers)
    if args.http_server != "nginx":  # the labels name the server
        LOAD_LABELS.update({"http": "HTTP GET (aiohttp)", "tcp-nginx": "TCP connect (aiohttp accepts)"})
    servers.start()
    listener = bench_probe.endpoint()
    tcp_port = listener.getsockname()[1]
    report["servers"] = servers.describe()
    e = report["ehc"]
    print(
        f"ehc {e['commit']}{' (ehc/ modified)' if e['ehc_modified'] else ''}, sources {e['sources_sha256']}."
    )
    print(f"{cores} cores. Servers: {servers.describe()}.")
    print(
        f"The servers run on the same {cores} cores as the clients and the worker and compete with them for CPU:"
        " every figure comes with the server's CPU, and the capacity runs with the machine's busy cores.\n",
        flush=True,
    )
    try:
        bare = [bench_probe.run_bare(tcp_port, 20_000, 2.0, 256) for _ in range(1 if quick else 3)]
        bare_rate = statistics.median(b["rate"] for b in bare)
        bare_cpu = statistics.median(b["cpu_us_per_probe"] for b in bare)
        report["bare_loop"] = {"runs": bare, "rate_median": bare_rate, "cpu_us_per_probe_median": bare_cpu}
        print(
            f"0. This machine now: bench_probe's bare uvloop connect loop makes {bare_rate:.0f} connects/s at "
            f"{bare_cpu:.1f} us CPU each (median of {len(bare)}; perf/README.md's run: 66133/s at 14.9 us)\n",
            flush=True,
        )

        print(
            "1. Parsing one reply, no sockets (best of 5 timeit repeats; per probe, each makes a new parser):"
        )
        report["parse_us"] = parse_microbench(servers, 0.05 if quick else 0.2)

        rounds, seconds, conc = (1, 2.0, args.concurrency) if quick else (3, 3.0, args.concurrency)
        print(
            f"\n2. Library choice: each client in its own process, {conc} probes in flight, a new connection per"
            f" probe (except grpcio-1ch), {rounds} interleaved round(s) of {seconds:.0f} s; CPU is the client process's:",
            flush=True,
        )
        choice = {
            kind: library_choice(kind, servers, rounds, seconds, conc, 1.0) for kind in ("http", "grpc")
        }
        print()
        for kind in ("http", "grpc"):
            print_library_table(kind, choice[kind])
        report["library_choice"] = {"concurrency": conc, "rounds": rounds, "seconds": seconds, **choice}

        settings = ProbeSettings(interval=1.0, timeout=0.5, retry_count=3)
        loads = [x for x in LOADS if x.startswith("tcp") or servers.ports[x] is not None]
        print(
            "\n3. Capacity of one worker at a 1 s interval (>= 99% of scheduled probes done, lag p99 <= 100 ms,"
            " no failures); N grows until a run fails, then bisects:",
            flush=True,
        )
        plans = {  # first N, largest N tried
            "tcp": (8_000, 80_000),
            "http": (3_000, 40_000),
            "grpc": (2_000, 20_000),
            "grpcio": (1_000, 10_000),
        }
        caps: dict[str, Any] = {}
        for load in [x for x in loads if x != "tcp-nginx"]:  # tcp-nginx: only at the common load
            print(f"  {LOAD_LABELS[load]}:", flush=True)
            start, limit = plans[load]
            best, runs = await capacity(load, start, limit, tcp_port, servers, settings, quick)
            caps[load] = {
                "label": LOAD_LABELS[load],
                "capacity_targets": best["targets"] if best else 0,
                "limit": limit_of(runs, best),
                "best": best,
                "runs": runs,
            }
            print(
                f"    capacity {caps[load]['capacity_targets']}; the limit: {caps[load]['limit']}", flush=True
            )
        report["capacity"] = caps

        n_same, same_rounds = args.same_load, 1 if quick else 3
        same_loads = [x for x in loads if x != "grpcio"]
        print(f"\n  The kinds at {n_same} targets each, {same_rounds} interleaved round(s):", flush=True)
        same = await same_load(same_loads, n_same, same_rounds, tcp_port, servers, settings, quick)
        report["same_load"] = same

        grpc_load = "grpc" if "grpc" in caps else "grpcio"
        http_cap, grpc_cap = caps["http"]["capacity_targets"], caps[grpc_load]["capacity_targets"]
        at_capacity_ratio = (caps["http"]["best"] or {}).get("cpu_us_per_probe", float("nan")) / (
            caps["tcp"]["best"] or {}
        ).get("cpu_us_per_probe", float("nan"))
        report["goals"] = {
            "http targets per worker >= 15000": {"value": http_cap, "met": http_cap >= GOAL_HTTP_TARGETS},
            f"http CPU per probe <= 3 x tcp (both at {same['targets']} targets)": {
                "value": same["http"]["cpu_vs_tcp"],
                "met": same["http"]["cpu_vs_tcp"] <= GOAL_HTTP_CPU_VS_TCP,
            },
            "http CPU per probe <= 3 x tcp (each at its capacity)": {
                "value": at_capacity_ratio,
                "met": at_capacity_ratio <= GOAL_HTTP_CPU_VS_TCP,
            },
            f"grpc targets per worker >= 5000 ({LOAD_LABELS[grpc_load]})": {
                "value": grpc_cap,
                "met": grpc_cap >= GOAL_GRPC_TARGETS,
            },
        }
        if "grpcio" in caps and grpc_load != "grpcio":
            cap = caps["grpcio"]["capacity_targets"]
            report["goals"]["grpc targets per worker >= 5000 (grpcio server)"] = {
                "value": cap,
                "met": cap >= 5_000,
            }

        if args.profile and not quick:
            print(
                "\n4. Where the worker's time goes: py-spy on it at its capacity, HTTP and gRPC:", flush=True
            )
            profiles = {}
            for load in ("http", grpc_load):
                n = max(caps[load]["capacity_targets"], 1_000)
                profiles[load] = await profile(load, n, tcp_port, servers, settings, 8.0)
                if "error" in profiles[load]:
                    print(f"    {load}: {profiles[load]['error']}")
            report["profiles"] = profiles

        print_summary(report)
        if ehc_source()["sources_sha256"] != report["ehc"]["sources_sha256"]:
            report["ehc"]["changed_during_the_run"] = True
            print("\nWARNING: ehc's sources changed during the run: the figures mix versions; run it again.")
    finally:
        listener.close()
        servers.stop()
    return report


def print_summary(report: dict[str, Any]) -> None:
    caps, same = report["capacity"], report["same_load"]
    print(f"\nsummary ({report['cpus']} cores; servers on the same cores)")
    print("  library choice, client CPU per probe and rate (medians; x = over ehc's):")
    for kind in ("http", "grpc"):
        c = report["library_choice"][kind]
        names = HTTP_CLIENTS if kind == "http" else GRPC_CLIENTS
        print(
            f"    {kind:5}"
            + "".join(
                f"  {n} {c[n]['cpu_us_per_probe_median']:.0f}us ({c[n]['cpu_vs_ehc']:.1f}x)" for n in names
            )
        )
    print("  one worker at a 1 s interval, at its capacity:")
    print(f"    {'load':30} {'capacity':>8} {'done':>7} {'lag p50':>8} {'lag p99':>8} {'us/probe':>9} "
          f"{'x tcp':>6} {'RSS MB':>6} {'server':>7} {'server us/probe':>15} {'busy cores':>10}")  # fmt: skip
    tcp_cpu = (caps["tcp"]["best"] or {}).get("cpu_us_per_probe", float("nan"))
    for c in caps.values():
        b = c["best"]
        if b is None:
            print(f"    {c['label']:30} {0:>8}   (no load passed)")
            continue
        print(
            f"    {c['label']:30} {b['targets']:>8} {b['done_ratio']:7.1%} {b['lag_p50'] * 1000:6.1f}ms "
            f"{b['lag_p99'] * 1000:6.1f}ms {b['cpu_us_per_probe']:9.1f} {b['cpu_us_per_probe'] / tcp_cpu:6.2f} "
            f"{b['rss_mb_per_worker']:6.0f} {b['server_cpu_percent']:6.0f}% {b['server_cpu_us_per_probe']:15.1f} "
            f"{b['machine_busy_cores']:10.2f}"
        )
    print("  what stopped each search (the failed run nearest above the capacity):")
    for c in caps.values():
        print(f"    {c['label']:30} {c['limit']}")
    print(
        f"  at {same['targets']} targets each ({same['rounds']} interleaved rounds), worker CPU us/probe median [min-max]:"
    )
    for load in [k for k in LOADS if k in same]:
        s = same[load]
        lo, hi = s["cpu_us_per_probe_range"]
        print(
            f"    {LOAD_LABELS[load]:30} {s['cpu_us_per_probe_median']:6.1f} [{lo:.1f}-{hi:.1f}]  {s['cpu_vs_tcp']:.2f} x tcp"
            f"   server {s['server_cpu_us_per_probe_median']:.1f} us/probe"
        )
    print("  goals:")
    for name, g in report["goals"].items():
        value = f"{g['value']:.2f}" if isinstance(g["value"], float) else str(g["value"])
        print(f"    {name:52} {value:>8}   {'met' if g['met'] else 'NOT met'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client-child":
        kind, name, port, seconds, conc, timeout = sys.argv[2:8]
        print(json.dumps(client_child(kind, name, int(port), float(seconds), int(conc), float(timeout))))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--http-server-child":
        http_server_child(int(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--grpc-server-child":
        grpc_server_child(int(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one round, a coarse search (N doubles): about 2 minutes"
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument(
        "--http-server",
        choices=("nginx", "aiohttp"),
        default="nginx",
        help="aiohttp: when nginx cannot be had",
    )
    parser.add_argument("--nginx-workers", type=int, default=2, help="nginx worker (or aiohttp) processes: 2")
    parser.add_argument("--grpcio-servers", type=int, default=2, help="grpcio server processes: 2")
    parser.add_argument("--concurrency", type=int, default=64, help="probes in flight per client: 64")
    parser.add_argument(
        "--same-load", type=int, default=3_000, help="targets per kind for the CPU ratios: 3000"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profiles")
    args = parser.parse_args()
    problems = missing_requirements(args.http_server)
    if problems:
        sys.exit("bench_kinds needs:\n  " + "\n  ".join(problems))
    result = uvloop.run(main(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
