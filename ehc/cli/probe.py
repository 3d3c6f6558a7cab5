"""``ehc probe``: run the real probe engine against targets given on the command line.

Same engine, same retry policy as ``ehc run``: a target is healthy on its first answer and unhealthy
after ``1 + retry-count`` failed attempts in a row (the confirmations run in parallel).  By default
each target is decided once, in process; ``--watch`` keeps probing them with a pool of worker
processes and prints every transition until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
import time
import urllib.parse

import uvloop

from ehc.cli import argtypes
from ehc.coordinator.pool import WorkerPool
from ehc.coordinator.settings import MAX_RETRY_COUNT
from ehc.wire.checks import Check, Grpc, Http, Icmp, Tcp, kind_of, request_path, target_kind
from ehc.wire.messages import Health, Target, Transition
from ehc.wire.settings import ProbeSettings, format_duration
from ehc.worker.engine import Engine
from ehc.worker.limits import raise_fd_limit

_DEFAULTS = ProbeSettings()


def parse_target(text: str) -> Target:
    """``ip`` (ICMP), ``ip:port`` or ``[v6]:port`` (TCP), a bare IPv6 address meaning ICMP; or a URL:
    ``http://IP[:PORT]/path``, ``https://…`` (HTTP GET) or ``grpc://IP:PORT[/service]`` (gRPC health)."""
    if "://" in text:
        return _parse_url(text)
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"target {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
        if rest and not port_text:
            raise ValueError(f"target {text!r}: missing port after ':'")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text:
            raise ValueError(f"target {text!r}: missing port after ':'")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"target {text!r}: {host!r} is not an IPv4 or IPv6 address") from None
    check: Check = Icmp()
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"target {text!r}: port {port_text!r} is not a number from 1 to 65535")
        check = Tcp(int(port_text))
    return Target(key=text, ip=str(ip), checks=(check,))


_URL_SCHEMES = ("http", "https", "grpc")


def _parse_url(text: str) -> Target:
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"target {text!r}: {exc}") from None
    if url.scheme not in _URL_SCHEMES:
        raise ValueError(f"target {text!r}: scheme {url.scheme!r} is not one of {', '.join(_URL_SCHEMES)}")
    if url.username is not None or url.fragment:
        raise ValueError(f"target {text!r}: a probe URL has no user or #fragment")
    try:
        ip = ipaddress.ip_address(url.hostname or "")
    except ValueError:
        raise ValueError(f"target {text!r}: {url.hostname or ''!r} is not an IPv4 or IPv6 address") from None
    if port == 0:
        raise ValueError(f"target {text!r}: port 0 is not a number from 1 to 65535")
    check: Check
    if url.scheme == "grpc":
        if port is None:
            raise ValueError(f"target {text!r}: a grpc:// target needs a port")
        if url.query:
            raise ValueError(f"target {text!r}: a grpc:// target has no ?query; the path is the service")
        check = Grpc(port, urllib.parse.unquote(url.path.removeprefix("/")))
    else:
        https = url.scheme == "https"
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        check = Http(port or (443 if https else 80), request_path(path), https)
    return Target(key=text, ip=str(ip), checks=(check,))


def _port_hint(text: str) -> str:
    """For ``::1:80``: it is the IPv6 address ::1:80, probed by ICMP; port 80 of ::1 is ``[::1]:80``."""
    host, _, last = text.rpartition(":")
    if text.startswith("[") or text.count(":") < 2 or not (last.isascii() and last.isdigit()):
        return ""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return ""
    return f"{text!r} is the IPv6 address {ipaddress.IPv6Address(text)}, probed by ICMP; for port {last} of {host} write [{host}]:{last}"


