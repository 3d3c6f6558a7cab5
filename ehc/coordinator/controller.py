"""``ehc run``: the coordinator.  Data flows one way:

    watch pods → targets → WorkerPool (probes) → transitions → Decider → Patcher → API server

Every replica watches (so a standby is warm and ready), but only the Lease holder runs workers and
writes: leading starts the pool from the pods' current conditions; losing the lease (or SIGTERM)
stops the pool and holds every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kubernetes_asyncio.client import ApiClient

from ehc.coordinator.decider import REASON_HEALTHY, REASON_UNHEALTHY, Decider
from ehc.coordinator.pool import WorkerPool
from ehc.coordinator.settings import RunSettings
from ehc.kube.events import EventRecorder
from ehc.kube.leader import LeaderElector
from ehc.kube.model import Pod
from ehc.kube.patcher import Decision, Patcher
from ehc.kube.watch import PodWatcher
from ehc.sources.pods import PodTarget, current_health, select
from ehc.wire.checks import describe
from ehc.wire.messages import Health, Transition

log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self, settings: RunSettings, api: ApiClient, *, worker_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self._api = api
        self._worker_env = worker_env
        self.targets: dict[str, PodTarget] = {}
        self._warned: dict[str, tuple[str, ...]] = {}  # problems (and opt-outs) already reported, per pod
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
        self.patcher = Patcher(
            api,
            qps=settings.patch_qps,
            burst=settings.patch_burst,
            concurrency=settings.patch_concurrency,
            can_write=self.elector.is_leader,
            on_done=self._patched,
        )
        self.events = EventRecorder(api, host=settings.identity)
        self.decider = Decider(
            submit=self.patcher.submit,
            cancel=self.patcher.cancel,
            on_failsafe=self._failsafe,
            failsafe_share=settings.failsafe_share,
            failsafe_min_targets=settings.failsafe_min_targets,
        )
        self.watcher = PodWatcher(api, on_page=self._page, on_snapshot=self._snapshot, on_event=self._event)
        self.on_patched: Callable[[Decision, str, float], None] | None = None
        self.transitions = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled.  On cancellation the lease is released so a standby takes over at once."""
        tasks = [
            asyncio.create_task(self.watcher.run(), name="watch"),
            asyncio.create_task(self.patcher.run(), name="patch"),
            asyncio.create_task(self.events.run(), name="events"),
        ]
        await self.watcher.wait_synced()
        tasks.append(asyncio.create_task(self.elector.run(), name="elect"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a crashed part stops ehc rather than limp on
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.elector.release(), self.settings.renew_deadline)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.pool is not None:
                await self.pool.close()

    @property
    def ready(self) -> bool:
        """Watch synced and, when leading, every worker up.  A standby is ready too."""
        if not self.watcher.synced:
            return False
        return self.pool is None or len(self.pool.pids()) == self.pool.size

    async def _lead(self) -> None:
        log.info(
            "leading as %s: starting %d worker(s) for %d targets",
            self.settings.identity,
            self.settings.workers,
            len(self.targets),
        )
        pool = WorkerPool(
            self.settings.workers,
            self.settings.probe,
            on_transition=self._transition,
            on_suspects=self.decider.suspects,
            env=self._worker_env,
            log_level=self.settings.log_level,
            log_format=self.settings.log_format,
        )
        try:
            await pool.start()
            self.pool = pool
            pool.upsert(
                t.probe_target(current_health(self.decider.observed(k), t.mode))
                for k, t in self.targets.items()
            )
            self.patcher.wake()
            await asyncio.Event().wait()  # until the lease is lost (this task is cancelled)
        finally:
            self.pool = None
            await pool.close()

    def _follow(self) -> Awaitable[None] | None:
        log.warning("not leading: workers stopped, writes held")
        return None

    # ---- watch → targets ------------------------------------------------------------------------

    def _page(self, pods: list[Pod]) -> None:
        for pod in pods:
            self._update(pod)

    def _snapshot(self, seen: set[str]) -> None:
        for key in list(self.targets.keys() - seen):
            self._drop(key)
        for key in list(self._warned.keys() - seen):
            del self._warned[key]

    def _event(self, kind: str, pod: Pod) -> None:
        if kind == "DELETED":
            self._drop(pod.key)
            self._warned.pop(pod.key, None)
        else:
            self._update(pod)

    def _update(self, pod: Pod) -> None:
        sel = select(pod)
        said = (*sel.problems, sel.skipped) if sel.skipped.startswith("annotation") else sel.problems
        if said and self._warned.get(pod.key) != said:
            self._warned[pod.key] = said
            if sel.skipped.startswith("annotation") and not sel.problems:
                log.info("pod %s opted out: %s", pod.key, sel.skipped)
            for problem in sel.problems:
                log.warning("pod %s: %s", pod.key, problem)
                self.events.emit(
                    namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid,
                    type_="Warning", reason="EndpointCheckMisconfigured", message=problem,
                )  # fmt: skip
        target = sel.target
        if target is None:
            self._drop(pod.key)
            return
        key = target.key  # one string for the key everywhere (dicts here, in the decider and the pool)
        old = self.targets.get(key)
        self.targets[key] = target
        self.decider.observe(target, pod.status.conditions)
        if self.pool is not None and (old is None or old.ip != target.ip or old.checks != target.checks):
            self.pool.upsert([target.probe_target(current_health(self.decider.observed(key), target.mode))])

    def _drop(self, key: str) -> None:
        if self.targets.pop(key, None) is not None:
            if self.pool is not None:
                self.pool.remove([key])
            self.decider.forget(key)

    # ---- workers → decisions --------------------------------------------------------------------

    def _transition(self, worker: int, tr: Transition) -> None:
        target = self.targets.get(tr.key)
        if target is None:
            return
        self.transitions += 1
        log.info(
            "%s %s: %s %s after %d attempt(s)%s (node %s, %s mode, worker %d)",
            tr.key, "UNHEALTHY" if tr.health == Health.UNHEALTHY else "healthy", describe(tr.check, target.ip),
            "failed" if tr.health == Health.UNHEALTHY else "answered", tr.attempts,
            f": {tr.detail}" if tr.detail else f" in {tr.latency * 1000:.1f}ms", target.node, target.mode.value, worker,
            extra={"pod": tr.key, "node": target.node, "ip": target.ip, "health": tr.health.name.lower()},
        )  # fmt: skip
        self.decider.transition(tr)

    def _patched(self, decision: Decision, outcome: str, seconds: float) -> None:
        if outcome == "ok":
            first = decision.conditions[0]
            unhealthy = first.reason == REASON_UNHEALTHY
            self.events.emit(
                namespace=decision.namespace, name=decision.name, uid=decision.uid,
                type_="Warning" if unhealthy else "Normal", reason=first.reason or REASON_HEALTHY,
                message=first.message or "",
            )  # fmt: skip
        if self.on_patched is not None:
            self.on_patched(decision, outcome, seconds)

    def _failsafe(self, engaged: bool, dark: int, total: int) -> None:
        # One Event on ehc's own pod, not one per target: a fail-safe is exactly when a storm would follow.
        self.events.emit(
            namespace=self.settings.namespace, name=self.settings.identity, uid="",
            type_="Warning" if engaged else "Normal",
            reason="FailSafeEngaged" if engaged else "FailSafeReleased",
            message=f"{dark} of {total} targets unhealthy or suspect; ejections "
            + ("held until the share falls back" if engaged else "resumed"),
        )  # fmt: skip
