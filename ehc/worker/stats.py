"""Cheap running figures for a worker: schedule-lag quantiles and the probe-latency histogram."""

from __future__ import annotations

import bisect
import math

from ehc.wire.messages import LATENCY_BUCKETS


class LagWindow:
    """Schedule lag samples in log-spaced buckets (±5 %), reset every stats window.

    Recording is a ``log`` and an index per wheel slot; quantiles are read once per window.
    """

    __slots__ = ("_buckets", "count", "max")

    _FLOOR = 1e-5  # 10 µs: anything below is "on time"
    _STEP = math.log(1.1)
    _SIZE = 160  # up to about 10 µs × 1.1**160 ≈ 40 min

    def __init__(self) -> None:
        self._buckets = [0] * (self._SIZE + 1)
        self.count = 0
        self.max = 0.0

    def add(self, lag: float, weight: int = 1) -> None:
        """Record ``weight`` probes that started ``lag`` seconds after their slot."""
        self.count += weight
        self.max = max(self.max, lag)
        if lag <= self._FLOOR:
            self._buckets[0] += weight
        else:
            self._buckets[min(self._SIZE, 1 + int(math.log(lag / self._FLOOR) / self._STEP))] += weight

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile (0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self._buckets):
            seen += n
            if seen >= rank and n:
                return 0.0 if i == 0 else min(self.max, self._FLOOR * math.exp(i * self._STEP))
        return self.max

    def reset(self) -> None:
        self._buckets = [0] * (self._SIZE + 1)
        self.count = 0
        self.max = 0.0


class LatencyHistogram:
    """Cumulative probe-latency histogram with Prometheus-style bounds (LATENCY_BUCKETS, then +Inf)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out
