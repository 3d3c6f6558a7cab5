"""WorkerPool: the coordinator's side of the probe engine.

It spawns N worker processes (``python -m ehc.worker``, a fresh interpreter each, talking over real
pipes), gives each the targets the jump hash assigns to it, and turns their frames into callbacks.
asyncio's subprocess transport is used rather than ``multiprocessing``: its pipes and exit
notification live on the coordinator's own event loop, so reading frames never blocks it and a dead
worker is noticed the moment its process exits.

A dead worker is restarted with exponential backoff and handed its targets again, each with the last
health it reported so the new process does not re-announce what is already known.  Nothing a dead
worker said after its death was noticed is ever passed on.

A worker counts as dead, and is killed and restarted, when it exits, closes its output, sends
garbage, goes silent, or *stalls*: its stats keep coming but show no probe attempt for a while although
it has targets.  ``healthy()`` is True only while every worker is up and probing (a restarted one from
its first stats that show attempts), which is what the coordinator's readiness reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable

import msgspec

from ehc.coordinator.sharding import worker_for
from ehc.wire.frames import FrameDecoder, FrameEncoder, FrameError
from ehc.wire.messages import (
    Answers,
    Ask,
    FromWorker,
    Health,
    Hello,
    Init,
    Inspect,
    Inspection,
    NodeVerdict,
    Opinion,
    Remove,
    Stats,
    Stop,
    Suspects,
    Target,
    ToWorker,
    Transition,
    Transitions,
    Upsert,
    Witnesses,
)
from ehc.wire.settings import ProbeSettings

log = logging.getLogger(__name__)

OnTransitions = Callable[[int, list[Transition], int], None]
"""A worker's frame: its index, its transitions and how many targets it holds in doubt at that same
moment (-1: not counted).  The two are one view: a target confirmed down leaves the suspects as it
joins the unhealthy, so whoever weighs them must take them together."""
OnStats = Callable[[Stats], None]
OnNode = Callable[[int, NodeVerdict], None]
OnDoubts = Callable[[list[str]], None]
ANSWER_SLACK = 0.1
"""How much longer than its wait a worker may take to answer a question before it counts as no answer."""

_STABLE_AFTER = 30.0  # a worker that lived this long resets its restart backoff
START_ATTEMPTS = 3
"""Exits before its first hello after which ``start()`` gives up on a worker."""


class _WorkerProcess(asyncio.SubprocessProtocol):
    """One incarnation of worker ``index``: its pipes, its frame decoder, its fate."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.decoder = FrameDecoder(FromWorker)
        self.transport: asyncio.SubprocessTransport | None = None
        self.alive = True
        self.started = self.last_heard = self.last_progress = time.monotonic()
        self.attempts = -1  # probe attempts (made or failed locally) in its last stats frame
        self.probing = False  # a stats frame since its start showed attempts advancing, or no targets
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def progress(self, stats: Stats) -> None:
        attempts = sum(stats.probes.values()) + stats.local_errors + stats.skipped_probes
        if not sum(stats.targets.values()) or attempts > self.attempts:
            self.last_progress = time.monotonic()
            self.probing = True
        self.attempts = attempts

    @property
    def pid(self) -> int | None:
        return self.transport.get_pid() if self.transport else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if not self.alive:
            return
        self.pool.pipe_bytes["in"] += len(data)
        try:
            messages = self.decoder.feed(data)
        except FrameError as exc:
            self._deliver(exc.messages)
            self.pool._malformed(self, exc)
            return
        self._deliver(messages)

    def _deliver(self, messages: list[FromWorker]) -> None:
        if messages:
            self.last_heard = time.monotonic()
            self.pool.pipe_frames["in"] += len(messages)
        for msg in messages:
            if not self.alive:
                return
            self.pool._on_message(self, msg)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self.alive and not self.pool._closing:
            # Its frame stream is gone, so it can no longer report: as good as dead.
            log.error("worker %d (pid %s) closed its output pipe; killing it", self.index, self.pid)
            self.alive = False
            self.kill()

    def process_exited(self) -> None:
        self.alive = False
        code = self.transport.get_returncode() if self.transport else None
        self.exited.set_result(code if code is not None else -1)
        self.pool._on_exit(self, code)

    def send(self, message: ToWorker) -> None:
        if self.alive and self.transport is not None:
            stdin = self.transport.get_pipe_transport(0)
            if stdin is not None and not stdin.is_closing():
                frame = self.pool._encoder.encode(message)
                stdin.write(frame)  # type: ignore[attr-defined]
                self.pool.pipe_frames["out"] += 1
                self.pool.pipe_bytes["out"] += len(frame)

    def kill(self) -> None:
        if self.transport is not None and not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                self.transport.send_signal(signal.SIGKILL)


