"""A worker process: ``python -m ehc.worker``, started by the coordinator's WorkerPool.

Commands arrive as frames on stdin; transitions and stats leave as frames on stdout (which is moved
aside at start so a stray ``print`` cannot corrupt the stream; fd 1 then points at stderr).  The
worker exits when stdin closes, so it never outlives its coordinator, even one killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import sys
import time
from functools import partial

import uvloop

from ehc.wire.frames import FrameDecoder, FrameEncoder, FrameError
from ehc.wire.logs import FORMATS, LEVELS, setup_logging
from ehc.wire.messages import (
    Answers,
    Ask,
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
    ToWorker,
    Transition,
    Transitions,
    Upsert,
    Witnesses,
)
from ehc.worker.engine import Engine
from ehc.worker.limits import raise_fd_limit

log = logging.getLogger("ehc.worker")

_PAGE = os.sysconf("SC_PAGE_SIZE")
_SUSPECTS_EVERY = 0.05
NICENESS = 5
"""Workers yield the CPU to their coordinator: when probing saturates it, the Lease renewals, the watch
and the writes must still run on time (a starved coordinator loses the Lease and protects nothing)."""


class _Rss:
    """Resident set size from /proc/self/statm, kept open: reading it must not need a new descriptor
    at the very moment the worker has run out of them."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0


