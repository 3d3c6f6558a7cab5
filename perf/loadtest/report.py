"""Turning scenario runs into the report: medians and spread of repeated runs, ehc / baseline and
ehc / per-pod ratios, the goals with met or not, and the table printed at the end."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

Figures = dict[str, Any]

GRACE_PERIOD = 40.0  # the node controller's --node-monitor-grace-period default: the line to beat

# The checkers of the table's columns, as they are keyed in the report (a CheckerSpec's name).
CHECKERS = ("ehc", "per-pod", "baseline")
# Figures from a fault to a write taking the target out: compared as ehc / per-pod wherever both ran.
DETECTION = (
    "detection_seconds", "backend_detection_seconds", "service_slice_seconds", "silent_pod_seconds",
    "refusing_detection_seconds",
)  # fmt: skip

# (scenario, path to the figure): the figures compared as ehc / baseline.
RATIOS: tuple[tuple[str, str], ...] = (
    ("steady_state", "cpu_seconds_per_1000_probes.total"),
    ("steady_state", "rss_mb.coordinator"),
    ("power_off_1_node", "detection_seconds.p50"),
    ("power_off_1_node", "detection_seconds.max"),
    ("power_off_1_node", "writes_per_transition"),
    ("power_off_10pct_nodes", "detection_seconds.max"),
    ("leader_failover", "last_pod_written_seconds"),
)


def get(figures: Figures | None, path: str) -> Any:
    value: Any = figures
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def summarize(runs: list[Figures]) -> tuple[Figures, Figures]:
    """(medians, spread): numeric leaves become their median over the runs and [min, max] in
    ``spread``; ``samples`` lists are pooled; anything else is taken from the first run."""
    medians: Figures = {}
    spread: Figures = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, dict):
            m, s = summarize([v for v in values if isinstance(v, dict)])
            medians[key] = m
            if s:
                spread[key] = s
        elif key == "samples":
            medians[key] = sorted(x for v in values for x in v or [])
        elif isinstance(first, bool) or not isinstance(first, int | float):
            medians[key] = first
        else:
            nums = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
            if not nums:
                medians[key] = None
                continue
            med = statistics.median(nums)
            medians[key] = round(med, 4) if isinstance(med, float) else med
            if len(runs) > 1:
                spread[key] = [min(nums), max(nums)]
    return medians, spread


def detection_figures(scenarios: dict[str, Figures]) -> list[tuple[str, str]]:
    """(scenario, path) of every detection quantile, in every scenario: what ehc / per-pod compares."""
    return [(name, f"{fig}.{q}") for name in scenarios for fig in DETECTION for q in ("p50", "p99", "max")]


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(a / b, 4)
    return None


def ratios(
    scenarios: dict[str, Figures], other: str = "baseline", figures: Iterable[tuple[str, str]] = RATIOS
) -> dict[str, float | None]:
    """ehc's figure over ``other``'s, for each (scenario, path) of ``figures`` where both have it."""
    out: dict[str, float | None] = {}
    for name, path in figures:
        entry = scenarios.get(name) or {}
        r = ratio(get(entry.get("ehc"), path), get(entry.get(other), path))
        if r is not None:
            out[f"{name}.{path}"] = r
    return out


def goals(report: Figures) -> list[Figures]:
    """The issue's targets with ehc's defaults, each with its measured value and whether it is met."""
    sc = report["scenarios"]
    out: list[Figures] = []

    def add(goal: str, value: Any, met: bool | None) -> None:
        out.append({"goal": goal, "value": value, "met": met})

    power = get(sc.get("power_off_1_node"), "ehc.detection_seconds.max")
    if power is not None:
        add("node power-off: last pod NotReady <= 1 s (max)", power, power <= 1.0)
    tenth = get(sc.get("power_off_10pct_nodes"), "ehc.detection_seconds.max")
    if tenth is not None:
        add("10% of nodes off: last pod written <= 2 s (max)", tenth, tenth <= 2.0)
    backends = get(sc.get("power_off_1_node"), "ehc.backend_detection_seconds.max")
    if backends is not None:
        wrong = get(sc.get("power_off_1_node"), "ehc.backends_wrongly_marked")
        add("node power-off: last selectorless backend not ready <= 3 s (max), none wrongly",
            f"{backends} s, {wrong} wrong", backends <= 3.0 and wrong == 0)  # fmt: skip
    for percent in (2, 5):
        loss = get(sc.get(f"loss_{percent}pct"), "ehc")
        if loss:
            long_enough = loss["seconds"] >= 600
            add(f"0 false ejections at {percent}% loss over >= 10 min, the node off then found <= 1 s",
                f"{loss['false_ejections']} in {loss['seconds']:.0f}s, {get(loss, 'detection_seconds.max')} s",
                loss["false_ejections"] == 0 and (get(loss, "detection_seconds.max") or 99) <= 1.0
                if long_enough else None)  # fmt: skip
    cap = sc.get("capacity")
    if cap:
        add("capacity >= 70% of a bare uvloop connect loop", cap["one_worker_vs_bare_rate"],
            cap["one_worker_vs_bare_rate"] >= 0.70)  # fmt: skip
    wpt = get(sc.get("power_off_1_node"), "ehc.writes_per_transition")
    if wpt is not None:
        add("exactly 1 API write per transition", wpt, wpt == 1.0)
    flap = get(sc.get("flapping"), "ehc")
    if flap:
        brief = flap["brief_outages"]["writes"]
        per_change = flap["long_outages"]["writes_per_change"]
        add("0 writes for reverted flaps; 1 per change otherwise", f"{brief} / {per_change}",
            brief == 0 and per_change in (1.0, None))  # fmt: skip
    trouble = get(sc.get("api_trouble"), "ehc")
    if trouble:
        bad = trouble["lost"] + trouble["duplicated_writes"] + trouble["order_violations"]
        add("nothing lost, duplicated or reordered under API trouble",
            f"lost {trouble['lost']}, duplicated {trouble['duplicated_writes']}, out of order {trouble['order_violations']}",
            bad == 0)  # fmt: skip
    rss = get(sc.get("scale"), "rss_bytes_per_target")
    if rss and rss.get("coordinator") is not None:
        worst = max(v for v in rss.values() if v is not None)
        add("RSS <= 1 KB per target per process beyond its baseline", rss, worst <= 1024)
    cut = get(sc.get("partition"), "ehc")
    if cut:
        add("leader's path to a node cut: 0 ejections, an Event and a metric; the node then off: found",
            f"{cut['ejected_while_cut']} of {cut['cut_pods']} ejected, {cut['vetoed_events']} Event(s), "
            f"{cut['vetoed']} vetoed; off: {get(cut, 'cut_node_power_off_detection_seconds.max')} s",
            cut["ejected_while_cut"] == 0 and cut["vetoed_events"] >= 1 and cut["vetoed"] > 0
            and cut["cut_node_not_detected"] == 0)  # fmt: skip
        asked = get(cut, "power_off_detection_seconds.max")
        if asked is not None:
            add("node power-off with a peer asked first: last pod NotReady <= 1 s (max)", asked, asked <= 1.0)
    crash = get(sc.get("worker_crash"), "ehc")
    if crash:
        add("worker crash: 0 false transitions", crash["false_transitions"], crash["false_transitions"] == 0)
    soak = get(sc.get("soak"), "ehc")
    if soak:
        bad = soak["ejections_lost"] + soak["wrong_writes"] + soak["duplicated_writes"]
        add("soak: no ejection lost, no wrong or duplicated write",
            f"lost {soak['ejections_lost']}, wrong {soak['wrong_writes']}, duplicated {soak['duplicated_writes']} "
            f"over {soak['power_offs']} power-offs", bad == 0)  # fmt: skip
    return out


def table(report: Figures) -> str:
    """The headline figures, ehc next to per-pod (ehc with ``--node-evidence 0``) and the baseline, and
    ehc / per-pod for the detection figures."""
    sc = report["scenarios"]
    rows: list[tuple[str, ...]] = []

    def row(label: str, scenario: str, path: str, unit: str = "") -> None:
        values = [get(sc.get(scenario), f"{c}.{path}") for c in CHECKERS]
        if all(v is None for v in values):
            return
        versus = _fmt(ratio(values[0], values[1]), "") if path.partition(".")[0] in DETECTION else ""
        rows.append((label, *(_fmt(v, unit) for v in values), versus))

    row("steady: probes/s done / scheduled", "steady_state", "done_ratio")
    row("steady: CPU s per 1,000 probes", "steady_state", "cpu_seconds_per_1000_probes.total")
    row("steady: coordinator RSS", "steady_state", "rss_mb.coordinator", " MB")
    row("steady: API writes", "steady_state", "api_writes")
    row("1 node off: detection p50", "power_off_1_node", "detection_seconds.p50", " s")
    row("1 node off: detection max", "power_off_1_node", "detection_seconds.max", " s")
    row("1 node off: not detected within cap", "power_off_1_node", "not_detected_within_cap")
    row("1 node off: pods wrongly marked", "power_off_1_node", "wrongly_marked")
    row("1 node off: writes per transition", "power_off_1_node", "writes_per_transition")
    row("1 node off: pod GETs per transition", "power_off_1_node", "pod_reads_per_transition")
    row("1 node off: out of Service slices p50", "power_off_1_node", "service_slice_seconds.p50", " s")
    row("1 node off: out of Service slices max", "power_off_1_node", "service_slice_seconds.max", " s")
    row(
        "1 node off: selectorless backends not ready p50",
        "power_off_1_node",
        "backend_detection_seconds.p50",
        " s",
    )
    row(
        "1 node off: selectorless backends not ready max",
        "power_off_1_node",
        "backend_detection_seconds.max",
        " s",
    )
    row("1 node off: backends wrongly marked", "power_off_1_node", "backends_wrongly_marked")
    row("1 node off: writes per backend object", "power_off_1_node", "writes_per_backend_object")
    row("10% nodes off: detection max", "power_off_10pct_nodes", "detection_seconds.max", " s")
    row(
        "10% nodes off: out of Service slices max", "power_off_10pct_nodes", "service_slice_seconds.max", " s"
    )
    row(
        "10% nodes off: selectorless backends not ready max",
        "power_off_10pct_nodes",
        "backend_detection_seconds.max",
        " s",
    )
    row("10% nodes off: writes per backend object", "power_off_10pct_nodes", "writes_per_backend_object")
    row("10% nodes off: not detected within cap", "power_off_10pct_nodes", "not_detected_within_cap")
    row("10% nodes off: pods wrongly marked", "power_off_10pct_nodes", "wrongly_marked")
    row("1 silent pod on a live node: detection", "pod_level", "silent_pod_seconds.max", " s")
    row("half a node's pods refusing: detection max", "pod_level", "refusing_detection_seconds.max", " s")
    row("pod-level failures: pods wrongly marked", "pod_level", "wrongly_marked")
    for name in sorted(k for k in sc if k.startswith("loss_")):
        row(f"{name}: false ejections", name, "false_ejections")
        row(f"{name}: detection max", name, "detection_seconds.max", " s")
    row("flapping: writes for brief outages", "flapping", "brief_outages.writes")
    row("flapping: writes per change", "flapping", "long_outages.writes_per_change")
    row("API trouble: lost / duplicated", "api_trouble", "lost")
    row("API trouble: out of order", "api_trouble", "order_violations")
    row("failover: standby took the lease", "leader_failover", "standby_took_lease_seconds", " s")
    row("failover: last pod written", "leader_failover", "last_pod_written_seconds", " s")
    row("two replicas: leader probes/s", "standby_steady", "leader.probes_per_second")
    row("two replicas: standby probes/s", "standby_steady", "standby.probes_per_second")
    row("two replicas: standby workers CPU", "standby_steady", "standby.cpu_percent.workers", " %")
    row("handover (SIGTERM): standby took the lease", "leader_handover", "standby_took_lease_seconds", " s")
    row("handover (SIGTERM): last pod written", "leader_handover", "last_pod_written_seconds", " s")
    row("worker crash: respawn", "worker_crash", "respawn_seconds", " s")
    row("worker crash: false transitions", "worker_crash", "false_transitions")
    row("soak: power-offs", "soak", "power_offs")
    row("soak: power-offs during API trouble", "soak", "power_offs_during_api_trouble")
    row("soak: ejections lost", "soak", "ejections_lost")
    row("soak: wrong writes", "soak", "wrong_writes")
    row("soak: duplicated writes", "soak", "duplicated_writes")
    row("soak: power-off to last pod out, median", "soak", "last_pod_out_seconds.p50", " s")
    row("soak: power-off to last pod out, worst", "soak", "last_pod_out_seconds.max", " s")
    row("soak: leader changes", "soak", "leader_changes")
    row("soak: worker restarts", "soak", "worker_restarts")
    row("soak: worker stalls", "soak", "worker_stalls")
    row("soak: opted-in pods out of service at the end", "soak", "out_of_service_at_end")
    cut = sc.get("partition") or {}
    for label, path in (
        ("pods ejected while cut", "ejected_while_cut"),
        ("ejections vetoed", "vetoed"),
        ("then another node off: detection max", "power_off_detection_seconds.max"),
        ("then the cut node off: detection max", "cut_node_power_off_detection_seconds.max"),
    ):
        values = [get(cut.get(c), path) for c in ("ehc", "no-second-opinion")]
        if any(v is not None for v in values):
            rows.append(
                (f"leader's path cut: {label} (ehc / no second opinion)", *(_fmt(v, "") for v in values))
            )
    width = max((len(r[0]) for r in rows), default=10)
    head = ("", *CHECKERS, "ehc/per-pod")
    lines = [f"  {head[0]:<{width}}" + "".join(f"  {h:>12}" for h in head[1:])]
    lines += [f"  {r[0]:<{width}}" + "".join(f"  {v:>12}" for v in r[1:]).rstrip() for r in rows]
    lines.append(f"  {'Kubernetes alone (node-monitor grace period)':<{width}}  {GRACE_PERIOD:>11.0f}s")
    injected = get(sc.get("soak"), "ehc.faults_injected")
    if injected:
        lines.append(f"  soak faults injected: {', '.join(f'{k} {n}' for k, n in injected.items())}")
    lines += _scale_table(sc.get("scale") or {})
    cap = sc.get("capacity")
    if cap:
        by = cap["capacity_targets_by_workers"]
        lines.append(
            f"  capacity at a 1 s interval: {', '.join(f'{w} worker(s) {n} targets' for w, n in by.items())}; "
            f"1 worker = {cap['one_worker_vs_bare_rate']:.2f} x the bare loop's {cap['bare_loop_probes_per_second']} probes/s"
        )
    return "\n".join(lines)


def _scale_table(scale: Figures) -> list[str]:
    points = [(c, p) for c in ("ehc", "baseline") for p in scale.get(c) or []]
    if not points:
        return []
    out = [
        "",
        "  scale      pods  workers  done    lag p99  CPU %coord  CPU %workers  CPU s/1k probes  RSS MB coord / workers",
    ]
    for checker, p in points:
        lag = (p.get("schedule_lag_ms") or {}).get("p99_max")
        out.append(
            f"  {checker:<8} {p['pods']:>6}  {p['workers'] or '-':>7}  {p['done_ratio']:5.3f}  "
            f"{_fmt(lag, ' ms'):>8}  {p['cpu_percent']['coordinator']:>10}  {p['cpu_percent']['workers']:>12}  "
            f"{p['cpu_seconds_per_1000_probes']['total']:>15}  {p['rss_mb']['coordinator']} / {p['rss_mb']['workers']}"
        )
    rss = scale.get("rss_bytes_per_target") or {}
    out.append(f"  RSS per extra target (slope over the sizes, 1 worker): coordinator {rss.get('coordinator')} B, "
               f"worker {rss.get('worker')} B")  # fmt: skip
    return out


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"
