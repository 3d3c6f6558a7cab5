"""``ehc run``: the coordinator.  Data flows one way:

    watch → source (targets) → WorkerPool (probes) → transitions → Decider (verdicts) → source → writes

Every replica watches, but only the Lease holder writes.  With a *hot standby* (``EHC_HOT_STANDBY``) every
replica also probes from the start, so the one that takes the lease writes at once what its own
probes already know; without it, only the leader runs workers, started from what the objects show.
Replicas find each other by their member Leases (``Membership``), and before ejecting the leader
asks its live peers (``SecondOpinion``): a peer that saw the target answer vetoes the ejection.
Leadership has terms: losing the lease (or SIGTERM) drops every queued write, so nothing wanted in
one term is sent in a later one unless it is wanted again then.  A cold replica also stops its
workers and forgets every verdict; a hot one keeps probing, and its verdicts stay those of its own
probes.  The controller knows no kind of object: it wires sources to
the pool and the decider, and routes what comes back to the source that owns the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from ehc.coordinator.decider import Decider
from ehc.coordinator.metrics import DETECTION_BUCKETS, Histogram
from ehc.coordinator.opinions import Ruling, SecondOpinion
from ehc.coordinator.peers import PeerServer
from ehc.coordinator.pool import WorkerPool
from ehc.coordinator.settings import RunSettings, advertised_peer_address
from ehc.coordinator.status import StatusBook
from ehc.kube.events import EventRecorder
from ehc.kube.leader import LeaderElector
from ehc.kube.members import Membership
from ehc.kube.watch import ListWatcher, PodWatcher
from ehc.kube.writes import Write, WriteQueue
from ehc.sources import Source
from ehc.sources.endpoints.kinds import KINDS, AddressKind
from ehc.sources.endpoints.source import AddressSource
from ehc.sources.nodes import NODES, NodeWitnesses
from ehc.sources.pods import PodSource
from ehc.wire.messages import Health, NodeVerdict, Opinion, Target, Transition

log = logging.getLogger(__name__)

RESYNC_EVERY = 10.0
"""How often the leader compares what every settled object should show with what it shows (level
triggering's safety net: a write lost anywhere is found and made again)."""


class Controller:
    def __init__(
        self, settings: RunSettings, api: ApiClient, *, worker_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self._worker_env = worker_env
        self.pool: WorkerPool | None = None
        self.elector = LeaderElector(
            api,
            namespace=settings.namespace,
            name=settings.lease_name,
            identity=settings.identity,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
            on_started_leading=self._lead,
            on_stopped_leading=self._follow,
        )
        self.writes = WriteQueue(
            api,
            qps=settings.patch_qps,
            burst=settings.patch_burst,
            concurrency=settings.patch_concurrency,
            can_write=self.elector.is_leader,
            on_done=self._written,
        )
        self.events = EventRecorder(api, host=settings.identity)
        address = advertised_peer_address(settings)
        self.membership: Membership | None = None
        if address:
            self.membership = Membership(
                api, namespace=settings.namespace, group=settings.lease_name, identity=settings.identity,
                address=address, lease_duration=settings.lease_duration,
                renew_every=max(settings.retry_period, settings.lease_duration / 4),
            )  # fmt: skip
        self.opinions: SecondOpinion | None = None
        if settings.second_opinion and self.membership is not None:
            self.opinions = SecondOpinion(
                peers=self.membership.peers, leading=self.elector.is_leader, node_of=self._node_of,
                on_settled=self._reconsider, on_veto=self._vetoed,
            )  # fmt: skip
        self.decider = Decider(
            on_verdict=self._verdict,
            on_failsafe=self._failsafe,
            failsafe_share=settings.failsafe_share,
            failsafe_min_targets=settings.failsafe_min_targets,
            may_eject=self._may_eject,
        )
        self.pods = PodSource(
            self, submit=self.writes.submit, cancel=self.writes.cancel, settled=self.writes.settled,
            events=self.events, default_probe=settings.default_probe,
        )  # fmt: skip
        self.watchers: list[ListWatcher[Any]] = [
            PodWatcher(api, on_page=self.pods.page, on_snapshot=self.pods.snapshot, on_event=self.pods.event)
        ]
        self.sources: tuple[Source, ...] = (self.pods,)
        if settings.selectorless:
            for kind in KINDS:
                self._add_addresses(api, kind, settings.selectorless_namespaces)
        self.witnesses = NodeWitnesses(self._witnesses_changed)
        if settings.node_witness != "off" and settings.node_evidence:
            w = self.witnesses
            self.watchers.append(
                ListWatcher(api, NODES, on_page=w.page, on_snapshot=w.snapshot, on_event=w.event)
            )
        self.peer_server: PeerServer | None = None  # set by ``ehc run`` when it serves peers
        self.on_written: Callable[[Write, str, float], None] | None = None
        self.book = StatusBook()  # what the status page shows that nothing else keeps
        self._shutting_down = False
        self.detection = Histogram(DETECTION_BUCKETS)
        self.transitions = 0
        self.node_verdicts = 0
        self.resync_writes = 0

    def _add_addresses(self, api: ApiClient, kind: AddressKind[Any], namespaces: tuple[str, ...]) -> None:
        """A source for one kind of selectorless Service object, watched per namespace (or everywhere)."""
        source: AddressSource[Any] = AddressSource(
            kind, self, submit=self.writes.submit, cancel=self.writes.cancel, settled=self.writes.settled,
            events=self.events,
        )  # fmt: skip
        self.sources += (source,)
        for namespace in namespaces or (None,):
            watcher = ListWatcher(
                api,
                kind.resource(namespace),
                on_page=source.page,
                on_snapshot=source.snapshot,
                on_event=source.event,
            )
            self.watchers.append(watcher)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled.  On cancellation the lease is released so a standby takes over at once."""
        tasks = [
            *(asyncio.create_task(w.run(), name=f"watch {w.resource.plural}") for w in self.watchers),
            asyncio.create_task(self.writes.run(), name="writes"),
            asyncio.create_task(self.events.run(), name="events"),
        ]
        if self.membership is not None:
            tasks.append(asyncio.create_task(self.membership.run(), name="membership"))
        if self.opinions is not None:
            tasks.append(asyncio.create_task(self.opinions.reask(), name="second opinion"))
        # Lead once the pods are in: a watch of another source that cannot sync (no RBAC for it, say)
        # keeps /readyz false and says why, but must not leave the pods unprotected.
        await self.watchers[0].wait_synced()
        if self.settings.hot_standby:
            try:
                self.pool = await self._start_pool()
            except Exception as exc:  # leading starts it again, and gives the lease up if it cannot
                log.error(
                    "hot standby: workers could not start (%s); they start when this replica leads", exc
                )
        tasks.append(asyncio.create_task(self.elector.run(), name="elect"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a crashed part stops ehc rather than limp on
        finally:
            self._shutting_down = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.elector.release(), self.settings.renew_deadline)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.membership is not None:
                await self.membership.leave()
            if self.opinions is not None:
                await self.opinions.close()
            if self.pool is not None:
                await self.pool.close()

    @property
    def ready(self) -> bool:
        """Every watch synced and, when leading or standing by hot, every worker up and probing."""
        if not all(w.synced for w in self.watchers):
            return False
        if not self.elector.is_leader() and not self.settings.hot_standby:
            return True
        return self.pool is not None and self.pool.healthy()

    def targets_by_kind(self) -> Counter[str]:
        return sum((s.kinds() for s in self.sources), Counter())

    async def _start_pool(self) -> WorkerPool:
        """Workers started and given every target, each from the health its object shows."""
        pool = WorkerPool(
            self.settings.workers,
            self.settings.probe,
            on_transitions=self._transitions,
            on_node=self._node_verdict,
            on_doubts=self._doubts,
            env=self._worker_env,
            log_level=self.settings.log_level,
            log_format=self.settings.log_format,
        )
        try:
            await pool.start()
        except BaseException:
            await pool.close()
            raise
        pool.witness(self.witnesses.addresses())
        pool.upsert(itertools.chain.from_iterable(s.seed() for s in self.sources))
        return pool

    async def peer_opinions(self, keys: list[str], wait: float) -> dict[str, Opinion]:
        """A peer's question, answered from this replica's own probes (nothing probed: all unknown)."""
        if self.pool is None:
            return dict.fromkeys(keys, Opinion.UNKNOWN)
        return await self.pool.ask(keys, wait)

    async def _lead(self) -> None:
        self.book.term_started = time.time()
        targets = self.targets_by_kind().total()
        if self.membership is not None and self.elector.previous_holder:
            self.membership.forget(self.elector.previous_holder)  # the leader whose lease expired
        if self.opinions is not None:
            self.opinions.reset()
            self.decider.reconsider(self.decider.unhealthy)  # held while standing by: ruled on now
        if self.pool is not None:
            # Standing by hot: what its own probes want written goes now (queued while standing by, or
            # wanted again after an earlier term's queue was dropped).
            wanted = sum(s.resync() for s in self.sources) + self.writes.queue_depth
            log.info(
                "leading as %s, hot: %d targets probed already, %d write(s) go now",
                self.settings.identity, targets, wanted,
            )  # fmt: skip
        else:
            log.info(
                "leading as %s: starting %d worker(s) for %d targets",
                self.settings.identity, self.settings.workers, targets,
            )  # fmt: skip
            self.pool = await self._start_pool()
        try:
            self.writes.wake()
            while True:  # until the lease is lost (this task is cancelled)
                await asyncio.sleep(RESYNC_EVERY)
                self.resync_writes += sum(s.resync() for s in self.sources)
        finally:
            if not self.settings.hot_standby:
                await self._stop_pool()

    async def _stop_pool(self) -> None:
        pool, self.pool = self.pool, None
        self._forget()
        if pool is not None:
            await pool.close()

    def _forget(self) -> None:
        """Every verdict and suspect count goes: what a later term writes comes from what it sees then."""
        self.decider.reset()
        for source in self.sources:
            source.reset()

    def _follow(self) -> Awaitable[None] | None:
        self.book.term_started = None
        dropped = self.writes.clear()
        if self.opinions is not None:
            self.opinions.reset()
        if not self.settings.hot_standby:
            self._forget()
        if self._shutting_down:
            now = "shutting down"
        elif self.settings.hot_standby:
            now = "standing by hot (still probing)"
        else:
            now = "workers stopped"
        log.warning(
            "not leading: %s, %d queued write(s) dropped; a later term acts only on what it sees then",
            now,
            dropped,
        )
        return None

    # ---- sources → targets (the TargetSink the sources write to) --------------------------------

    def upsert(self, target: Target) -> None:
        self.decider.track(target.key)
        if self.pool is not None:
            self.pool.upsert([target])

    def remove(self, key: str) -> None:
        if self.pool is not None:
            self.pool.remove([key])
        if self.opinions is not None:
            self.opinions.clear(key)
        self.decider.forget(key)

    def _witnesses_changed(self, changes: dict[str, str]) -> None:
        if self.pool is not None:
            self.pool.witness(changes)

    # ---- workers → decisions → sources ----------------------------------------------------------

    def source_of(self, key: str) -> Source | None:
        return next((s for s in self.sources if s.owns(key)), None)

    def _transitions(self, worker: int, transitions: list[Transition], suspects: int) -> None:
        known = []
        for tr in transitions:
            source = self.source_of(tr.key)
            if source is None:
                continue
            known.append(tr)
            self.transitions += 1
            source.transition(tr, worker)
            ip = self.pool.ip_of(tr.key) if self.pool is not None else ""
            self.book.transition(worker, tr, ip)
            if tr.health == Health.UNHEALTHY:
                self.detection.observe(tr.took)
            if tr.health != Health.UNHEALTHY and self.opinions is not None:
                self.opinions.clear(tr.key)
        self.decider.report(worker, known, suspects)

    def _doubts(self, keys: list[str]) -> None:
        if self.opinions is not None:
            self.opinions.doubt(keys)

    def _reconsider(self, keys: list[str]) -> None:
        self.decider.reconsider(keys)

    def _peers(self) -> dict[str, str]:
        return self.membership.peers() if self.membership is not None else {}

    def _may_eject(self, key: str) -> bool:
        return self.opinions is None or self.opinions.ruling(key) == Ruling.GO

    def _node_of(self, key: str) -> str:
        return self.pool.node_of(key) if self.pool is not None else ""

    def _vetoed(self, key: str, node: str, peers: list[str], first: bool) -> None:
        """A peer sees a target alive that the leader would eject: held; said once per node."""
        if not first:
            return
        where = f"node {node}" if node != key else key
        said = (
            f"the leader ({self.settings.identity}) gets no answer from {key}, but {', '.join(peers)} "
            f"saw it answer just now: a suspected partition between the leader and {where}"
        )
        log.warning("%s; its ejections are held while a peer sees them alive", said, extra={"node": node})
        on_node = node != key
        self.events.emit(
            namespace="default" if on_node else self.settings.namespace,
            name=node if on_node else self.settings.identity, uid="", kind="Node" if on_node else "Pod",
            type_="Warning", reason="EjectionVetoed",
            message=f"{said}; ehc does not eject its targets while a peer sees them alive",
        )  # fmt: skip

    def _node_verdict(self, worker: int, verdict: NodeVerdict) -> None:
        """A whole node judged down: said once, here, rather than once per target (its targets'
        transitions follow, each naming the node)."""
        self.book.node(verdict)
        if not self.elector.is_leader():
            return  # a standby's own view: it writes nothing, and says nothing either
        self.node_verdicts += 1
        said = (
            f"node {verdict.node} judged down as a whole: {verdict.targets} of its targets silent, "
            f"{verdict.attempts} attempts unanswered, nothing heard from it for {verdict.silent_for * 1000:.0f} ms"
        )
        unless = " unless a peer sees them alive" if self.opinions is not None and self._peers() else ""
        log.warning(
            "%s; ejecting them together%s (worker %d)", said, unless, worker, extra={"node": verdict.node}
        )
        # Node Events live in the default namespace, as the kubelet's and the node controller's do.
        self.events.emit(
            namespace="default", name=verdict.node, uid="", kind="Node", type_="Warning",
            reason="NodeSilent", message=f"{said}; ehc takes them out of service{unless}",
        )  # fmt: skip

    def _verdict(self, key: str, verdict: Health, tr: Transition | None) -> None:
        source = self.source_of(key)
        if source is not None:
            source.verdict(key, verdict, tr)

    def _written(self, write: Write, outcome: str, seconds: float) -> None:
        self.book.written(write, outcome, seconds)
        source = self.source_of(write.key)
        if source is not None:
            source.written(write, outcome)
        if self.on_written is not None:
            self.on_written(write, outcome, seconds)

    def _failsafe(self, engaged: bool, dark: int, total: int) -> None:
        if not self.elector.is_leader():
            return  # the decider has logged it; Events are the leader's
        # One Event on ehc's own pod, not one per target: a fail-safe is exactly when a storm would follow.
        self.events.emit(
            namespace=self.settings.namespace, name=self.settings.identity, uid="",
            type_="Warning" if engaged else "Normal",
            reason="FailSafeEngaged" if engaged else "FailSafeReleased",
            message=f"{dark} of {total} targets unhealthy or suspect; ejections "
            + ("held until the share falls back" if engaged else "resumed"),
        )  # fmt: skip
