"""The checkers under test, as real processes inside the simulated cluster's network namespace:
``ehc run`` (as configured, and as "per-pod": the same with ``--node-evidence 0``) and the
reference-design baseline (``perf/baseline.py``).

Both are measured from the outside the same way (``/proc`` for CPU and memory, the API server's
write log for what they wrote); each also reports its own counters: ehc on ``/metrics``, the
baseline as JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ehc.sim import SimCluster
from loadtest import procs

BASELINE_SCRIPT = Path(__file__).resolve().parent.parent / "baseline.py"
_metrics_ports = itertools.count(19_200)


@dataclass(frozen=True)
class CheckerSpec:
    """Which checker, and how it is configured: ``args`` are passed on its command line.  ``kind`` is
    the program run; ``name`` labels it in the report and in process identities (default: ``kind``),
    so one program can be compared with itself under other flags."""

    kind: str  # "ehc" | "baseline"
    args: tuple[str, ...] = ()
    workers: int = 1  # ehc only
    interval: float = 1.0  # its probe interval (what ``args`` set), for the scheduled probe rate
    name: str = ""  # the report key: "ehc", "per-pod", "baseline"; "" means ``kind``

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)

    def command(self, sim: SimCluster, identity: str, metrics_port: int) -> list[str]:
        common = ["--kubeconfig", sim.kubeconfig, "--identity", identity, "--namespace", "default"]
        if self.kind == "ehc":
            return [
                sys.executable, "-m", "ehc", "run", *common, "--workers", str(self.workers),
                "--metrics-address", f"127.0.0.1:{metrics_port}", "--peer-address", f"127.0.0.1:{metrics_port + 1000}",
                "--log-level", "warning", *self.args,
            ]  # fmt: skip
        return [sys.executable, str(BASELINE_SCRIPT), *common, "--stats-interval", "1s",
                "--log-level", "warning", *self.args]  # fmt: skip


@dataclass
class Snapshot:
    """One checker replica at one moment."""

    mono: float
    coordinator: procs.ProcSample | None  # the main process (the baseline's only one)
    workers: list[procs.ProcSample]  # ehc's probe workers
    targets: int = 0
    probes: int = 0  # probe attempts so far (ehc: per worker lifetime, summed)
    checks: int = 0  # the baseline's checks (each one or more attempts)
    lag_p50: list[float] = field(default_factory=list)  # per worker, last stats window
    lag_p99: list[float] = field(default_factory=list)
    skipped: int = 0
    restarts: int = 0
    stalls: int = 0
    worker_targets: int = 0
    pipe_frames: int = 0  # both directions
    pipe_bytes: int = 0
    leader: bool = False
    failures: int = 0
    transitions: int = 0
    probes_by_worker: dict[str, int] = field(default_factory=dict)
    worker_pids: dict[str, int] = field(default_factory=dict)  # worker index -> pid of its last stats frame
    peers: int = 0  # live peers the replica knows
    vetoed: int = 0  # ejections a peer vetoed
    scraped: bool = False  # ehc's /metrics answered: its counters above are read, not left at 0


class Replica:
    """One running checker process."""

    def __init__(
        self, spec: CheckerSpec, sim: SimCluster, identity: str, log_dir: Path, *, group: int | None = None
    ) -> None:
        self.spec = spec
        self.group = group  # the unix group it runs as (its vantage for Fleet.cut); None: ours
        self.sim = sim
        self.identity = identity
        self.metrics_port = next(_metrics_ports)
        self.log_path = log_dir / f"{identity}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._stats: dict[str, int] = {}  # the baseline's last JSON line
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # uvloop (perf/run.py's loop) rejects ``group=``; setgid before exec is what it does.
        extra = {} if self.group is None else {"preexec_fn": functools.partial(os.setgid, self.group)}
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.sim.exec_prefix(),
                *self.spec.command(self.sim, self.identity, self.metrics_port),
                stdout=asyncio.subprocess.PIPE
                if self.spec.kind == "baseline"
                else asyncio.subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                **extra,
            )
        if self.spec.kind == "baseline":
            self._reader = asyncio.create_task(self._read_stats())

    async def _read_stats(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._stats = json.loads(line)

    def kill(self) -> None:
        """SIGKILL: no lease release, no goodbye."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode or 0

    def worker_pids(self) -> list[int]:
        return procs.children(self.pid) if self.spec.kind == "ehc" and self.alive else []

    async def snapshot(self) -> Snapshot:
        mono = time.monotonic()
        main = procs.sample(self.pid) if self.alive else None
        workers = [s for pid in self.worker_pids() if (s := procs.sample(pid)) is not None]
        snap = Snapshot(mono, main, workers)
        if self.spec.kind == "baseline":
            st = self._stats
            snap.targets = st.get("targets", 0)
            snap.probes = st.get("attempts", 0)
            snap.checks = st.get("checks", 0)
            snap.leader = bool(st.get("leader", 0))
            return snap
        if not self.alive:
            return snap
        try:
            text = await self.scrape()
        except (OSError, TimeoutError):
            return snap
        snap.scraped = True
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                name, labels, value = s.name, s.labels, s.value
                if name == "ehc_targets":
                    snap.targets += int(value)
                elif name == "ehc_worker_targets":
                    snap.worker_targets += int(value)
                elif name == "ehc_probes_total":
                    snap.probes += int(value)
                    w = labels["worker"]
                    snap.probes_by_worker[w] = snap.probes_by_worker.get(w, 0) + int(value)
                elif name == "ehc_probe_failures_total":
                    snap.failures += int(value)
                elif name == "ehc_transitions_total":
                    snap.transitions += int(value)
                elif name == "ehc_worker_info":
                    snap.worker_pids[labels["worker"]] = int(labels["pid"])
                elif name == "ehc_probes_skipped_total":
                    snap.skipped += int(value)
                elif name == "ehc_schedule_lag_p50_seconds":
                    snap.lag_p50.append(value)
                elif name == "ehc_schedule_lag_p99_seconds":
                    snap.lag_p99.append(value)
                elif name == "ehc_worker_restarts_total":
                    snap.restarts += int(value)
                elif name == "ehc_worker_stalls_total":
                    snap.stalls += int(value)
                elif name == "ehc_pipe_frames_total":
                    snap.pipe_frames += int(value)
                elif name == "ehc_pipe_bytes_total":
                    snap.pipe_bytes += int(value)
                elif name == "ehc_leader":
                    snap.leader = value == 1
                elif name == "ehc_peers":
                    snap.peers = int(value)
                elif name == "ehc_ejections_vetoed_total":
                    snap.vetoed = int(value)
        return snap

    async def scrape(self, path: str = "/metrics") -> str:
        """GET ``path`` from ehc's metrics server, through a socket inside the cluster's namespace."""
        sock = self.sim.fleet.socket()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", self.metrics_port))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(f"GET {path} HTTP/1.0\r\nHost: ehc\r\n\r\n".encode())
                raw = await reader.read()
                writer.close()
        finally:
            sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise OSError(f"metrics answered {head[:40]!r}")
        return body.decode()


async def start_replicas(
    spec: CheckerSpec,
    sim: SimCluster,
    count: int,
    log_dir: Path,
    tag: str,
    groups: Sequence[int] | None = None,
) -> list[Replica]:
    """Start ``count`` replicas; replica ``i`` runs as unix group ``groups[i]`` when given."""
    replicas = [
        Replica(spec, sim, f"{tag}-{spec.name}-{i}", log_dir, group=groups[i] if groups is not None else None)
        for i in range(count)
    ]
    for r in replicas:
        await r.start()
    return replicas


async def stop_replicas(replicas: Sequence[Replica]) -> None:
    await asyncio.gather(*(r.stop() for r in replicas))
