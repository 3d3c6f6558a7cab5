"""The fail-safe's rules, checked on generated sequences of worker frames (Hypothesis shrinks any
sequence that breaks one to the shortest that does).

Two workers each own half of the targets and report as the real ones do: a frame carries the
transitions since the last one and the worker's count of suspects at that same moment.  After every
frame the decider must agree with a plain model of the rules:

- the fail-safe is engaged exactly when more than the share of a big enough fleet is dark (unhealthy
  or suspect);
- it changes at most once per frame, and only when the share crossed the threshold;
- no ejection is given in a frame after which the fail-safe is engaged (not even for an instant);
- every target's last verdict says what its health and the fail-safe call for.
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ehc.coordinator.decider import Decider
from ehc.wire.checks import Tcp
from ehc.wire.messages import Health, Transition

SHARE, MIN_TARGETS, WORKERS = 0.5, 10, 2
OPS = ("doubt", "clear", "confirm", "recover")

frames = st.lists(
    st.tuples(
        st.integers(0, WORKERS - 1),  # the worker that reports
        st.lists(st.tuples(st.integers(0, 11), st.sampled_from(OPS)), max_size=12),  # its targets' news
    ),
    min_size=1,
    max_size=40,
)


class Worker:
    """What one worker believes of its targets: their health, and which of those up are in doubt."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.doubted: set[str] = set()

    def see(self, key: str, op: str) -> Transition | None:
        up = key not in self.down
        if op == "doubt" and up:
            self.doubted.add(key)
        elif op == "clear":
            self.doubted.discard(key)
        elif op == "confirm" and up:
            self.doubted.discard(key)
            self.down.add(key)
            return Transition(key, Health.UNHEALTHY, Tcp(80), "timeout", 0.5, 4, time.time())
        elif op == "recover" and not up:
            self.down.discard(key)
            return Transition(key, Health.HEALTHY, Tcp(80), "", 0.0, 2, time.time())
        return None


@settings(max_examples=300, deadline=None, derandomize=True, database=None)  # the same sequences every run
@given(n=st.integers(MIN_TARGETS, 24), frames=frames)
def test_the_failsafe_follows_its_rules_frame_by_frame(
    n: int, frames: list[tuple[int, list[tuple[int, str]]]]
) -> None:
    verdicts: list[tuple[str, Health]] = []
    edges: list[bool] = []
    decider = Decider(
        on_verdict=lambda key, verdict, tr: verdicts.append((key, verdict)),
        on_failsafe=lambda engaged, dark, total: edges.append(engaged),
        failsafe_share=SHARE,
        failsafe_min_targets=MIN_TARGETS,
    )
    keys = [f"ns/p{i}" for i in range(n)]
    for key in keys:
        decider.track(key)
    workers = [Worker() for _ in range(WORKERS)]
    last: dict[str, Health] = {}
    engaged = False
    for index, seen in frames:
        worker = workers[index]
        mine = [(keys[i], op) for slot, op in seen if (i := slot * WORKERS + index) < n]  # its own
        transitions = [tr for key, op in mine if (tr := worker.see(key, op)) is not None]
        verdicts.clear()
        edges.clear()

        decider.report(index, transitions, len(worker.doubted))

        dark = sum(len(w.down) + len(w.doubted) for w in workers)
        should = n >= MIN_TARGETS and dark > SHARE * n
        assert decider.failsafe == should, f"{dark} of {n} dark"
        assert edges == ([should] if should != engaged else [])  # one edge at most, and a real one
        engaged = should
        if engaged:
            assert Health.UNHEALTHY not in {v for _, v in verdicts}, "an ejection while the fail-safe holds"
        last.update(verdicts)
        down = set().union(*(w.down for w in workers))
        for key, verdict in last.items():
            want = (Health.UNKNOWN if engaged else Health.UNHEALTHY) if key in down else Health.HEALTHY
            assert verdict == want, key