class Worker(asyncio.Protocol):
    """Reads commands from the coordinator, drives an Engine, batches what it has to say."""

    def __init__(self, loop: asyncio.AbstractEventLoop, out: asyncio.WriteTransport) -> None:
        self._loop = loop
        self._out = out
        self._encoder = FrameEncoder()
        self._decoder = FrameDecoder(ToWorker)
        self._engine: Engine | None = None
        self._init: Init | None = None
        self._pending: list[Transition] = []
        self._pending_nodes: list[NodeVerdict] = []
        self._pending_doubts: list[str] = []
        self._stats_timer: asyncio.TimerHandle | None = None
        self._suspects_timer: asyncio.TimerHandle | None = None
        self._suspects_sent = 0
        self._window_start = time.monotonic()
        self._rss = _Rss()
        self.finished = loop.create_future()

    # ---- commands -----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except FrameError as exc:
            log.error("malformed command frame from the coordinator: %s", exc)
            self.stop(3)
            return
        for msg in messages:
            self._handle(msg)

    def eof_received(self) -> None:
        self.stop(0)  # the coordinator is gone or asked us to go

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop(0)

    def _handle(self, msg: ToWorker) -> None:
        if isinstance(msg, Init):
            self._start(msg)
            return
        engine = self._engine
        if engine is None:
            log.error("command %s before init; exiting", type(msg).__name__)
            self.stop(3)
        elif isinstance(msg, Upsert):
            for target in msg.targets:
                try:
                    engine.upsert(target)
                except ValueError as exc:
                    log.error("target %s skipped: invalid address %r: %s", target.key, target.ip, exc)
        elif isinstance(msg, Remove):
            for key in msg.keys:
                engine.remove(key)
        elif isinstance(msg, Witnesses):
            for node, ip in msg.nodes.items():
                try:
                    engine.witness(node, ip)
                except ValueError as exc:
                    log.error("witness of node %s skipped: invalid address %r: %s", node, ip, exc)
        elif isinstance(msg, Ask):
            engine.ask(msg.keys, msg.wait, partial(self._answered, msg.id))
        elif isinstance(msg, Inspect):
            nodes, suspects = engine.inspect(msg.limit)
            self._send(Inspection(id=msg.id, nodes=nodes, suspects=suspects))
        elif isinstance(msg, Stop):
            self.stop(0)

    def _start(self, init: Init) -> None:
        self._init = init
        self._engine = Engine(
            self._loop,
            init.settings,
            self._queue_transition,
            on_node=self._queue_node,
            on_doubt=self._queue_doubt,
        )
        said = self._engine.start()
        log.info("worker %d (pid %d) started; %s", init.worker, os.getpid(), said)
        self._send(Hello(worker=init.worker, pid=os.getpid(), probers=said))
        self._stats_timer = self._loop.call_later(init.stats_interval, self._report)
        self._suspects_timer = self._loop.call_later(_SUSPECTS_EVERY, self._report_suspects)

    # ---- output -------------------------------------------------------------------------------

    def _send(self, msg: Hello | Transitions | Answers | Inspection | Suspects | Stats) -> None:
        if not self._out.is_closing():
            self._out.write(self._encoder.encode(msg))

    def _queue_transition(self, transition: Transition) -> None:
        if not self._pending and not self._pending_doubts:  # one frame per loop iteration
            self._loop.call_soon(self._flush)
        self._pending.append(transition)

    def _queue_doubt(self, key: str) -> None:
        if not self._pending and not self._pending_doubts:
            self._loop.call_soon(self._flush)
        self._pending_doubts.append(key)

    def _answered(self, question: int, opinions: dict[str, Opinion]) -> None:
        self._send(Answers(id=question, opinions=opinions))

    def _queue_node(self, verdict: NodeVerdict) -> None:
        """A node verdict rides in the frame of the transitions that follow it (the engine flips at
        least one target with every verdict)."""
        self._pending_nodes.append(verdict)

    def _flush(self) -> None:
        items, self._pending = self._pending, []
        nodes, self._pending_nodes = self._pending_nodes, []
        doubts, self._pending_doubts = self._pending_doubts, []
        if items or doubts:
            suspects = self._engine.suspects if self._engine is not None else -1
            self._suspects_sent = suspects
            self._send(Transitions(items=items, suspects=suspects, nodes=nodes, doubts=doubts))

    def _report_suspects(self) -> None:
        engine, init = self._engine, self._init
        assert engine is not None and init is not None
        self._suspects_timer = self._loop.call_later(_SUSPECTS_EVERY, self._report_suspects)
        if engine.suspects != self._suspects_sent:
            self._flush()  # transitions first: a confirmed target leaves the suspects in the same order
            self._suspects_sent = engine.suspects
            self._send(Suspects(worker=init.worker, count=engine.suspects))

    def _report(self) -> None:
        engine, init = self._engine, self._init
        assert engine is not None and init is not None
        self._stats_timer = self._loop.call_later(init.stats_interval, self._report)
        self._send(self._stats(engine, init.worker))

    def _stats(self, engine: Engine, worker: int) -> Stats:
        now = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lag = engine.lag
        witnesses, unheard = engine.witnesses
        kinds, health = engine.census()
        stats = Stats(
            worker=worker,
            pid=os.getpid(),
            targets=kinds,
            health=health,
            probes=dict(engine.probes),
            failures=dict(engine.failures),
            in_flight=engine.in_flight,
            local_errors=engine.local_errors,
            skipped_probes=engine.skipped_probes,
            transitions=engine.transitions,
            looks=engine.looks,
            witnesses=witnesses,
            witnesses_unheard=unheard,
            latency_buckets=engine.latency.cumulative(),
            latency_sum=engine.latency.sum,
            window_seconds=now - self._window_start,
            window_probes=lag.count,
            lag_p50=lag.quantile(0.5),
            lag_p99=lag.quantile(0.99),
            lag_max=lag.max,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            rss_bytes=self._rss(),
        )
        lag.reset()
        self._window_start = now
        return stats

    def stop(self, code: int) -> None:
        if self.finished.done():
            return
        self._flush()
        if self._engine is not None:
            self._engine.close()
        for timer in (self._stats_timer, self._suspects_timer):
            if timer is not None:
                timer.cancel()
        self.finished.set_result(code)


async def _serve(out_fd: int) -> int:
    loop = asyncio.get_running_loop()
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(out_fd, "wb", buffering=0))
    worker = Worker(loop, out)  # type: ignore[arg-type]
    await loop.connect_read_pipe(lambda: worker, os.fdopen(0, "rb", buffering=0))
    loop.add_signal_handler(signal.SIGTERM, worker.stop, 0)
    code = await worker.finished
    out.close()  # flushes what is buffered before the pipe closes
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ehc.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    parser.add_argument("--log-format", choices=FORMATS, default="text")
    args = parser.parse_args(argv)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frame stream
    # Ctrl-C in a terminal reaches the whole process group; the coordinator decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(args.log_level, args.log_format, role="worker[%(process)d]")
    raise_fd_limit()
    os.nice(NICENESS)
    return uvloop.run(_serve(out_fd))


if __name__ == "__main__":
    sys.exit(main())
