"""Verdicts and what they write: the decider (health, fail-safe) driving the pod source's condition
policy, fed as the watch would feed it.  Write only differences, debounce flaps, respect modes, fail safe."""

from __future__ import annotations

import time

import msgspec

from ehc.coordinator.decider import Decider
from ehc.kube.model import ANNOTATION, GATE, READY, Condition, Pod
from ehc.sources.pods import Mode, PodSource, PodTarget
from ehc.sources.pods.writes import StatusPatch
from ehc.wire.checks import Tcp
from ehc.wire.messages import Health, Target, Transition


class Events:
    def __init__(self) -> None:
        self.emitted: list[dict[str, str]] = []

    def emit(self, **event: str) -> None:
        self.emitted.append(event)


class Pipeline:
    """The decider and the pod source wired as the controller wires them (the test is the sink)."""

    def __init__(self, sink: Sink, **kw: object) -> None:
        self.decider = Decider(
            on_verdict=self._verdict,
            on_failsafe=lambda on, dark, total: sink.failsafe.append(on),
            **kw,  # type: ignore[arg-type]
        )
        self.source = PodSource(
            self,
            submit=sink.submitted.append,
            cancel=sink.cancelled.append,
            settled=lambda key: key not in sink.busy,
            events=Events(),  # type: ignore[arg-type]
        )

    def _verdict(self, key: str, verdict: Health, tr: Transition | None) -> None:
        self.source.verdict(key, verdict, tr)

    # the TargetSink the source writes to
    def upsert(self, target: Target) -> None:
        self.decider.track(target.key)

    def remove(self, key: str) -> None:
        self.decider.forget(key)

    # what the tests drive
    def observe(self, target: PodTarget, conditions: list[Condition]) -> None:
        """The watch shows the pod behind ``target`` with these conditions."""
        self.source.event("MODIFIED", _pod(target, conditions))

    def forget(self, key: str) -> None:
        namespace, name = key.split("/")
        self.source.event("DELETED", _gone(namespace, name))

    def transition(self, tr: Transition) -> None:
        self.decider.report(0, [tr])

    def suspects(self, worker: int, count: int) -> None:
        self.decider.report(worker, [], count)

    @property
    def failsafe(self) -> bool:
        return self.decider.failsafe

    @property
    def held(self) -> int:
        return self.decider.held


def _pod(t: PodTarget, conditions: list[Condition]) -> Pod:
    gate = t.mode is Mode.GATE
    return msgspec.convert(
        {
            "metadata": {"name": t.name, "namespace": t.namespace, "uid": t.uid,
                         "annotations": {} if gate else {ANNOTATION: "true"}},
            "spec": {"nodeName": t.node, "readinessGates": [{"conditionType": GATE}] if gate else [],
                     "containers": [{"name": "app", "readinessProbe": {"tcpSocket": {"port": p}}} for p in t.ports]},
            "status": {"phase": "Running", "podIP": t.ip, "conditions": [msgspec.to_builtins(c) for c in conditions]},
        },
        Pod,
    )  # fmt: skip


def _gone(namespace: str, name: str) -> Pod:
    return msgspec.convert({"metadata": {"name": name, "namespace": namespace}}, Pod)


class Sink:
    def __init__(self) -> None:
        self.submitted: list[StatusPatch] = []
        self.cancelled: list[str] = []
        self.failsafe: list[bool] = []
        self.busy: set[str] = set()  # keys the write queue still has queued, in flight or just landed

    def decider(self, **kw: object) -> Pipeline:
        return Pipeline(self, **kw)

    def written(self) -> list[tuple[str, dict[str, str]]]:
        return [(d.key, {c.type: c.status for c in d.conditions}) for d in self.submitted]


def target(i: int = 0, mode: Mode = Mode.GATE) -> PodTarget:
    return PodTarget(f"ns/p{i}", "ns", f"u{i}", "node-a", f"10.0.0.{i + 1}", (Tcp(8080),), mode)


def tr(i: int, health: Health) -> Transition:
    return Transition(
        f"ns/p{i}", health, Tcp(8080), "timeout" if health == Health.UNHEALTHY else "", 0.5, 4, time.time()
    )


def conds(**status: str) -> list[Condition]:
    names = {"ready": READY, "gate": GATE}
    return [Condition(type=names[k], status=v) for k, v in status.items()]