def _target_arg(text: str) -> Target:
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "probe",
        help="probe endpoints once with the real engine and print their health",
        description=(
            "Probe each TARGET once with ehc's engine and retry policy. TARGET is IP (ICMP echo), "
            "IP:PORT or [IPv6]:PORT (TCP connect), http://IP[:PORT]/PATH or https://... (HTTP GET: "
            "healthy on 200-399; the certificate is not verified) or grpc://IP:PORT[/SERVICE] (gRPC "
            "health Check: healthy on SERVING). Exit status: 0 all healthy, 1 any unhealthy, 2 bad "
            "arguments."
        ),
    )
    p.add_argument("targets", nargs="+", type=_target_arg, metavar="TARGET")
    p.add_argument(
        "--timeout",
        type=argtypes.duration,
        default=_DEFAULTS.timeout,
        metavar="DUR",
        help=f"per-attempt timeout, Go duration syntax (default {format_duration(_DEFAULTS.timeout)})",
    )
    p.add_argument(
        "--retry-count",
        type=argtypes.whole(0, MAX_RETRY_COUNT),
        default=_DEFAULTS.retry_count,
        metavar="N",
        help=f"unhealthy after 1+N failed attempts in a row (default {_DEFAULTS.retry_count})",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep probing every interval with worker processes; print each transition until stopped",
    )
    p.add_argument(
        "--interval",
        type=argtypes.duration,
        default=_DEFAULTS.interval,
        metavar="DUR",
        help=f"with --watch: probe period per target (default {format_duration(_DEFAULTS.interval)})",
    )
    p.add_argument(
        "--workers",
        type=argtypes.positive,
        default=1,
        metavar="N",
        help="with --watch: worker processes (default 1)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    interval = args.interval if args.watch else max(_DEFAULTS.interval, args.timeout)
    try:
        settings = ProbeSettings(
            timeout=args.timeout, retry_count=args.retry_count, interval=interval
        ).validate()
    except ValueError as exc:
        print(f"ehc probe: error: {exc}", file=sys.stderr)
        return 2
    for target in args.targets:
        if hint := _port_hint(target.key):
            print(f"ehc probe: {hint}", file=sys.stderr)
    raise_fd_limit()
    if args.watch:
        return uvloop.run(watch(args.targets, settings, args.workers))
    results = uvloop.run(probe_once(args.targets, settings))
    width = max(len(t.key) for t in args.targets)
    for target in args.targets:
        print(_line(target, results[target.key], width))
    healthy = all(tr.health == Health.HEALTHY for tr in results.values())
    return 0 if healthy else 1


async def probe_once(targets: list[Target], settings: ProbeSettings) -> dict[str, Transition]:
    """Probe every target until its health is decided; return the deciding transition of each."""
    loop = asyncio.get_running_loop()
    decided: dict[str, Transition] = {}
    all_done = loop.create_future()
    by_key = {t.key: t for t in targets}
    wanted = by_key.keys()

    def on_transition(tr: Transition) -> None:
        decided.setdefault(tr.key, tr)
        if len(decided) == len(wanted) and not all_done.done():
            all_done.set_result(None)

    engine = Engine(loop, settings, on_transition)
    said = engine.start()
    kinds = {kind_of(c) for t in targets for c in t.checks}
    if "unavailable" in said and any(said.startswith(f"{k}:") or f"; {k}:" in said for k in kinds):
        print(f"ehc probe: {said}", file=sys.stderr)
    try:
        for t in targets:
            engine.upsert(t, immediate=True)
        # Local errors (no descriptors, no ICMP socket) decide nothing; give up after a few intervals.
        budget = (2 + settings.retry_count) * (settings.interval + settings.timeout) + 1.0
        try:
            async with asyncio.timeout(budget):
                await all_done
        except TimeoutError:
            now = time.time()
            for key in wanted - decided.keys():
                decided[key] = Transition(
                    key,
                    Health.UNKNOWN,
                    by_key[key].checks[0],
                    "undecided: probes could not be made",
                    0,
                    0,
                    now,
                )
    finally:
        engine.close()
    return decided


async def watch(targets: list[Target], settings: ProbeSettings, workers: int) -> int:
    """Probe continuously with a WorkerPool; print transitions until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    by_key = {t.key: t for t in targets}
    width = max(len(t.key) for t in targets)

    def on_transitions(worker: int, transitions: list[Transition], suspects: int) -> None:
        for tr in transitions:
            print(f"{time.strftime('%H:%M:%S')}  {_line(by_key[tr.key], tr, width)}", flush=True)

    pool = WorkerPool(workers, settings, on_transitions=on_transitions)
    try:
        await pool.start()
        said = sorted(set(pool.prober_notes.values()))
        print(
            f"ehc probe: watching {len(targets)} target(s) every {format_duration(settings.interval)} "
            f"with {workers} worker(s), pids {' '.join(map(str, pool.pids()))}; {'; '.join(said)}",
            file=sys.stderr,
            flush=True,
        )
        pool.upsert(targets)
        await stop.wait()
    finally:
        await pool.close()
    return 0


def _line(target: Target, tr: Transition, width: int) -> str:
    kind = target_kind(target.checks)
    if tr.health == Health.HEALTHY:
        verdict, evidence = "healthy", f"{tr.latency * 1000:.2f}ms"
    elif tr.health == Health.UNHEALTHY:
        plural = "s" if tr.attempts != 1 else ""
        verdict, evidence = "unhealthy", f"{tr.detail} ({tr.attempts} attempt{plural} failed)"
    else:
        verdict, evidence = "unknown", tr.detail
    return f"{target.key:<{width}}  {verdict:<9}  {kind:<4}  {evidence}"
