"""The reference-design checker, written for the load-test harness: what ehc is measured against.

A real checker (real TCP connects and ICMP echoes, real API calls through kubernetes_asyncio), built
the way the reference Go controller is built (``../shared/DESIGN.md`` §2), so the harness can run the
same scenarios against both and report ratios.  What it shares with ehc is only the plumbing that is
not under comparison: the pod watch (``PodWatcher``), the opt-in rules (``targets.select``) and leader
election (``LeaderElector``).  The checking and writing follow the reference, flaws included:

- **Fixed pool.**  Every ``interval`` each target is put on one FIFO queue (unless it is already queued
  or being checked), served by ``concurrency`` workers (default 10).
- **Sequential retries.**  A worker checks one pod: an attempt bounded by ``timeout``; on failure up to
  ``retry_count`` more attempts (default 10), one after the other, the worker held throughout.  A dead
  pod therefore holds its worker for (retry_count + 1) × timeout = 11 s with defaults.  The ports of a
  multi-port pod are checked in turn; the first port that fails all its attempts makes the pod
  unhealthy.
- **Numeric ports only.**  Only ``int`` ports of tcpSocket / httpGet / grpc probes count (the reference
  reads ``Port.IntVal``, which is 0 for a named port, and skips 0).  Named ports, and numbers written
  as strings ("8080" is a string IntOrString too), are dropped silently; a pod left with no port is
  checked by ICMP, like a pod that never had one.  So a pod whose only probe port is named is pinged,
  and its application may be down without the baseline noticing.
- **GET before PATCH, whole condition list.**  When a check's verdict differs from what the watch cache
  says (the reference's informer), the worker GETs the pod's status, recomputes the conditions from
  that copy and, if anything differs, PATCHes *all* of them back (strategic merge, no
  resourceVersion): the racy read-modify-write that can overwrite a kubelet update made in between.
  Annotation mode: Ready=False on failure, nothing on success (the kubelet restores Ready).  Gate mode:
  ``endpointHealthCheckSuccess``=False and Ready=False on failure, the gate True on success.
- **Nothing else.**  No fail-safe, no debounce or recovery threshold, no write retries (the next check
  tries again), no Events, no metrics endpoint.

Usage (inside the simulated cluster's network namespace, like ``ehc run``)::

    python perf/baseline.py --kubeconfig K --identity NAME --namespace NS \\
        [--interval 1s] [--timeout 1s] [--retry-count 10] [--concurrency 10]

Durations are Go-style (``300ms``, ``1s``).  The reference's environment variables are read too
(HEALTH_CHECK_INTERVAL, HEALTH_CHECK_TIMEOUT, HEALTH_CHECK_RETRY_COUNT, HEALTH_CHECK_CONCURRENCY); a
flag wins over its variable.  Runs until SIGTERM / SIGINT (the lease is released on the way out) and
logs one line per status write to stderr, plus a summary line at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp
import msgspec
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from ehc.kube.leader import LeaderElector, micro_time
from ehc.kube.model import GATE, READY, Condition, Pod, Probe, pod_decoder
from ehc.kube.watch import PodWatcher
from ehc.probe import OK
from ehc.probe.icmp import IcmpPinger
from ehc.sources.pods import Mode, select
from ehc.wire.checks import Icmp
from ehc.wire.settings import parse_duration

log = logging.getLogger("baseline")

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
REASON_UNHEALTHY = "EndpointUnhealthy"
REASON_HEALTHY = "EndpointHealthy"
REQUEST_TIMEOUT = 10.0  # seconds for one GET or PATCH
DEFAULT_LEASE = "endpoint-health-checker-baseline"  # not ehc's, so the two never contend by accident


# ---- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    kubeconfig: str | None = None
    identity: str = "baseline"
    namespace: str = "default"
    lease_name: str = DEFAULT_LEASE
    interval: float = 1.0
    timeout: float = 1.0
    retry_count: int = 10
    concurrency: int = 10
    lease_duration: float = 4.0
    renew_deadline: float = 2.0
    retry_period: float = 0.5
    stats_interval: float = 0.0
    log_level: str = "info"


_ENV = {
    "interval": "HEALTH_CHECK_INTERVAL",
    "timeout": "HEALTH_CHECK_TIMEOUT",
    "retry_count": "HEALTH_CHECK_RETRY_COUNT",
    "concurrency": "HEALTH_CHECK_CONCURRENCY",
}
_DURATIONS = ("interval", "timeout", "lease_duration", "renew_deadline", "retry_period", "stats_interval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baseline.py",
        description=(
            "The reference-design endpoint health checker (fixed worker pool, sequential retries, GET "
            "before every PATCH of the whole condition list), for side-by-side load tests with ehc."
        ),
    )
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, else in-cluster)"
    )
    p.add_argument(
        "--identity", default=None, help="leader-election identity (default: $POD_NAME, else the host name)"
    )
    p.add_argument(
        "--namespace", default=None, help="namespace of the Lease (default: $POD_NAMESPACE, else 'default')"
    )
    p.add_argument(
        "--lease-name", default=DEFAULT_LEASE, help=f"leader-election Lease name (default {DEFAULT_LEASE})"
    )
    p.add_argument(
        "--interval",
        default=None,
        help="how often every target is enqueued (HEALTH_CHECK_INTERVAL, default 1s)",
    )
    p.add_argument(
        "--timeout", default=None, help="timeout of one attempt (HEALTH_CHECK_TIMEOUT, default 1s)"
    )
    p.add_argument(
        "--retry-count",
        default=None,
        help="sequential retries after a failed attempt (HEALTH_CHECK_RETRY_COUNT, default 10)",
    )
    p.add_argument(
        "--concurrency",
        default=None,
        help="fixed number of check workers (HEALTH_CHECK_CONCURRENCY, default 10)",
    )
    p.add_argument(
        "--lease-duration", default="4s", help="leader-election lease duration (default 4s, as ehc)"
    )
    p.add_argument(
        "--renew-deadline", default="2s", help="leader-election renew deadline (default 2s, as ehc)"
    )
    p.add_argument(
        "--retry-period", default="500ms", help="leader-election retry period (default 500ms, as ehc)"
    )
    p.add_argument(
        "--stats-interval",
        default="0s",
        help="print the counters as one JSON line on stdout this often, for the harness (default 0s: never)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def parse_options(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Options:
    """Flags, then the reference's environment variables, then the defaults; exits 2 on a bad value."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = Options()
    values: dict[str, object] = {}
    for field in ("interval", "timeout", "retry_count", "concurrency", *_DURATIONS[2:]):
        raw = getattr(args, field)
        source = f"--{field.replace('_', '-')}"
        if raw is None and field in _ENV and env.get(_ENV[field], "").strip():
            raw, source = env[_ENV[field]], _ENV[field]
        if raw is None:
            values[field] = getattr(defaults, field)
            continue
        try:
            values[field] = parse_duration(raw) if field in _DURATIONS else int(raw)
        except ValueError as exc:
            parser.error(f"{source}={raw!r}: {exc}")
    for field, low in (("interval", 0.0), ("timeout", 0.0)):
        if not values[field] > low:  # type: ignore[operator]
            parser.error(f"{field} must be > 0")
    if values["retry_count"] < 0:  # type: ignore[operator]
        parser.error("retry count must be >= 0")
    if values["concurrency"] < 1:  # type: ignore[operator]
        parser.error("concurrency must be >= 1")
    if values["stats_interval"] < 0:  # type: ignore[operator]
        parser.error("stats interval must be >= 0")
    if not 0 < values["retry_period"] < values["renew_deadline"] < values["lease_duration"]:  # type: ignore[operator]
        parser.error("leader election needs 0 < retry period < renew deadline < lease duration")
    return Options(
        kubeconfig=args.kubeconfig,
        identity=args.identity or env.get("POD_NAME") or socket.gethostname(),
        namespace=args.namespace or env.get("POD_NAMESPACE") or "default",
        lease_name=args.lease_name,
        log_level=args.log_level,
        **values,  # type: ignore[arg-type]
    )


