"""The report's figure: detection-latency CDFs per scenario, ehc against per-pod (ehc with
``--node-evidence 0``) and the baseline, with the node controller's grace period as the line to beat;
and how CPU grows with the fleet."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from loadtest.report import GRACE_PERIOD

LABELS = {
    "power_off_1_node": "1 node off",
    "power_off_10pct_nodes": "10% of nodes off",
    "loss_2pct": "1 node off under 2% loss",
    "loss_5pct": "1 node off under 5% loss",
    "leader_failover": "1 node off + leader kill -9",
    "soak": "soak: a node off each minute, under faults",
}
STYLE = {"ehc": "-", "per-pod": "-.", "baseline": "--"}


def plot(report: dict[str, Any], path: str) -> None:
    sc = report["scenarios"]
    scale = sc.get("scale") or {}
    fig, axes = plt.subplots(1, 2 if scale else 1, figsize=(13 if scale else 7.5, 5), squeeze=False)
    ax = axes[0][0]
    for i, (name, label) in enumerate(LABELS.items()):
        for checker, style in STYLE.items():
            samples = ((sc.get(name) or {}).get(checker) or {}).get("samples") or []
            if not samples:
                continue
            ys = [(k + 1) / len(samples) for k in range(len(samples))]
            ax.step(sorted(samples), ys, style, where="post", color=f"C{i}", label=f"{checker}: {label}")
    ax.axvline(GRACE_PERIOD, color="black", linestyle=":", label="Kubernetes alone (40 s grace period)")
    ax.set_xscale("log")
    ticks = [
        t for t in (0.5, 1, 2, 3, 5, 10, 20, 40, 100, 200, 400) if t <= max(GRACE_PERIOD, _longest(sc)) * 1.5
    ]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("seconds from the fault to the pod written NotReady")
    ax.set_ylabel("fraction of the failed pods")
    ax.set_title("Detection latency (CDF)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if scale:
        ax = axes[0][1]
        points = scale.get("ehc") or []
        for j, w in enumerate(sorted({p["workers"] for p in points})):
            pts = sorted((p for p in points if p["workers"] == w), key=lambda p: p["targets"])
            ax.plot([p["targets"] for p in pts], [p["cpu_percent"]["coordinator"] + p["cpu_percent"]["workers"] for p in pts],
                    "o-", color=f"C{j}", label=f"ehc, {w} worker(s)")  # fmt: skip
        base = sorted(scale.get("baseline") or [], key=lambda p: p["targets"])
        if base:
            ax.plot([p["targets"] for p in base], [p["cpu_percent"]["coordinator"] for p in base], "s--",
                    color="grey", label="baseline")  # fmt: skip
        ax.set_xlabel("targets (opted-in pods)")
        ax.set_ylabel("CPU % (all processes; 100 = one core)")
        ax.set_title("CPU at a 1 s interval as the fleet grows")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ran = {c for entry in sc.values() for c in STYLE if c in (entry or {})}
    versus = [w for c, w in (("per-pod", "per-pod (--node-evidence 0)"), ("baseline", "the reference design"))
              if c in ran] or ["the reference design"]  # fmt: skip
    fig.suptitle(f"ehc ({report['profile']}, {report['workers']} worker(s)) vs {' and '.join(versus)},"
                 f"{chr(10) if len(versus) > 1 else ' '}{report['machine']['cpus']} CPUs")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _longest(sc: dict[str, Any]) -> float:
    return max(
        (max(((sc.get(n) or {}).get(c) or {}).get("samples") or [0]) for n in LABELS for c in STYLE),
        default=0.0,
    )