def test_gate_mode_writes_gate_and_ready_false_then_gate_true() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="True", gate="True"))
    d.transition(tr(0, Health.UNHEALTHY))
    assert sink.written() == [("ns/p0", {GATE: "False", READY: "False"})]
    c = sink.submitted[0].conditions[0]
    assert c.reason == "EndpointUnhealthy" and "timeout" in (c.message or "") and c.lastTransitionTime
    d.observe(target(), conds(ready="False", gate="False"))  # the watch echoes the write
    d.transition(tr(0, Health.HEALTHY))
    assert sink.written()[-1] == ("ns/p0", {GATE: "True"})


def test_new_gate_pod_gets_its_first_value() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="False"))
    d.transition(tr(0, Health.HEALTHY))
    assert sink.written() == [("ns/p0", {GATE: "True"})]


def test_annotation_mode_ejects_once_and_leaves_recovery_to_the_kubelet() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    t = target(mode=Mode.ANNOTATION)
    d.observe(t, conds(ready="True"))
    d.transition(tr(0, Health.UNHEALTHY))
    assert sink.written() == [("ns/p0", {READY: "False"})]
    d.observe(t, conds(ready="False"))
    d.observe(t, conds(ready="True"))  # the kubelet set it back: not ehc's fight
    d.transition(tr(0, Health.HEALTHY))
    assert len(sink.submitted) == 1


def test_annotation_mode_does_not_touch_a_pod_the_kubelet_holds_unready() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(mode=Mode.ANNOTATION), conds(ready="False"))
    d.transition(tr(0, Health.UNHEALTHY))
    assert sink.submitted == []


def test_nothing_written_when_already_true() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="True", gate="True"))
    d.transition(tr(0, Health.HEALTHY))
    assert sink.submitted == []


def test_flap_reverted_before_written_is_cancelled() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="True", gate="True"))
    d.transition(tr(0, Health.UNHEALTHY))
    d.transition(tr(0, Health.HEALTHY))  # before the watch showed any write
    assert len(sink.submitted) == 1 and sink.cancelled[-1] == "ns/p0"


def test_forgotten_pod_is_cancelled_and_later_transitions_ignored() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="True", gate="True"))
    d.forget("ns/p0")
    d.transition(tr(0, Health.UNHEALTHY))
    assert sink.submitted == [] and sink.cancelled[-1] == "ns/p0"


def test_failsafe_holds_ejections_when_most_targets_go_dark_and_releases_after() -> None:
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=10)
    for i in range(20):
        d.observe(target(i), conds(ready="True", gate="True"))
    d.suspects(0, 12)  # the workers see most of the fleet failing at once
    assert d.failsafe and sink.failsafe == [True]
    for i in range(20):
        d.transition(tr(i, Health.UNHEALTHY))
    assert sink.submitted == []  # nothing ejected
    for i in range(15):
        d.transition(tr(i, Health.HEALTHY))  # the network comes back...
    assert d.failsafe and sink.submitted == []
    d.suspects(0, 0)  # ...and the workers' episodes close
    assert not d.failsafe and sink.failsafe == [True, False]
    # the five still unhealthy are ejected once the fail-safe lets go
    assert sorted(k for k, _ in sink.written()) == sorted(f"ns/p{i}" for i in range(15, 20))


def test_a_suspect_confirmed_down_does_not_release_the_failsafe_for_an_instant() -> None:
    # 7 of 12 dark, all suspects; a worker's frame then confirms one down and counts 6 suspects.  The
    # share is 7 of 12 before and after: weighed half-way it would be 6 (released, ejecting) or 8.
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=10)
    for i in range(12):
        d.observe(target(i), conds(ready="True", gate="True"))
    d.suspects(0, 7)
    d.decider.report(0, [tr(0, Health.UNHEALTHY)], 6)
    assert d.failsafe and sink.failsafe == [True] and d.held == 1 and sink.submitted == []


def test_a_frame_that_darkens_most_of_the_fleet_ejects_none_of_it() -> None:
    # One frame brings 12 of 20 down at once: the fail-safe is weighed before any verdict is given.
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=10)
    for i in range(20):
        d.observe(target(i), conds(ready="True", gate="True"))
    d.decider.report(0, [tr(i, Health.UNHEALTHY) for i in range(12)], 0)
    assert d.failsafe and d.held == 12 and sink.submitted == []