# ---- what is checked, and what is written --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    key: str
    namespace: str
    name: str
    ip: str
    ports: tuple[int, ...]  # empty: ICMP
    mode: Mode


def numeric_ports(pod: Pod) -> tuple[int, ...]:
    """The reference's ports: ``Port.IntVal`` of each tcpSocket / httpGet / grpc action of the
    readiness and liveness probes, skipping 0 (what a named port, or a number written as a string,
    gives).  Deduplicated, in order of appearance (the order they are checked in)."""
    out: dict[int, None] = {}
    for container in pod.spec.containers:
        for probe in (container.readinessProbe, container.livenessProbe):
            for port in _actions(probe):
                if isinstance(port, int) and 0 < port < 65536:
                    out[port] = None
    return tuple(out)


def _actions(probe: Probe | None) -> list[int | str]:
    if probe is None:
        return []
    return [a.port for a in (probe.tcpSocket, probe.httpGet, probe.grpc) if a is not None]


def target_of(pod: Pod) -> Target | None:
    """The pod as the baseline checks it: ehc's opt-in and eligibility rules, the reference's ports."""
    sel = select(pod).target
    if sel is None:
        return None
    return Target(sel.key, sel.namespace, sel.name, sel.ip, numeric_ports(pod), sel.mode)


def wanted(mode: Mode, healthy: bool) -> dict[str, str]:
    """Condition type -> status the reference sets after a check (nothing on success in annotation mode)."""
    if mode is Mode.GATE:
        return {GATE: "True"} if healthy else {GATE: "False", READY: "False"}
    return {} if healthy else {READY: "False"}