class WorkerPool:
    """N probe worker processes sharing the targets by consistent hash."""

    def __init__(
        self,
        workers: int,
        settings: ProbeSettings,
        *,
        on_transitions: OnTransitions,
        on_stats: OnStats | None = None,
        on_node: OnNode | None = None,
        on_doubts: OnDoubts | None = None,
        stats_interval: float = 1.0,
        restart_backoff: tuple[float, float] = (0.2, 10.0),
        env: dict[str, str] | None = None,
        log_level: str = "info",
        log_format: str = "text",
        worker_command: list[str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.size = workers
        self._settings = settings.validate()
        self._on_transitions = on_transitions
        self._on_stats = on_stats
        self._on_node = on_node
        self._on_doubts = on_doubts
        self._replies: dict[int, asyncio.Future[Answers | Inspection]] = {}  # open questions, by id
        self._question_ids = 0
        self._stats_interval = stats_interval
        self._backoff = restart_backoff
        self._env = env
        self._command = worker_command or [
            sys.executable, "-m", "ehc.worker", "--log-level", log_level, "--log-format", log_format,
        ]  # fmt: skip
        self._encoder = FrameEncoder()
        self._procs: list[_WorkerProcess | None] = [None] * workers
        self._targets: dict[str, Target] = {}
        self._owner: dict[str, int] = {}
        self._health: dict[str, Health] = {}
        self._unhealthy: set[str] = set()  # as last reported, or as started
        self._witnesses: dict[str, str] = {}  # node -> its own address, checked by the node's worker
        self._crashes = [0] * workers
        self._restart_timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[_WorkerProcess]] = set()
        self._closing = False
        self._ready = [asyncio.Event() for _ in range(workers)]
        self._silence_limit = max(1.0, 5 * stats_interval)
        # No attempt for this long while holding targets is a stall: several intervals, several stats frames.
        self._stall_limit = max(5.0, 3 * settings.interval + 3 * stats_interval)
        self._start_failed: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.restarts = [0] * workers
        self.stalls = [0] * workers
        self.stats: dict[int, Stats] = {}
        self.prober_notes: dict[int, str] = {}  # what each worker's probers said at start
        self.dropped_frames = 0
        # Frames and bytes over the workers' pipes, "in" (from workers) and "out" (to workers).
        self.pipe_frames = {"in": 0, "out": 0}
        self.pipe_bytes = {"in": 0, "out": 0}

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn every worker and wait until each has said hello (restarting any that die first).

        Raises RuntimeError when a worker exits ``START_ATTEMPTS`` times before it is ready, or they are
        not all ready within ``timeout``: a pool that cannot start must say so, not wait forever."""
        loop = asyncio.get_running_loop()
        self._start_failed = loop.create_future()
        for i in range(self.size):
            await self._spawn(i)
        self._watchdog = loop.call_later(self._silence_limit, self._check_silence)
        ready = asyncio.gather(*(event.wait() for event in self._ready))
        try:
            done, _ = await asyncio.wait(
                [ready, self._start_failed], timeout=timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            if not ready.done():
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
        if self._start_failed in done:
            self._start_failed.result()  # raises why
        if ready not in done:
            missing = [i for i, event in enumerate(self._ready) if not event.is_set()]
            raise RuntimeError(f"workers {missing} did not start within {timeout:g}s")
        self._start_failed = None

    def healthy(self) -> bool:
        """Every worker is up and probing (or has nothing to probe): since its start it has shown an
        attempt, and not gone a stall's length without one."""
        now = time.monotonic()
        return all(
            p is not None and p.alive and p.probing and now - p.last_progress <= self._stall_limit
            for p in self._procs
        )

    async def _spawn(self, index: int) -> _WorkerProcess:
        loop = asyncio.get_running_loop()
        proc = _WorkerProcess(self, index)
        self._procs[index] = proc
        await loop.subprocess_exec(
            lambda: proc,
            *self._command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=self._env if self._env is not None else os.environ.copy(),
        )
        proc.send(Init(worker=index, settings=self._settings, stats_interval=self._stats_interval))
        witnesses = {n: ip for n, ip in self._witnesses.items() if worker_for(n, self.size) == index}
        if witnesses:
            proc.send(Witnesses(nodes=witnesses))
        mine = [self._resume(t) for k, t in self._targets.items() if self._owner[k] == index]
        if mine:
            proc.send(Upsert(targets=mine))
        return proc

    def _resume(self, target: Target) -> Target:
        health = self._health.get(target.key, target.health)
        return target if health == target.health else msgspec.structs.replace(target, health=health)

    async def close(self, grace: float = 3.0) -> None:
        """Stop every worker: ask politely, then SIGKILL what is still there after ``grace``."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for timer in self._restart_timers.values():
            timer.cancel()
        self._restart_timers.clear()
        for task in list(self._tasks):
            task.cancel()
        procs = [p for p in self._procs if p is not None and not p.exited.done()]
        for p in procs:
            p.send(Stop())
            if p.transport is not None and (stdin := p.transport.get_pipe_transport(0)) is not None:
                stdin.close()
        if procs:
            _, pending = await asyncio.wait([p.exited for p in procs], timeout=grace)
            for p in procs:
                if not p.exited.done():
                    log.warning("worker %d (pid %s) did not stop in %.1fs; killing it", p.index, p.pid, grace)
                    p.kill()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for p in self._procs:
            if p is not None and p.transport is not None:
                p.transport.close()

    async def __aenter__(self) -> WorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- targets ------------------------------------------------------------------------------

    def worker_of(self, target: Target) -> int:
        """Whole nodes per worker: a node's targets fail together, and one worker judges them together."""
        return worker_for(target.node or target.key, self.size)

    def upsert(self, targets: Iterable[Target]) -> None:
        """Add or change targets.  A changed address, check list or node restarts from ``target.health``."""
        batches: dict[int, list[Target]] = {}
        moved: dict[int, list[str]] = {}
        for t in targets:
            old = self._targets.get(t.key)
            if old is not None and old.ip == t.ip and old.checks == t.checks and old.node == t.node:
                continue
            index = self.worker_of(t)
            previous = self._owner.get(t.key)
            if previous is not None and previous != index:
                moved.setdefault(previous, []).append(t.key)
            self._owner[t.key] = index
            self._targets[t.key] = t
            self._health.pop(t.key, None)
            self._believe(t.key, t.health)
            batches.setdefault(index, []).append(t)
        for index, keys in moved.items():
            if (proc := self._procs[index]) is not None:
                proc.send(Remove(keys=keys))
        for index, batch in batches.items():
            if (proc := self._procs[index]) is not None:
                proc.send(Upsert(targets=batch))

    def witness(self, nodes: dict[str, str]) -> None:
        """Set nodes' witness addresses ("" removes one), each sent to the worker holding the node."""
        batches: dict[int, dict[str, str]] = {}
        for node, ip in nodes.items():
            if self._witnesses.get(node, "") == ip:
                continue
            if ip:
                self._witnesses[node] = ip
            else:
                self._witnesses.pop(node, None)
            batches.setdefault(worker_for(node, self.size), {})[node] = ip
        for index, batch in batches.items():
            if (proc := self._procs[index]) is not None:
                proc.send(Witnesses(nodes=batch))

    def remove(self, keys: Iterable[str]) -> None:
        batches: dict[int, list[str]] = {}
        for key in keys:
            if self._targets.pop(key, None) is None:
                continue
            self._health.pop(key, None)
            self._unhealthy.discard(key)
            batches.setdefault(self._owner.pop(key), []).append(key)
        for index, batch in batches.items():
            if (proc := self._procs[index]) is not None:
                proc.send(Remove(keys=batch))

    def node_of(self, key: str) -> str:
        """The node a target runs on ("" when unknown or not a target)."""
        t = self._targets.get(key)
        return t.node if t is not None else ""

    def ip_of(self, key: str) -> str:
        t = self._targets.get(key)
        return t.ip if t is not None else ""

    async def ask(self, keys: Iterable[str], wait: float) -> dict[str, Opinion]:
        """What this replica's own probes say of ``keys`` now: each is probed at once by its worker,
        and judged on attempts started since (``Engine.ask``).  Keys not probed here, or whose worker
        did not answer in time, are UNKNOWN."""
        keys = list(keys)
        batches: dict[int, list[str]] = {}
        for key in keys:
            if (index := self._owner.get(key)) is not None:
                batches.setdefault(index, []).append(key)
        replies = await self._ask_workers(
            {i: Ask(id=self._next_id(), keys=batch, wait=wait) for i, batch in batches.items()},
            wait + ANSWER_SLACK,
        )
        opinions: dict[str, Opinion] = {}
        for index, reply in replies.items():
            if isinstance(reply, Answers):  # a worker's own keys only: one moved since is not its to judge
                opinions.update((k, v) for k, v in reply.opinions.items() if self._owner.get(k) == index)
        return {key: opinions.get(key, Opinion.UNKNOWN) for key in keys}

    async def inspect(self, limit: int, timeout: float = 1.0) -> tuple[list[Inspection], list[int]]:
        """Every live worker's census of its nodes and doubts (``Engine.inspect``), and the workers
        that gave none within ``timeout`` (down, or too busy to answer)."""
        replies = await self._ask_workers(
            {i: Inspect(id=self._next_id(), limit=limit) for i in range(self.size)}, timeout
        )
        got = [r for r in replies.values() if isinstance(r, Inspection)]
        return got, [i for i in range(self.size) if i not in replies]

    def _next_id(self) -> int:
        self._question_ids += 1
        return self._question_ids

    async def _ask_workers(
        self, questions: dict[int, Ask | Inspect], timeout: float
    ) -> dict[int, Answers | Inspection]:
        """Send each live worker its question and wait up to ``timeout``: the replies that came, by
        worker (a worker down or too slow is left out)."""
        loop = asyncio.get_running_loop()
        sent: dict[int, asyncio.Future[Answers | Inspection]] = {}
        for index, question in questions.items():
            proc = self._procs[index]
            if proc is not None and proc.alive:
                sent[index] = self._replies[question.id] = loop.create_future()
                proc.send(question)
        try:
            if sent:
                await asyncio.wait(sent.values(), timeout=timeout)
            return {i: f.result() for i, f in sent.items() if f.done()}
        finally:
            for index, future in sent.items():
                future.cancel()
                del self._replies[questions[index].id]

    def _believe(self, key: str, health: Health) -> None:
        if health == Health.UNHEALTHY:
            self._unhealthy.add(key)
        else:
            self._unhealthy.discard(key)

    def unhealthy(self) -> list[str]:
        """Targets whose probes last said unhealthy (reported, or the health they were started from)."""
        return list(self._unhealthy)

    def up(self, index: int) -> bool:
        proc = self._procs[index]
        return proc is not None and proc.alive and proc.probing

    def __len__(self) -> int:
        return len(self._targets)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.alive and p.pid is not None]

    # ---- from workers -------------------------------------------------------------------------

    def _on_message(self, proc: _WorkerProcess, msg: FromWorker) -> None:
        if self._procs[proc.index] is not proc:
            self.dropped_frames += 1  # an old incarnation: never pass on what it says
            return
        if isinstance(msg, Transitions):
            if self._on_node is not None:
                for verdict in msg.nodes:
                    self._on_node(proc.index, verdict)
            if msg.doubts and self._on_doubts is not None:
                self._on_doubts(msg.doubts)
            # what was removed (or moved) while in the pipe is dropped
            items = [tr for tr in msg.items if self._owner.get(tr.key) == proc.index]
            for tr in items:
                self._health[tr.key] = tr.health
                self._believe(tr.key, tr.health)
            self._on_transitions(proc.index, items, msg.suspects)
        elif isinstance(msg, Answers | Inspection):
            future = self._replies.get(msg.id)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, Suspects):
            self._on_transitions(proc.index, [], msg.count)
        elif isinstance(msg, Stats):
            proc.progress(msg)
            self.stats[proc.index] = msg
            if self._on_stats is not None:
                self._on_stats(msg)
        elif isinstance(msg, Hello):
            # A new incarnation counts its doubts anew.  Until now the dead one's count stood: while
            # nobody probes its targets, what it last saw is the best guess the fail-safe has.
            self._on_transitions(proc.index, [], 0)
            self.prober_notes[proc.index] = msg.probers
            self._ready[proc.index].set()

    def _check_silence(self) -> None:
        """A worker that sends nothing (not even its stats) for a while is hung, and one whose stats show
        no attempt although it has targets is stalled: kill it; it restarts."""
        now = time.monotonic()
        for proc in self._procs:
            if proc is None or not proc.alive:
                continue
            if now - proc.last_heard > self._silence_limit:
                log.error(
                    "worker %d (pid %s) silent for %.0fs; killing it",
                    proc.index,
                    proc.pid,
                    now - proc.last_heard,
                )
            elif now - proc.last_progress > self._stall_limit:
                self.stalls[proc.index] += 1
                targets = sum(self.stats[proc.index].targets.values()) if proc.index in self.stats else 0
                log.error(
                    "worker %d (pid %s) holds %d targets but made no probe attempt for %.0fs; killing it "
                    "(its targets are probed again once it restarts)",
                    proc.index, proc.pid, targets, now - proc.last_progress,
                )  # fmt: skip
            else:
                continue
            proc.alive = False
            proc.kill()
        self._watchdog = asyncio.get_running_loop().call_later(self._silence_limit / 5, self._check_silence)

    def _malformed(self, proc: _WorkerProcess, exc: FrameError) -> None:
        log.error("worker %d (pid %s) sent a malformed frame (%s); restarting it", proc.index, proc.pid, exc)
        proc.alive = False
        proc.kill()

    def _on_exit(self, proc: _WorkerProcess, code: int | None) -> None:
        if self._closing or self._procs[proc.index] is not proc:
            return
        if time.monotonic() - proc.started > _STABLE_AFTER:
            self._crashes[proc.index] = 0
        why = f"worker {proc.index} (pid {proc.pid}) exited with code {code}"
        starting = self._start_failed
        if (
            starting is not None
            and not starting.done()
            and not self._ready[proc.index].is_set()
            and self._crashes[proc.index] + 1 >= START_ATTEMPTS
        ):
            starting.set_exception(
                RuntimeError(f"{why} {START_ATTEMPTS} times before it was ready; its log lines say why")
            )
            return
        self._schedule_restart(proc.index, why)

    def _schedule_restart(self, index: int, reason: str) -> None:
        self._crashes[index] += 1
        base, cap = self._backoff
        delay = min(cap, base * 2 ** (self._crashes[index] - 1))
        log.error("%s; restarting it in %.1fs", reason, delay)
        self._restart_timers[index] = asyncio.get_running_loop().call_later(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        self._restart_timers.pop(index, None)
        if self._closing:
            return
        self.restarts[index] += 1
        task = asyncio.get_running_loop().create_task(self._spawn(index))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._restarted(index, t))

    def _restarted(self, index: int, task: asyncio.Task[_WorkerProcess]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None and not self._closing:
            self._schedule_restart(index, f"could not start worker {index}: {exc}")