def test_small_fleets_are_exempt_from_the_failsafe() -> None:
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=10)
    for i in range(3):
        d.observe(target(i), conds(ready="True", gate="True"))
    for i in range(3):
        d.transition(tr(i, Health.UNHEALTHY))
    assert not d.failsafe and len(sink.submitted) == 3


def test_annotation_ejection_held_by_the_failsafe_is_written_after_release() -> None:
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=4)
    for i in range(4):
        d.observe(target(i, Mode.ANNOTATION), conds(ready="True"))
    d.transition(tr(0, Health.UNHEALTHY))  # written at once: 1 of 4
    d.suspects(0, 2)  # 3 of 4 dark: engaged, the queued write is withdrawn
    assert d.failsafe and sink.cancelled[-1] == "ns/p0"
    d.suspects(0, 0)  # released: the still-unhealthy pod is ejected again
    assert not d.failsafe
    assert sink.written() == [("ns/p0", {READY: "False"})] * 2


def test_a_recovery_that_releases_the_failsafe_is_written_too() -> None:
    # Ten gate pods: p1 ejected; five more go dark (6 of 10: engaged); p1 answers again, which brings
    # the share to 5 of 10 and releases the fail-safe inside p1's own transition.
    sink = Sink()
    d = sink.decider(failsafe_share=0.5, failsafe_min_targets=10)
    for i in range(10):
        d.observe(target(i), conds(ready="True", gate="True"))
    d.transition(tr(1, Health.UNHEALTHY))
    assert sink.written() == [("ns/p1", {GATE: "False", READY: "False"})]
    d.observe(target(1), conds(ready="False", gate="False"))  # the watch echoes the ejection
    for i in range(2, 7):
        d.transition(tr(i, Health.UNHEALTHY))
    assert d.failsafe and d.held == 6
    d.transition(tr(1, Health.HEALTHY))
    assert not d.failsafe and d.held == 0
    last = dict(sink.written())  # the latest write per pod is what the write queue sends
    assert last.pop("ns/p1") == {GATE: "True"}  # p1 is back in service
    assert last == {f"ns/p{i}": {GATE: "False", READY: "False"} for i in range(2, 7)}


def test_resync_writes_again_what_was_lost_and_nothing_the_pod_shows() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    d.observe(target(), conds(ready="True", gate="True"))
    d.transition(tr(0, Health.UNHEALTHY))
    assert len(sink.submitted) == 1
    sink.busy.add("ns/p0")
    assert d.source.resync() == 0  # still queued, in flight or just landed: not yet
    sink.busy.clear()
    assert d.source.resync() == 1  # settled, and the pod still shows it in service: wanted again
    assert sink.written()[-1] == ("ns/p0", {GATE: "False", READY: "False"})
    d.observe(target(), conds(ready="False", gate="False"))
    assert d.source.resync() == 0 and len(sink.submitted) == 2


def test_annotation_mode_leaves_the_kubelet_its_recovery_when_the_spell_began_unready() -> None:
    # Found by the soak: the pod already showed Ready=False when its unhealthy spell began (the
    # kubelet's doing, or ehc's in an earlier term); when the kubelet sets Ready back before ehc saw
    # the pod recover, ehc must not write Ready=False over it.
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    t = target(mode=Mode.ANNOTATION)
    d.observe(t, conds(ready="False"))
    d.transition(tr(0, Health.UNHEALTHY))
    d.observe(t, conds(ready="True"))  # the kubelet's call
    assert sink.submitted == []


def test_a_new_term_does_not_eject_again_what_an_earlier_term_ejected() -> None:
    sink = Sink()
    d = sink.decider(failsafe_min_targets=100)
    t = target(mode=Mode.ANNOTATION)
    d.observe(t, conds(ready="True"))
    d.transition(tr(0, Health.UNHEALTHY))
    d.observe(t, conds(ready="False"))  # the watch echoes the ejection
    assert len(sink.submitted) == 1
    d.decider.reset()  # the lease was lost and won again: a new term
    d.source.reset()
    d.transition(tr(0, Health.UNHEALTHY))  # the new term's workers find it dark too
    d.observe(t, conds(ready="True"))  # the node is back; the kubelet restores Ready first
    assert len(sink.submitted) == 1