def new_conditions(
    current: Sequence[Condition], mode: Mode, healthy: bool, now: str | None = None
) -> list[Condition] | None:
    """The whole condition list the reference PATCHes back, or None when nothing would change.

    Every condition of ``current`` is kept in its place; the ones the verdict changes get the new
    status, a reason, a message and a fresh lastTransitionTime; a missing one (the gate, at first) is
    appended."""
    want = wanted(mode, healthy)
    have = {c.type: c.status for c in current}
    if all(have.get(t) == s for t, s in want.items()):
        return None
    now = now or micro_time().split(".")[0] + "Z"
    reason = REASON_HEALTHY if healthy else REASON_UNHEALTHY
    message = "endpoint health check succeeded" if healthy else "endpoint health check failed"

    def changed(ctype: str) -> Condition:
        return Condition(ctype, want[ctype], reason, message, now)

    out = [changed(c.type) if c.type in want and c.status != want[c.type] else c for c in current]
    out.extend(changed(t) for t in want if t not in have)
    return out


def patch_body(conditions: Sequence[Condition]) -> dict[str, object]:
    return {"status": {"conditions": msgspec.to_builtins(list(conditions))}}


# ---- the checker ---------------------------------------------------------------------------------


class Baseline:
    """Watch (every replica), elect, and, while leading, run the fixed pool of check workers."""

    def __init__(self, opts: Options, api: ApiClient) -> None:
        self.opts = opts
        self._core = CoreV1Api(api)
        self.targets: dict[str, Target] = {}
        self.pods: dict[str, Pod] = {}  # the watch cache (the reference's informer), targets only
        self.watcher = PodWatcher(api, on_page=self._page, on_snapshot=self._snapshot, on_event=self._event)
        self.elector = LeaderElector(
            api,
            namespace=opts.namespace,
            name=opts.lease_name,
            identity=opts.identity,
            lease_duration=opts.lease_duration,
            renew_deadline=opts.renew_deadline,
            retry_period=opts.retry_period,
            on_started_leading=self._lead,
        )
        self.pinger: IcmpPinger | None = None
        self.checks = 0
        self.attempts = 0
        self.gets = 0
        self.patches = 0
        self.write_errors = 0

    # -- life cycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled; the lease is released on the way out."""
        self.pinger = IcmpPinger(asyncio.get_running_loop(), self.opts.timeout)
        self.pinger.open()
        tasks = [asyncio.create_task(self.watcher.run(), name="watch")]
        if self.opts.stats_interval > 0:
            tasks.append(asyncio.create_task(self._print_stats(), name="stats"))
        try:
            await self.watcher.wait_synced()
            tasks.append(asyncio.create_task(self.elector.run(), name="elect"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.elector.release(), self.opts.renew_deadline)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.pinger.close()
            log.info(
                "baseline stopped: %d checks, %d attempts, %d GETs, %d PATCHes, %d failed writes",
                self.checks, self.attempts, self.gets, self.patches, self.write_errors,
            )  # fmt: skip

    def counters(self) -> dict[str, int]:
        return {
            "targets": len(self.targets),
            "leader": int(self.elector.is_leader()),
            "checks": self.checks,
            "attempts": self.attempts,
            "gets": self.gets,
            "patches": self.patches,
            "write_errors": self.write_errors,
        }

    async def _print_stats(self) -> None:
        while True:
            await asyncio.sleep(self.opts.stats_interval)
            print(json.dumps(self.counters()), flush=True)

    async def _lead(self) -> None:
        """The reference's loop: every interval, enqueue every target not already queued or in progress."""
        o = self.opts
        log.info(
            "leading as %s: %d targets, %d workers, interval %gs, timeout %gs, retry count %d",
            o.identity, len(self.targets), o.concurrency, o.interval, o.timeout, o.retry_count,
        )  # fmt: skip
        queue: asyncio.Queue[str] = asyncio.Queue()
        busy: set[str] = set()  # queued or being checked
        workers = [asyncio.create_task(self._worker(queue, busy)) for _ in range(o.concurrency)]
        loop = asyncio.get_running_loop()
        try:
            tick = loop.time()
            while True:
                for key in self.targets:
                    if key not in busy:
                        busy.add(key)
                        queue.put_nowait(key)
                tick = max(tick + o.interval, loop.time())
                await asyncio.sleep(tick - loop.time())
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, queue: asyncio.Queue[str], busy: set[str]) -> None:
        while True:
            key = await queue.get()
            try:
                target = self.targets.get(key)
                if target is not None:
                    healthy = await self.check(target)
                    await self.reconcile(target, healthy)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("check of %s failed unexpectedly", key)
            finally:
                busy.discard(key)

    # -- watch → targets -------------------------------------------------------------------------
    def _page(self, pods: list[Pod]) -> None:
        for pod in pods:
            self._update(pod)

    def _snapshot(self, keys: set[str]) -> None:
        for key in self.targets.keys() - keys:
            del self.targets[key]
        for key in self.pods.keys() - keys:
            del self.pods[key]

    def _event(self, kind: str, pod: Pod) -> None:
        if kind == "DELETED":
            self.targets.pop(pod.key, None)
            self.pods.pop(pod.key, None)
        else:
            self._update(pod)

    def _update(self, pod: Pod) -> None:
        target = target_of(pod)
        if target is None:
            self.targets.pop(pod.key, None)
            self.pods.pop(pod.key, None)
        else:
            self.targets[pod.key] = target
            self.pods[pod.key] = pod

    # -- checking --------------------------------------------------------------------------------
    async def check(self, t: Target) -> bool:
        """Each port in turn (ICMP without one), each with 1 + retry_count sequential attempts."""
        self.checks += 1
        if not t.ports:
            return await self._with_retries(partial(self._ping, t.ip))
        for port in t.ports:
            if not await self._with_retries(partial(self._connect, t.ip, port)):
                return False
        return True

    async def _with_retries(self, attempt: Callable[[], Awaitable[bool]]) -> bool:
        for _ in range(self.opts.retry_count + 1):
            self.attempts += 1
            if await attempt():
                return True
        return False

    async def _connect(self, ip: str, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), self.opts.timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    async def _ping(self, ip: str) -> bool:
        assert self.pinger is not None
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def done(outcome: int, _latency: float, _detail: str) -> None:
            if not fut.done():
                fut.set_result(outcome == OK)

        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.pinger.start(ip, family, Icmp(), done)
        return await fut

    # -- writing ---------------------------------------------------------------------------------
    async def reconcile(self, t: Target, healthy: bool) -> None:
        """If the watch cache says the verdict changes something: GET the pod, recompute, PATCH all."""
        cached = self.pods.get(t.key)
        if cached is None or new_conditions(cached.status.conditions, t.mode, healthy) is None:
            return
        if not self.elector.is_leader():
            return
        self.gets += 1
        status, body = await self._call(self._core.read_namespaced_pod_status, t.name, t.namespace)
        if status != 200:
            self.write_errors += 1
            log.warning("GET %s failed (HTTP %s): nothing written", t.key, status or "error")
            return
        try:
            pod = pod_decoder.decode(body)
        except msgspec.DecodeError as exc:
            self.write_errors += 1
            log.warning("GET %s: undecodable pod (%s): nothing written", t.key, exc)
            return
        conditions = new_conditions(pod.status.conditions, t.mode, healthy)
        if conditions is None:
            return
        self.patches += 1
        status, _ = await self._call(
            self._core.patch_namespaced_pod_status, t.name, t.namespace, patch_body(conditions),
            _content_type=STRATEGIC_MERGE,
        )  # fmt: skip
        what = " ".join(f"{k}={v}" for k, v in wanted(t.mode, healthy).items())
        if 200 <= status < 300:
            log.info("PATCH %s: %s (%s mode, %d conditions sent)", t.key, what, t.mode.value, len(conditions))
        else:
            self.write_errors += 1
            log.warning("PATCH %s: %s failed (HTTP %s)", t.key, what, status or "error")

    async def _call(
        self, method: Callable[..., object], *args: object, **kwargs: object
    ) -> tuple[int, bytes]:
        """One request; (HTTP status, body). Status 0: no answer."""
        try:
            resp = await method(  # type: ignore[misc]
                *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )
            try:
                return resp.status, await resp.read()
            finally:
                resp.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("request failed: %s: %s", type(exc).__name__, exc)
            return 0, b""


# ---- main ----------------------------------------------------------------------------------------


async def _main(opts: Options) -> int:
    from kubernetes_asyncio.config import ConfigException

    from ehc.kube.client import make_api_client

    try:
        api = await make_api_client(opts.kubeconfig)
    except (ConfigException, OSError) as exc:
        log.error("no cluster to talk to: %s", exc)
        return 2
    checker = Baseline(opts, api)
    log.info(
        "baseline starting as %s: interval %gs, timeout %gs, retry count %d, concurrency %d, lease %s/%s",
        opts.identity, opts.interval, opts.timeout, opts.retry_count, opts.concurrency,
        opts.namespace, opts.lease_name,
    )  # fmt: skip
    task = asyncio.create_task(checker.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await api.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=opts.log_level.upper(),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import uvloop

    from ehc.worker.limits import raise_fd_limit

    raise_fd_limit()
    return uvloop.run(_main(opts))


if __name__ == "__main__":
    sys.exit(main())
